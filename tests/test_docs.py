"""The README documents every setting there is."""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path

from batchd.core.config import Settings

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()


def test_every_setting_is_in_the_readme() -> None:
    missing = [f.name for f in fields(Settings) if f"`BATCHD_{f.name.upper()}`" not in README]
    assert missing == []


def test_readme_opens_with_the_two_commands() -> None:
    first_block = README.split("```", 2)[1]
    commands = [line.split("#")[0].strip() for line in first_block.splitlines()[1:] if line]
    assert commands == ["./scripts/run", "./scripts/test"]
