"""Items from JSON Lines, read one line at a time.

Each non-blank line is an object `{"custom_id": "a", "params": {...}}`; a line
without a custom_id gets `line-<n>` (n counted from 1, blank lines included), one
without params gets `{}`. Nothing is read ahead: the upload pulls lines as it
sends them, so a file of any size streams in constant memory.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from typing import Any

from batchd.client import BatchdError

__all__ = ["read_items"]

_KEYS = frozenset({"custom_id", "params"})


def read_items(lines: Iterable[bytes]) -> Iterator[tuple[str, dict[str, Any]]]:
    """Yields `(custom_id, params)` per line; raises `BatchdError` (INVALID_ARGUMENT,
    naming `line <n>`) at the first line that is not such an object."""
    for number, raw in enumerate(lines, start=1):
        line = raw.strip()
        if not line:
            continue
        try:
            obj = json.loads(line)
        except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError alike
            raise _bad(number, f"not valid JSON: {exc}") from None
        if not isinstance(obj, dict):
            raise _bad(number, "expected a JSON object with custom_id and params")
        unknown = set(obj) - _KEYS
        if unknown:
            raise _bad(number, f"unknown keys {sorted(unknown)}; expected custom_id and params")
        custom_id = obj.get("custom_id")
        if custom_id is None:
            custom_id = f"line-{number}"
        elif not isinstance(custom_id, str):
            raise _bad(number, "custom_id must be a string")
        params = obj.get("params")
        if params is None:
            params = {}
        elif not isinstance(params, dict):
            raise _bad(number, "params must be a JSON object")
        yield custom_id, params


def _bad(number: int, description: str) -> BatchdError:
    return BatchdError.invalid_argument(f"line {number}", description)
