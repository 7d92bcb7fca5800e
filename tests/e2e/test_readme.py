"""The README's Python example runs as written against a real service."""

from __future__ import annotations

import asyncio
import os
import re
import sys
from pathlib import Path

from batchd.server.app import BatchdServer

README = Path(__file__).resolve().parents[2] / "README.md"


def python_example() -> str:
    section = README.read_text().split("### From Python", 1)[1]
    match = re.search(r"```python\n(.*?)```", section, re.DOTALL)
    assert match, "no python block under 'From Python'"
    return match.group(1)


async def test_readme_python_example(server: BatchdServer, worker: None) -> None:
    env = dict(os.environ, BATCHD_TARGET=f"127.0.0.1:{server.port}")
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-c", python_example(), env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await process.communicate()
    assert process.returncode == 0, err.decode()
    lines = out.decode().splitlines()
    assert lines[-2].startswith("COMPLETED ItemCounts(pending=0, running=0, succeeded=5000")
    assert lines[-1] == "INVALID_ARGUMENT [('items[0].params.seconds', " + (
        "'params.seconds must be bigger than or equal to 0')]"
    )
