"""docs/handlers.md's shell blocks run as written, in a scratch copy of what they name
(examples/greeter, beside a `.venv` that is this suite's), against a real
`batchd-server` and `batchd-worker` on a private Valkey: the package installed and
served by a worker from its entry point (section 3), a schema-refused submit (section 4),
and the example's own tests (section 9).

`pip install` goes, through pip's own environment (PIP_TARGET and friends, no index),
into a scratch directory on PYTHONPATH: installing into the suite's venv would leave
greet.send registered for every worker of every test after it."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
from support.net import find_free_port
from support.polling import poll
from support.readme_session import (
    CHECKOUT,
    DOCS,
    Shell,
    listening,
    read_session,
    run_session,
    sh_blocks_after,
    with_venv,
)
from support.redis_server import RedisServerFactory

from batchd.client import AsyncClient

HANDLERS = (DOCS / "handlers.md").read_text()


def with_greeter(directory: Path) -> Path:
    """`directory` as a checkout: `.venv/` and a copy of examples/greeter."""
    with_venv(directory)
    shutil.copytree(
        CHECKOUT / "examples" / "greeter",
        directory / "examples" / "greeter",
        ignore=shutil.ignore_patterns("__pycache__", "build", "*.egg-info", ".pytest_cache"),
    )
    return directory


async def serves(target: str, name: str) -> bool | None:
    async with AsyncClient(target) as client:
        return True if name in {h.name for h in await client.handlers()} else None


@pytest.mark.slow
@pytest.mark.timeout(90)
async def test_an_installed_package_is_served_and_its_schema_checked(
    redis_server_factory: RedisServerFactory, tmp_path: Path
) -> None:
    (block,) = sh_blocks_after(HANDLERS, "## 3. Registering it: the entry point")
    install, worker, handlers = [s.command for s in read_session(block, prompt="")]
    (refused,) = sh_blocks_after(HANDLERS, "## 4. The params schema, checked at submit time")
    scratch = with_greeter(tmp_path / "checkout")
    site = tmp_path / "site"
    port = find_free_port()
    env = {
        "PIP_TARGET": str(site),
        "PIP_NO_INDEX": "1",
        "PIP_NO_DEPS": "1",  # batchd and aiohttp are the venv's already
        "PIP_NO_BUILD_ISOLATION": "0",  # (sic: pip reads this as --no-build-isolation)
        "PIP_DISABLE_PIP_VERSION_CHECK": "1",
        "PYTHONPATH": str(site),
        "BATCHD_REDIS_URL": redis_server_factory().url,
        "BATCHD_TARGET": f"127.0.0.1:{port}",
    }
    async with Shell(scratch, env) as shell:
        ran = await shell.run(install, within=60)
        assert ran.status == 0, ran.context
        assert "Successfully installed greeter-0.1.0" in ran.out, ran.context
        # The server the CLI calls, then the block's worker, which runs until stopped.
        server = await shell.start(f"batchd-server --host 127.0.0.1 --port {port}")
        await poll(lambda: listening(port), within=30)
        started = await shell.start(worker, tmp_path / "worker.log")
        await poll(lambda: serves(env["BATCHD_TARGET"], "greet.send"), within=30)
        assert (server.returncode, started.returncode) == (None, None)

        ran = await shell.run(handlers)
        assert ran.status == 0, ran.context
        rows = {line.split()[0]: line.split()[1] for line in ran.out.splitlines()[1:]}
        assert rows["greet.send"] == "1", ran.context  # with its live worker
        builtins = {"email.send", "http.request", "image.resize", "noop", "record.migrate"}
        assert rows.keys() == builtins | {"sleep", "greet.send"}, ran.context

        await run_session(shell, read_session(refused), [("echo ", 2, "exact")])
        assert await shell.stop_job(2) == 0, (tmp_path / "worker.log").read_text()


@pytest.mark.slow
@pytest.mark.timeout(90)
async def test_the_examples_own_tests_run_with_the_documented_command(tmp_path: Path) -> None:
    (block,) = sh_blocks_after(HANDLERS, "## 9. Testing it")
    (step,) = read_session(block, prompt="")
    scratch = with_greeter(tmp_path / "checkout")
    async with Shell(scratch, {"PYTEST_ADDOPTS": "-p no:cacheprovider"}) as shell:
        ran = await shell.run(step.command, within=80)
    assert ran.status == 0, ran.context
    assert re.search(r"^=+ \d+ passed in ", ran.out, re.MULTILINE), ran.context
