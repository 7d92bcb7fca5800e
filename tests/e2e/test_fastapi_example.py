"""examples/fastapi-app's own tests run with the command its README gives, in a scratch
copy of the example beside a `.venv` that is this suite's: the app under uvicorn in front
of a real batchd, over HTTP."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
from support.readme_session import CHECKOUT, Shell, read_session, sh_blocks_after, with_venv

EXAMPLE = CHECKOUT / "examples" / "fastapi-app"


@pytest.mark.slow
@pytest.mark.timeout(120)
async def test_the_examples_own_tests_run_with_the_documented_command(tmp_path: Path) -> None:
    (block,) = sh_blocks_after((EXAMPLE / "README.md").read_text(), "## Testing it")
    (step,) = read_session(block, prompt="")
    scratch = with_venv(tmp_path / "checkout")
    shutil.copytree(
        EXAMPLE,
        scratch / "examples" / "fastapi-app",
        ignore=shutil.ignore_patterns("__pycache__", "build", "*.egg-info", ".pytest_cache"),
    )
    async with Shell(scratch, {"PYTEST_ADDOPTS": "-p no:cacheprovider"}) as shell:
        ran = await shell.run(step.command, within=100)
    assert ran.status == 0, ran.context
    assert re.search(r"^=+ 9 passed in ", ran.out, re.MULTILINE), ran.context
