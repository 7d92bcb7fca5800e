"""Items from JSON Lines, read one line at a time.

Each non-blank line is an object `{"custom_id": "a", "params": {...}}`; a line
without a custom_id gets `line-<n>` (n counted from 1, blank lines included), one
without params gets `{}`. Nothing is read ahead: the upload pulls lines as it
sends them, so a file of any size streams in constant memory.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator
from typing import Any

from batchd.client import BatchdError, FieldViolation

__all__ = ["JsonlItems", "read_items"]

_KEYS = frozenset({"custom_id", "params"})


class JsonlItems:
    """The items of JSON Lines, remembering where the last one came from, so that an
    error the client raises about an item (`items[7]`, counted from 0 over items, not
    lines) can name its line instead."""

    def __init__(self, lines: Iterable[bytes]) -> None:
        self._lines = lines
        self.count = 0
        """Items yielded so far."""
        self.line = 0
        """The line number of the last item yielded."""

    def __iter__(self) -> Iterator[tuple[str, dict[str, Any]]]:
        for number, raw in enumerate(self._lines, start=1):
            item = _parse(number, raw)
            if item is not None:
                self.line = number
                self.count += 1
                yield item

    def locate(self, error: BatchdError) -> BatchdError:
        """`error`, if the client raised it about the last item yielded (`items[<n>]...`,
        checked as it was pulled), with its violations renamed `line <number>...`; other
        errors unchanged. The service's own errors (raised from a `grpc.RpcError`) name
        items of the batch the service saw, and are left as they are."""
        if not self.count or error.__cause__ is not None:
            return error
        where = re.compile(rf"items\[{self.count - 1}\](\.|$)")

        def rename(text: str) -> str:  # items[7].params -> line 9 params
            return where.sub(lambda m: f"line {self.line}" + (" " if m[1] else ""), text)

        violations = [
            FieldViolation(rename(v.field), v.description) for v in error.field_violations
        ]
        if violations == error.field_violations:
            return error
        message = rename(error.message)
        return BatchdError(
            error.code, message, violations, error.retry_after, error.quota_violations
        )


def read_items(lines: Iterable[bytes]) -> Iterator[tuple[str, dict[str, Any]]]:
    """Yields `(custom_id, params)` per line; raises `BatchdError` (INVALID_ARGUMENT,
    naming `line <n>`) at the first line that is not such an object."""
    return iter(JsonlItems(lines))


def _parse(number: int, raw: bytes) -> tuple[str, dict[str, Any]] | None:
    line = raw.strip()
    if not line:
        return None
    try:
        obj = json.loads(line)
    except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError alike
        raise _bad(number, f"not valid JSON: {exc}") from None
    except RecursionError:
        raise _bad(number, "nested too deeply to read") from None
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
    return custom_id, params


def _bad(number: int, description: str) -> BatchdError:
    return BatchdError.invalid_argument(f"line {number}", description)
