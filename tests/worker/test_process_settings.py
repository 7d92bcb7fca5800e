"""The process-wide settings of batchd's processes, each looked at in a process of its
own: the garbage collector's (batchd.core.gc_tuning), which the test process's keeps as
it is, and the worker's event loop."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from support.redis_server import RedisServer

PROBE = (
    "import gc, sys; from batchd.core.gc_tuning import tune_gc; "
    "tune_gc(int(sys.argv[1])); print(gc.get_threshold()[0], gc.get_freeze_count() > 0)"
)


def _tuned(threshold: int) -> str:
    command = [sys.executable, "-c", PROBE, str(threshold)]
    return subprocess.run(command, check=True, capture_output=True, text=True).stdout.strip()


def test_tuning_sets_the_young_threshold_and_freezes_what_exists() -> None:
    assert _tuned(10_000) == "10000 True"


def test_a_threshold_of_zero_leaves_the_interpreter_defaults() -> None:
    assert _tuned(0) == "700 False"


def _worker_started(redis_server: RedisServer, **settings: str) -> dict[str, object]:
    """The worker's `worker_started` log event, run with `settings` (BATCHD_* variables)."""
    env = {
        **os.environ,
        "BATCHD_REDIS_URL": redis_server.url,
        "BATCHD_KEY_PREFIX": "gct:",
        "BATCHD_LOG_FORMAT": "json",
        **settings,
    }
    command = [sys.executable, "-m", "batchd.worker.main"]
    with subprocess.Popen(
        command,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,  # its log
        text=True,
    ) as worker:
        try:
            assert worker.stdout is not None
            for line in worker.stdout:  # until it says it started (pytest's timeout bounds it)
                event: dict[str, object] = json.loads(line)
                if event["event"] == "worker_started":
                    return event
            raise AssertionError("the worker ended before it started")
        finally:
            worker.terminate()


@pytest.mark.slow
def test_the_worker_process_runs_with_its_setting(redis_server: RedisServer) -> None:
    assert _worker_started(redis_server, BATCHD_GC_THRESHOLD="12345")["gc_threshold"] == 12345


@pytest.mark.slow
@pytest.mark.parametrize(
    ("setting", "loop"), [("auto", "uvloop"), ("uvloop", "uvloop"), ("asyncio", "asyncio")]
)
def test_the_worker_runs_on_the_event_loop_it_is_set_to(
    redis_server: RedisServer, setting: str, loop: str
) -> None:
    started = _worker_started(redis_server, BATCHD_WORKER_EVENT_LOOP=setting)
    assert started["event_loop"] == loop


def test_an_unknown_event_loop_stops_the_worker_naming_the_choices() -> None:
    env = {**os.environ, "BATCHD_WORKER_EVENT_LOOP": "trio"}
    command = [sys.executable, "-m", "batchd.worker.main"]
    ended = subprocess.run(command, env=env, capture_output=True, text=True, timeout=60)
    assert ended.returncode != 0
    assert "BATCHD_WORKER_EVENT_LOOP='trio': expected auto, uvloop or asyncio" in ended.stderr
    assert "Traceback" not in ended.stderr
