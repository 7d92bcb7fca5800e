"""ExportBatchResults' JSON Lines: one object per item, in as few bytes of work as can be.

A line has the keys of `batchd items --json`, but for next_attempt_time (an exported
item is finished): custom_id, index, state, attempts, output, error ({"code", "message"}
with the google.rpc.Code's name), start_time and end_time (RFC 3339 UTC, milliseconds).
The handler's output is stored as compact JSON and goes into the line as it is.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence

import grpc
import orjson

from batchd.core import fastjson
from batchd.core.domain import ItemState, ItemView

__all__ = ["MAX_MESSAGE_BYTES", "render_lines"]

# A message's lines stop at this many bytes (a single larger line goes alone).
MAX_MESSAGE_BYTES = 1 << 20

_STATES = {state: state.name for state in ItemState}
_CODES = {code.value[0]: code.name for code in grpc.StatusCode}


class _Times:
    """RFC 3339 UTC times from Unix seconds; the date and clock part of each second is
    made once (a page's items mostly end within a few seconds)."""

    def __init__(self) -> None:
        self._seconds: dict[int, str] = {}

    def __call__(self, value: float | None) -> str | None:
        if value is None:
            return None
        seconds, millis = divmod(round(value * 1000), 1000)
        head = self._seconds.get(seconds)
        if head is None:
            if len(self._seconds) > 4096:
                self._seconds.clear()
            head = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))
            self._seconds[seconds] = head
        return f"{head}.{millis:03d}Z"


def _output(raw: bytes | None) -> orjson.Fragment | None:
    if raw is None:
        return None
    if b"\n" in raw:  # not as a worker writes it (compact): one line needs it compact
        raw = orjson.dumps(fastjson.loads(raw))
    return orjson.Fragment(raw)


def render_lines(
    items: Sequence[ItemView], max_bytes: int = MAX_MESSAGE_BYTES
) -> Iterator[tuple[bytes, int]]:
    """The items as JSON Lines, in runs of at most `max_bytes` (but at least one line):
    (lines, the number of items they hold)."""
    dumps, times = orjson.dumps, _Times()
    lines: list[bytes] = []
    size = 0
    for item in items:
        error = None
        if item.error_code or item.error_message:
            error = {"code": _CODES.get(item.error_code, "UNKNOWN"), "message": item.error_message}
        line = dumps(
            {
                "custom_id": item.custom_id,
                "index": item.index,
                "state": _STATES[item.state],
                "attempts": item.attempts,
                "output": _output(item.output_json),
                "error": error,
                "start_time": times(item.start_time),
                "end_time": times(item.end_time),
            }
        )
        if lines and size + len(line) + 1 > max_bytes:
            yield b"\n".join(lines) + b"\n", len(lines)
            lines, size = [], 0
        lines.append(line)
        size += len(line) + 1
    if lines:
        yield b"\n".join(lines) + b"\n", len(lines)
