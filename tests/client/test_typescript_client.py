"""The TypeScript client (clients/typescript/) against a real server and worker: its
node tests, and the README's TypeScript example, compiled and run with the service's
address in BATCHD_TARGET."""

from __future__ import annotations

import asyncio
import fcntl
import os
import re
import shutil
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from batchd.testing import LocalService, serve_handlers

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "clients" / "typescript"
EXAMPLE = PACKAGE / "examples" / "quickstart.ts"
# The spec reporter's closing counts, e.g. "\N{INFORMATION SOURCE} pass 16".
SUMMARY = re.compile(r"^\N{INFORMATION SOURCE} (tests|pass|fail|skipped|cancelled) (\d+)$", re.M)

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        shutil.which("node") is None or shutil.which("npm") is None,
        reason="node and npm are needed for the TypeScript client (Node.js 20 or later)",
    ),
]


@pytest.fixture
def compiled() -> Iterator[Path]:
    """The package with its npm packages installed from the lock and compiled to dist/.

    Held under a lock until the test is done: a test on another pytest worker would
    reinstall node_modules or rewrite dist/ under a running node."""
    with (PACKAGE / ".build.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        subprocess.run([sys.executable, str(ROOT / "scripts" / "npm_ci.py")], check=True)
        tsc = PACKAGE / "node_modules" / ".bin" / "tsc"
        result = subprocess.run(
            [str(tsc), "-p", str(PACKAGE)], capture_output=True, text=True, check=False
        )
        assert result.returncode == 0, result.stdout + result.stderr
        yield PACKAGE / "dist"


# The node tests' RESOURCE_EXHAUSTED: an upload of more items than a batch may hold.
MAX_BATCH_ITEMS = 3000


@pytest.fixture
async def service() -> AsyncIterator[LocalService]:
    async with serve_handlers() as running:
        yield running


@pytest.fixture
async def limited_service() -> AsyncIterator[LocalService]:
    async with serve_handlers(settings_overrides={"max_batch_items": MAX_BATCH_ITEMS}) as running:
        yield running


async def run_node(service: LocalService, *args: str) -> tuple[int, str]:
    """Runs node in the package directory; (exit code, stdout and stderr)."""
    env = dict(os.environ, BATCHD_TARGET=service.target)
    process = await asyncio.create_subprocess_exec(
        "node", *args, cwd=PACKAGE, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    out, _ = await process.communicate()
    assert process.returncode is not None
    return process.returncode, out.decode()


async def test_the_node_tests_pass(compiled: Path, limited_service: LocalService) -> None:
    code, out = await run_node(
        limited_service, "--test", "--test-reporter=spec", str(compiled / "test")
    )
    assert code == 0, out
    summary = dict(SUMMARY.findall(out))
    assert summary["fail"] == summary["skipped"] == summary["cancelled"] == "0", out
    assert int(summary["pass"]) >= 23, out


def readme_example() -> str:
    section = (ROOT / "README.md").read_text().split("### From TypeScript", 1)[1]
    match = re.search(r"```typescript\n(.*?)```", section, re.DOTALL)
    assert match, "no typescript block under 'From TypeScript'"
    return match.group(1)


def test_the_readme_quotes_the_example_as_it_is() -> None:
    assert readme_example() == EXAMPLE.read_text()


async def test_the_example_runs(compiled: Path, service: LocalService) -> None:
    code, out = await run_node(service, str(compiled / "examples" / "quickstart.js"))
    assert code == 0, out
    lines = out.splitlines()
    assert lines[-3].startswith("COMPLETED succeeded=4999 failed=1"), out
    assert lines[-2] == "user-7 ABORTED failed as asked (fail: true)", out
    assert lines[-1] == "INVALID_ARGUMENT items[0].params.seconds", out
