"""The Lua scripts number states as batchd.core.domain does.

core/lua/_batch.lua repeats BatchState's and ItemState's numbers as `local NAME = n`
constants; this reads every such line of every script and checks it against the enums:
an item state by its name or NAME_ITEM, a batch state by NAME_BATCH or a name only
BatchState has.
"""

from __future__ import annotations

import re
from pathlib import Path

import batchd.core
from batchd.core.domain import BatchState, ItemState

LUA = Path(batchd.core.__file__).parent / "lua"
# `local A, B = 1, 2`: names and integer values only.
NUMBERED = re.compile(
    r"^local\s+([A-Z_][A-Z0-9_]*(?:\s*,\s*[A-Z_][A-Z0-9_]*)*)\s*=\s*(\d+(?:\s*,\s*\d+)*)\s*(?:--.*)?$"
)


def _state_constants() -> dict[str, tuple[str, int]]:
    """Every numbered constant naming a state: Lua name -> (script, value)."""
    found: dict[str, tuple[str, int]] = {}
    for script in sorted(LUA.glob("*.lua")):
        for line in script.read_text().splitlines():
            match = NUMBERED.match(line.strip())
            if match is None:
                continue
            names = [n.strip() for n in match[1].split(",")]
            values = [int(v) for v in match[2].split(",")]
            assert len(names) == len(values), f"{script.name}: {line!r}"
            for name, value in zip(names, values, strict=True):
                if _state_of(name) is not None:
                    found[name] = (script.name, value)
    return found


def _state_of(name: str) -> BatchState | ItemState | None:
    if name.endswith("_ITEM"):
        return ItemState.__members__.get(name.removesuffix("_ITEM"))
    if name.endswith("_BATCH"):
        return BatchState.__members__.get(name.removesuffix("_BATCH"))
    return ItemState.__members__.get(name) or BatchState.__members__.get(name)


def test_lua_state_numbers_match_the_enums() -> None:
    constants = _state_constants()
    wrong = {
        name: (script, value, _state_of(name))
        for name, (script, value) in constants.items()
        if value != _state_of(name)
    }
    assert not wrong, f"Lua state numbers that differ from batchd.core.domain: {wrong}"


def test_the_states_the_scripts_use_are_all_checked() -> None:
    # The scripts' own names for the states (_batch.lua): none of them escapes the check.
    expected = {
        "PENDING",
        "CANCELLED",
        "EXPIRED_ITEM",
        "QUEUED",
        "RUNNING_BATCH",
        "CANCELLING",
        "COMPLETED",
        "CANCELLED_BATCH",
        "PAUSED",
    }
    assert expected <= set(_state_constants())
