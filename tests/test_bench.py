"""A small run of each benchmark scenario, so that the suite keeps the benchmarks working:
each writes its figures as JSON, and every figure must be there and positive — Redis
commands per item and Redis memory per pending item in every scenario (the latter only a
number: at these sizes it is within the noise of Redis's allocator)."""

from __future__ import annotations

import json
import math
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from redis import Redis as SyncRedis
from support.readme_session import read_session, sh_blocks_after, with_venv
from support.redis_server import RedisServer

pytestmark = [pytest.mark.bench, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[1]


def run_bench(tmp_path: Path, module: str, *flags: str) -> dict[str, float]:
    figures = tmp_path / "figures.json"
    subprocess.run(
        [sys.executable, "-m", f"bench.{module}", *flags, "--json", str(figures)],
        cwd=ROOT,
        check=True,
        timeout=120,
        capture_output=True,
    )
    result: dict[str, float] = json.loads(figures.read_text())
    return result


REDIS = ("redis_commands_per_item", "redis_bytes_per_pending_item")
# A few thousand pending items are tens of KB, and Redis's stored bytes move by as much
# on their own: a small run's figure can even read negative (seen: -16,000 per item of
# a 5-item batch). It must be there and a number; full runs are what is compared.
NOISY = frozenset({"redis_bytes_per_pending_item"})


def assert_positive(figures: dict[str, float], *names: str) -> None:
    for name in names:
        assert name in figures, name
        assert isinstance(figures[name], int | float), name
        assert math.isfinite(figures[name]), name
        if name not in NOISY:
            assert figures[name] > 0, name


# A few tenths of a second of Valkey's CPU in one script. (Not a loop on TIME: a
# script sees the time it started at until it has run past the busy-script limit.)
# Busy for 0.3 s of Valkey's clock, not for a count of steps: a fixed loop took under
# 0.1 s of CPU on a fast day.
BUSY_SCRIPT = """
local function now() local t = redis.call('TIME') return t[1] * 1000000 + t[2] end
local start, x = now(), 0
repeat for i = 1, 100000 do x = x + i end until now() - start >= 300000
return 0
"""


def test_redis_cpu_is_the_process_s_own(
    redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The Valkey CPU the scenarios report per item is what the kernel counts for the
    process: not its main thread counted a second time (Valkey 8's INFO has both)."""
    monkeypatch.syspath_prepend(str(ROOT))
    from bench.service import cpu_seconds, redis_cpu_seconds

    pid = redis_server.pid
    assert pid is not None
    client = SyncRedis.from_url(redis_server.url)
    try:
        before = redis_cpu_seconds(redis_server.url), cpu_seconds(pid)
        client.eval(BUSY_SCRIPT, 0)
        after = redis_cpu_seconds(redis_server.url), cpu_seconds(pid)
    finally:
        client.close()
    reported, kernel = after[0] - before[0], after[1] - before[1]
    assert kernel >= 0.1
    assert reported == pytest.approx(kernel, rel=0.15, abs=0.03)


def test_upload_noop_small(tmp_path: Path) -> None:
    result = run_bench(tmp_path, "upload_noop", "--items", "3000")
    assert result["items"] == 3000
    assert_positive(result, "items_per_second", "server_peak_rss_mib", *REDIS)


def test_metrics_cost_small(tmp_path: Path) -> None:
    result = run_bench(tmp_path, "metrics_cost", "--items", "2000", "--pairs", "1")
    assert_positive(result, "on_0_items_per_second", "off_0_items_per_second", "ratio_on_to_off")
    assert_positive(result, "on_0_cpu_us_per_item", "off_0_cpu_us_per_item", "cpu_ratio_on_to_off")


def test_noop_blocks_small(tmp_path: Path) -> None:
    # Enough items for the worker's CPU time to count in clock ticks (10 ms each).
    result = run_bench(tmp_path, "noop_blocks", "--items", "20000", "--pairs", "1")
    assert result["block_size"] == 100
    assert_positive(
        result, "single_items_per_second", "blocks_items_per_second", "ratio_blocks_to_single"
    )
    assert_positive(result, "single_worker_cpu_us_per_item", "cpu_ratio_blocks_to_single")


def test_tracing_cost_small(tmp_path: Path) -> None:
    result = run_bench(tmp_path, "tracing_cost", "--items", "2000", "--pairs", "1")
    assert_positive(result, "on_0_items_per_second", "off_0_items_per_second", "ratio_on_to_off")
    # Every item's attempt, and more (the calls, the chunk runs), reached the sink.
    assert result["spans_received_min"] > 2000


def test_export_small(tmp_path: Path) -> None:
    result = run_bench(tmp_path, "export", "--items", "3000", "--baseline-items", "1000")
    assert result["items"] == 3000
    assert_positive(
        result,
        "submission_items_per_second",
        "custom_id_first_items_per_second",
        "custom_id_items_per_second",
        "list_items_items_per_second",
        "ratio_export_to_list_items",
        "redis_commands_per_item",
        "file_bytes_per_item",
        "custom_id_index_bytes_per_item",
    )
    # Counted in clock ticks of 10 ms: a small export may take less than one.
    assert result["server_cpu_us_per_item"] >= 0


def documented_commands() -> list[str]:
    """The commands of docs/performance.md's "Running the benchmarks", comments dropped."""
    block = sh_blocks_after(
        (ROOT / "docs" / "performance.md").read_text(), "## Running the benchmarks"
    )
    return [" ".join(shlex.split(s.command, comments=True)) for s in read_session(block[0], "")]


def test_noop_small_as_documented(tmp_path: Path) -> None:
    """docs/performance.md's commands of one scenario, as written (the run at a small size:
    --items 2000 and a small plain-ARQ run for --items 1000000), in a directory of their
    own (its noop.json) with the checkout's `.venv` and `bench` package. Its first command,
    every scenario at modest sizes, takes minutes: the tests here run each one small."""
    every, usage, one = documented_commands()
    assert every == ".venv/bin/python -m bench"
    scratch = with_venv(tmp_path / "scratch")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}

    def run(command: str) -> str:
        ran = subprocess.run(
            command, shell=True, cwd=scratch, env=env, capture_output=True, text=True, timeout=120
        )
        assert ran.returncode == 0, ran.stdout + ran.stderr
        return ran.stdout

    assert usage == ".venv/bin/python -m bench.noop --help"
    printed = run(usage)
    assert printed.startswith("usage: "), printed
    assert all(flag in printed for flag in ["--items", "--arq-jobs", "--json"]), printed
    assert one == ".venv/bin/python -m bench.noop --items 1000000 --json noop.json"
    run(one.replace("--items 1000000", "--items 2000 --arq-jobs 500"))
    result = json.loads((scratch / "noop.json").read_text())
    assert_positive(
        result,
        "items_per_second",
        "ceiling_items_per_second",
        "arq_jobs_per_second",
        "ratio_to_ceiling",
        "ratio_to_arq",
        *REDIS,
    )


def test_sleep_small(tmp_path: Path) -> None:
    result = run_bench(tmp_path, "sleep", "--items", "2000")
    assert_positive(
        result,
        "items_per_second",
        "ideal_items_per_second",
        "ratio_to_ideal",
        "run_items_per_second",
        "run_ratio_to_ideal",
        "bare_loop_items_per_second",
        *REDIS,
    )


def test_sleep_two_workers_small(tmp_path: Path) -> None:
    result = run_bench(
        tmp_path, "sleep", "--items", "2000", "--workers", "2", "--concurrency", "50"
    )
    assert result["ideal_items_per_second"] == 2 * 50 / 0.01
    assert_positive(result, "items_per_second", "run_ratio_to_ideal", "ratio_to_bare_loop")


def test_sleep_start_early_small(tmp_path: Path) -> None:
    result = run_bench(
        tmp_path, "sleep", "--items", "2000", "--workers", "2", "--concurrency", "50",
        "--start-early",
    )  # fmt: skip
    assert result["start_early"] == 1
    assert_positive(result, "items_per_second", "ratio_to_ideal", "ratio_to_bare_loop")


def test_http_small(tmp_path: Path) -> None:
    result = run_bench(tmp_path, "http", "--items", "1000")
    assert_positive(
        result,
        "items_per_second",
        "bare_aiohttp_requests_per_second",
        "ratio_to_bare",
        "run_items_per_second",
        "run_ratio_to_bare",
        "downstream_cpu_us_per_item",
        "bare_downstream_cpu_us_per_request",
        "total_cpu_ratio_bare_to_batchd",
        *REDIS,
    )
    # How the two share the cores: every process's CPU, summed (one run: no medians).
    parts = ("worker", "server", "redis", "client", "downstream")
    total = sum(result[f"{part}_cpu_us_per_item"] for part in parts)
    assert result["total_cpu_us_per_item"] == pytest.approx(total)
    bare = result["bare_cpu_us_per_request"] + result["bare_downstream_cpu_us_per_request"]
    assert result["bare_total_cpu_us_per_request"] == pytest.approx(bare)
    assert 0 <= result["idle_cores"] <= (os.cpu_count() or 1)
    assert 0 <= result["bare_idle_cores"] <= (os.cpu_count() or 1)


def test_http_two_workers_small(tmp_path: Path) -> None:
    """Two workers against the bare script in two processes: each side's CPU counts both."""
    result = run_bench(tmp_path, "http", "--items", "1000", "--workers", "2", "--start-early")
    assert result["workers"] == 2
    assert_positive(
        result,
        "ratio_to_bare",
        "worker_cpu_us_per_item",
        "bare_cpu_us_per_request",
        "total_cpu_ratio_bare_to_batchd",
    )


def test_submit_small(tmp_path: Path) -> None:
    result = run_bench(
        tmp_path, "submit", "--items", "4000", "--upload-items", "4000", "--per-message", "1000"
    )
    assert_positive(
        result,
        "upload_items_per_second",
        "submit_json_items_per_second",
        "submit_struct_items_per_second",
        "server_peak_rss_mib",
        "struct_ratio_to_json",
        *REDIS,
    )


def test_auth_small(tmp_path: Path) -> None:
    result = run_bench(tmp_path, "auth", "--items", "2000", "--per-message", "200", "--rounds", "1")
    assert_positive(
        result,
        "submit_off_items_per_second",
        "submit_on_items_per_second",
        "upload_off_items_per_second",
        "upload_on_items_per_second",
        "submit_ratio_on_to_off",
        "upload_ratio_on_to_off",
    )


def test_watchers_small(tmp_path: Path) -> None:
    result = run_bench(
        tmp_path, "watchers", "--watchers", "50", "--channels", "2", "--processes", "2",
        "--items", "2000", "--hold", "1", "--deadline", "60",
    )  # fmt: skip
    # Every watcher, over both client processes, saw its first and terminal snapshots.
    assert (result["first_snapshots"], result["terminal_snapshots"]) == (50, 50)
    assert result["failed_streams"] == 0
    assert_positive(
        result,
        "redis_commands_per_item_one_watcher",
        "server_rss_mib",
        "get_batch_p50_ms",
        "get_batch_p50_ms_one_watcher",
        *REDIS,
    )
    # CPU time comes in 10 ms ticks: a tiny run may read 0 without anything being wrong.
    assert result["server_cpu_seconds_per_watcher_minute"] >= 0
    assert result["last_watcher_delay_seconds"] >= 0


def test_bench_help_describes_without_running(tmp_path: Path) -> None:
    for module in ("bench", "bench.watchers"):
        done = subprocess.run(
            [sys.executable, "-m", module, "--help"],
            cwd=ROOT, check=True, timeout=60, capture_output=True, text=True,
        )  # fmt: skip
        assert done.stdout.startswith("usage: python -m "), done.stdout[:200]
        assert "--json" in done.stdout or "bench.watchers" in done.stdout


def test_scaling_small(tmp_path: Path) -> None:
    result = run_bench(tmp_path, "scaling", "--items", "2000", "--workers", "1", "2")
    assert_positive(
        result,
        "workers_1_items_per_second",
        "workers_2_items_per_second",
        "workers_2_ratio_to_1",
        "workers_1_redis_commands_per_item",
        "workers_2_redis_commands_per_item",
        "redis_bytes_per_pending_item",
    )


FIGURES = ("items_per_second", "commands_per_item", "scripts_per_item", "round_trips_per_item",
           "net_bytes_per_item", "idle_commands_per_second")  # fmt: skip


def test_redis_cost_small(tmp_path: Path) -> None:
    result = run_bench(
        tmp_path, "redis_cost", "--items", "500", "--chunk-sizes", "10", "100",
        "--handlers", "noop", "http", "--idle-seconds", "0.2", "--pads", "0", "100",
        "--memory-items", "500", "--memory-chunk-sizes", "100", "--idle-workers", "1",
        "--idle-pool-seconds", "1", "--primary-requests", "2000",
    )  # fmt: skip
    assert result["items"] == 500
    for case in ("noop_10", "noop_100", "http_10", "http_100"):
        assert_positive(result, *(f"{case}_{figure}" for figure in FIGURES))
        # CPU time comes in ticks: a small case may read 0.
        assert result[f"{case}_redis_cpu_us_per_item"] >= 0
    # Ten times the chunks, so more claims and records: more commands per item.
    assert result["noop_10_commands_per_item"] > result["noop_100_commands_per_item"]
    for pad in (0, 100):
        assert math.isfinite(result[f"params_{pad}_chunk_100_bytes_per_pending_item"])
        assert math.isfinite(result[f"params_{pad}_chunk_100_bytes_per_finished_item"])
    # An idle worker still polls its queues.
    assert_positive(result, "idle_workers_1_commands_per_second")
    if shutil.which("redis-benchmark") or shutil.which("valkey-benchmark"):
        for command in ("hset", "hincrby", "zadd", "evalsha"):
            assert_positive(result, f"primary_{command}_p1_ops_per_second")
            assert_positive(result, f"primary_{command}_p16_ops_per_second")


def test_email_small(tmp_path: Path) -> None:
    result = run_bench(tmp_path, "email", "--items", "300")
    assert_positive(
        result, "items_per_second", "bare_aiosmtplib_messages_per_second", "ratio_to_bare", *REDIS
    )


def test_migrate_small(tmp_path: Path) -> None:
    result = run_bench(tmp_path, "migrate", "--rows", "5000", "--rows-per-item", "1000")
    assert_positive(
        result,
        "rows_per_second",
        "items_per_second",
        "bare_rows_per_second",
        "ratio_to_bare",
        *REDIS,
    )


def test_image_small(tmp_path: Path) -> None:
    result = run_bench(tmp_path, "image", "--images", "200")
    assert result["images"] == 200
    assert_positive(
        result, "items_per_second", "bare_pool_images_per_second", "ratio_to_bare", *REDIS
    )


def test_fairness_small(tmp_path: Path) -> None:
    result = run_bench(tmp_path, "fairness", "--items", "20000")
    assert result["big_items"] == 20000
    assert_positive(result, "small_latency_seconds", *REDIS)


def test_mixed_pool_small(tmp_path: Path) -> None:
    result = run_bench(tmp_path, "mixed_pool", "--items", "200", "--runs", "1")
    assert result["items"] == 200
    assert_positive(
        result,
        "homogeneous_seconds",
        "mixed_seconds",
        "mixed_ratio_to_homogeneous",
        "waiting_batch_start_after_spawn_seconds",
    )


def test_tenants_small(tmp_path: Path) -> None:
    result = run_bench(tmp_path, "tenants", "--batches", "10", "--items", "5000")
    assert result["big_batches"] == 10
    assert_positive(result, "small_alone_seconds", "small_beside_big_seconds", "ratio_to_alone")


def test_open_uploads_small(tmp_path: Path) -> None:
    result = run_bench(
        tmp_path, "open_uploads", "--upload-mib", "4", "--staged-mib", "8",
        "--batch-items", "20000", "--idle-seconds", "1",
    )  # fmt: skip
    ended = {"bytes": "resource_exhausted", "items": "resource_exhausted",
             "idle": "deadline_exceeded", "cancelled": "cancelled"}  # fmt: skip
    for phase, code in ended.items():
        assert result[f"{phase}_ended_{code}"] == 3, phase
        assert result[f"{phase}_leftover_keys"] == 0, phase  # staging dropped, index empty
        assert_positive(
            result, f"{phase}_items_sent", f"{phase}_server_rss_mib_peak",
            f"{phase}_valkey_used_mib_peak",
        )  # fmt: skip
