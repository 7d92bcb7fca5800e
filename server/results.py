"""ExportBatchResults' JSON Lines: one object per item, straight from the outcome records.

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
from batchd.core.domain import ItemState
from batchd.core.export import Row

__all__ = ["MAX_MESSAGE_BYTES", "render_lines"]

# A message's lines stop at this many bytes (a single larger line goes alone).
MAX_MESSAGE_BYTES = 1 << 20

_STATES = {int(state): b'"%s"' % state.name.encode() for state in ItemState}
_CODES = {code.value[0]: code.name for code in grpc.StatusCode}
_LINE = (
    b'{"custom_id":%s,"index":%d,"state":%s,"attempts":%d,"output":%s,"error":%s,'
    b'"start_time":%s,"end_time":%s}'
)


class _Times:
    """RFC 3339 UTC times, as JSON strings, from Unix milliseconds: each made once (a
    page's items mostly start and end within a few milliseconds of one another)."""

    def __init__(self) -> None:
        self._made: dict[int | None, bytes] = {None: b"null"}

    def __call__(self, ms: int | None) -> bytes:
        made = self._made.get(ms)
        if made is None:
            assert ms is not None
            if len(self._made) > 65536:
                self._made = {None: b"null"}
            seconds, millis = divmod(ms, 1000)
            clock = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))
            made = self._made[ms] = b'"%s.%03dZ"' % (clock.encode(), millis)
        return made


def _output(raw: bytes | None) -> bytes:
    if raw is None:
        return b"null"
    if b"\n" in raw:  # not as a worker writes it (compact), and a line needs it compact
        raw = orjson.dumps(fastjson.loads(raw))
    return raw


def _error(code: int, message: str) -> bytes:
    if not code and not message:
        return b"null"
    return orjson.dumps({"code": _CODES.get(code, "UNKNOWN"), "message": message})


def render_lines(
    rows: Sequence[Row], max_bytes: int = MAX_MESSAGE_BYTES
) -> Iterator[tuple[bytes, int]]:
    """The rows as JSON Lines, in runs of at most `max_bytes` (but at least one line):
    (lines, the number of rows they hold)."""
    dumps, times, states, line_of = orjson.dumps, _Times(), _STATES, _LINE
    lines: list[bytes] = []
    size = 0
    for custom_id, index, (state, attempts, start, end, output, code, message) in rows:
        line = line_of % (
            dumps(custom_id),
            index,
            states.get(state, b'"UNSPECIFIED"'),
            attempts,
            _output(output),
            _error(code, message),
            times(start),
            times(end),
        )
        if lines and size + len(line) + 1 > max_bytes:
            yield b"\n".join(lines) + b"\n", len(lines)
            lines, size = [], 0
        lines.append(line)
        size += len(line) + 1
    if lines:
        yield b"\n".join(lines) + b"\n", len(lines)
