"""The README documents every setting there is."""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path

from batchd.core.config import Settings
from batchd.worker.handlers import builtin_handlers

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()


def test_every_setting_is_in_the_readme() -> None:
    declared = [f.name for command in ("batchd-service",) for f in Settings.fields_for(command)]
    for handler in builtin_handlers():
        if handler.settings is not None:
            declared += [f.name for f in fields(handler.settings)]
    missing = [name for name in declared if f"`BATCHD_{name.upper()}`" not in README]
    assert missing == []
    assert "smtp_url" in declared  # the handlers' settings are among them


def test_readme_opens_with_the_two_commands() -> None:
    first_block = README.split("```", 2)[1]
    commands = [line.split("#")[0].strip() for line in first_block.splitlines()[1:] if line]
    assert commands == ["./scripts/run", "./scripts/test"]
