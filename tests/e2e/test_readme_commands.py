"""The README's other shell blocks run as written, in a scratch directory, against a real
service and real local peers: running server and workers separately.

Not run, on purpose (each named where its section is read below):
- `./scripts/run` (the README's first block, and the workloads' "With ./scripts/run
  going"): its `scripts/bootstrap` step installs into the venv this suite runs in; what
  it starts, `batchd-service`, is started here as it would start it (readme_service),
  with the environment the README gives it, and tests/server/test_service.py runs the
  script itself.
- `./scripts/test`: the suite would run itself.
- `./scripts/lint`: it judges the whole checkout, not the README; every commit runs it.
- `make install | gen | lint | test | bench | run`: each verb calls one of the scripts
  above (`make gen` is bootstrap, then the gen_protos command run here; `make bench` takes
  minutes); checked to be the Makefile's verbs.
- The entry point in "Your own handlers" (it takes installing a distribution: see
  tests/test_examples.py, which loads examples/greeter's), and its settings fragment.
- "Operations" shows no commands; `--help` listing each process's settings is
  tests/core/test_config.py's.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from support.net import find_free_port
from support.polling import poll
from support.readme_session import (
    README,
    Shell,
    live_workers,
    read_session,
    sh_blocks_after,
    with_venv,
)
from support.redis_server import RedisServerFactory

from batchd.client import AsyncClient, BatchState

TEXT = README.read_text()
BUILTINS = ["email.send", "http.request", "image.resize", "noop", "record.migrate", "sleep"]


def own_handlers_package(root: Path) -> Path:
    """The README's mypkg/handlers.py written under `root`, importable as an installed
    package would be (`root` goes on PYTHONPATH)."""
    blocks = sh_blocks_after(TEXT, "### Your own handlers", language="python")
    (module,) = [b for b in blocks if b.startswith("# mypkg/handlers.py\n")]
    (root / "mypkg").mkdir(parents=True)
    (root / "mypkg" / "handlers.py").write_text(module)
    return root


async def served_by(
    target: str, expected: dict[str, int], *jobs: asyncio.subprocess.Process
) -> bool | None:
    """A probe for `poll`: each named handler has exactly that many live workers (and
    every one of `jobs` still runs)."""
    assert all(job.returncode is None for job in jobs), "a process exited"
    workers = await live_workers(target)
    if workers is None or any(workers.get(n) != count for n, count in expected.items()):
        return None
    return True


async def runs_a_batch(target: str) -> None:
    async with AsyncClient(target) as client:
        batch = await client.submit("noop", [(f"n-{i}", {}) for i in range(10)])
        async for progress in client.watch(batch.batch.batch_id):
            final = progress
        assert final.state is BatchState.COMPLETED
        assert final.counts.succeeded == 10


@pytest.mark.timeout(60)
async def test_server_and_workers_run_separately(
    redis_server_factory: RedisServerFactory, tmp_path: Path
) -> None:
    block = sh_blocks_after(TEXT, "## Running server and workers separately")[0]
    steps = read_session(block, prompt="")
    assert [s.command.split()[0] for s in steps] == [
        "export", ".venv/bin/batchd-server", ".venv/bin/batchd-worker"
    ]  # fmt: skip
    redis = redis_server_factory()
    port = find_free_port()
    scratch = with_venv(own_handlers_package(tmp_path / "scratch"))
    env = {"PYTHONPATH": str(scratch), "BATCHD_HOST": "127.0.0.1"}  # loopback only
    async with Shell(scratch, env) as shell:
        shell.replacements["redis://redis.internal:6379/0"] = redis.url
        shell.replacements["--port 50051"] = f"--port {port}"
        assert (await shell.run(steps[0].command)).status == 0
        assert shell.env["BATCHD_REDIS_URL"] == redis.url
        server = await shell.start(steps[1].command, tmp_path / "server.log")
        worker = await shell.start(steps[2].command, tmp_path / "worker.log")
        target = f"127.0.0.1:{port}"
        await poll(lambda: served_by(target, {"geo.lookup": 1, "noop": 1}, server, worker), 30)
        await runs_a_batch(target)
        assert await shell.stop_job(2) == 0, (tmp_path / "worker.log").read_text()
        assert await shell.stop_job(1) == 0, (tmp_path / "server.log").read_text()
