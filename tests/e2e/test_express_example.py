"""examples/express-app's node tests against a real server and worker: the TypeScript
client compiled, the example's npm packages installed from its lock and compiled, then
`node --test` with the service's address in BATCHD_TARGET."""

from __future__ import annotations

import asyncio
import fcntl
import os
import re
import shutil
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest

from batchd.testing import LocalService, serve_handlers

ROOT = Path(__file__).resolve().parents[2]
CLIENT = ROOT / "clients" / "typescript"
EXAMPLE = ROOT / "examples" / "express-app"
# The spec reporter's closing counts, e.g. "\N{INFORMATION SOURCE} pass 8".
SUMMARY = re.compile(r"^\N{INFORMATION SOURCE} (tests|pass|fail|skipped|cancelled) (\d+)$", re.M)
# The node tests' RESOURCE_EXHAUSTED: an upload of more rows than a batch may hold
# (MAX_BATCH_ITEMS in test/app.test.ts).
MAX_BATCH_ITEMS = 1000

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        shutil.which("node") is None or shutil.which("npm") is None,
        reason="node and npm are needed for the Express example (Node.js 20 or later)",
    ),
]


def build(package: Path) -> None:
    """npm ci from the package's lock (once per lock), then tsc."""
    npm_ci = [sys.executable, str(ROOT / "scripts" / "npm_ci.py"), str(package)]
    subprocess.run(npm_ci, check=True)
    tsc = package / "node_modules" / ".bin" / "tsc"
    result = subprocess.run(
        [str(tsc), "-p", str(package)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.fixture
def compiled() -> Iterator[Path]:
    """The example compiled to dist/, with the client it depends on (by path) compiled.

    Both held under their locks until the test is done: a test on another pytest worker
    would reinstall node_modules or rewrite dist/ under a running node."""
    with ExitStack() as stack:
        for package in (CLIENT, EXAMPLE):
            lock = stack.enter_context((package / ".build.lock").open("w"))
            fcntl.flock(lock, fcntl.LOCK_EX)
            build(package)
        yield EXAMPLE / "dist"


@pytest.fixture
async def service() -> AsyncIterator[LocalService]:
    async with serve_handlers(settings_overrides={"max_batch_items": MAX_BATCH_ITEMS}) as running:
        yield running


@pytest.mark.timeout(180)
async def test_the_examples_node_tests_pass(compiled: Path, service: LocalService) -> None:
    env = dict(os.environ, BATCHD_TARGET=service.target)
    process = await asyncio.create_subprocess_exec(
        "node", "--test", "--test-reporter=spec", str(compiled / "test"), cwd=EXAMPLE, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    out_bytes, _ = await process.communicate()
    out = out_bytes.decode()
    assert process.returncode == 0, out
    summary = dict(SUMMARY.findall(out))
    assert summary["fail"] == summary["skipped"] == summary["cancelled"] == "0", out
    assert int(summary["pass"]) >= 8, out
