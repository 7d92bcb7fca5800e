"""Items from an uploaded CSV or JSON Lines body, read as it arrives.

Nothing is read ahead: `AsyncClient.upload` pulls items only as it sends them, so the
body streams from the browser through the app to batchd and a file of any size takes
the memory of a line or two.

One item per line, every line an item: a blank line between rows is refused, so that an
item's index (`items[7]`, as batchd names it) is its line less a fixed offset
(`Rows.line_of`). Blank lines at the end are ignored.

JSON Lines: each line an object `{"custom_id": "a", "params": {...}}`; a line without a
custom_id gets `line-<n>`, one without params gets `{}`.

CSV: a header row, then one row per item. A `custom_id` column, if there is one, gives
the custom_id (else `line-<n>`); every other column is a param, named by its header. A
cell that is JSON (`3`, `0.5`, `true`, `null`, `"007"`, `[1, 2]`) is that value, any
other cell is its text, an empty cell is left out. Quoted cells may not span lines.
"""

from __future__ import annotations

import csv
import json
from collections.abc import AsyncIterable, AsyncIterator
from typing import Any, Literal

__all__ = ["MAX_LINE_BYTES", "BadRow", "Format", "Rows"]

Format = Literal["csv", "jsonl"]

# The longest line read: batchd takes items of up to 4 MiB encoded.
MAX_LINE_BYTES = 4 << 20


class BadRow(ValueError):
    """A line of the body that is no item; `field` names the part of it at fault."""

    def __init__(self, line: int, description: str, field: str = "") -> None:
        super().__init__(f"line {line}: {description}")
        self.line = line
        self.field = field
        self.description = description


class Rows:
    """The items of an uploaded body in `format`: iterate with `async for`."""

    def __init__(self, chunks: AsyncIterable[bytes], format: Format) -> None:
        self._chunks = chunks
        self._format = format
        self.count = 0
        """Items yielded so far."""

    def line_of(self, index: int) -> int:
        """The line (from 1) of the item batchd calls `items[index]`."""
        return index + (2 if self._format == "csv" else 1)

    async def __aiter__(self) -> AsyncIterator[dict[str, Any]]:
        header: list[str] | None = None
        blank = 0  # the first of the blank lines just read, if any
        async for number, line in _lines(self._chunks):
            if not line.strip():
                blank = blank or number
                continue
            if blank:
                raise BadRow(blank, "a blank line between rows")
            if self._format == "jsonl":
                item = _json_item(number, line)
            elif header is None:
                header = _header(line)
                continue
            else:
                item = _csv_item(number, line, header)
            self.count += 1
            yield item


async def _lines(chunks: AsyncIterable[bytes]) -> AsyncIterator[tuple[int, bytes]]:
    """`(number, line)` per line of the body, without its line ending."""
    buffer = bytearray()
    number = 0
    async for chunk in chunks:
        buffer += chunk
        start = 0
        while (end := buffer.find(b"\n", start)) >= 0:
            number += 1
            yield number, bytes(buffer[start:end]).removesuffix(b"\r")
            start = end + 1
        del buffer[:start]
        if len(buffer) > MAX_LINE_BYTES:
            raise BadRow(number + 1, f"longer than {MAX_LINE_BYTES:,} bytes")
    if buffer:
        yield number + 1, bytes(buffer).removesuffix(b"\r")


def _text(number: int, line: bytes) -> str:
    try:
        return line.decode()
    except UnicodeDecodeError as exc:
        raise BadRow(number, f"not UTF-8: {exc}") from None


def _json_item(number: int, line: bytes) -> dict[str, Any]:
    try:
        obj = json.loads(line)
    except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError alike
        raise BadRow(number, f"not valid JSON: {exc}") from None
    except RecursionError:
        raise BadRow(number, "nested too deeply") from None
    if not isinstance(obj, dict):
        raise BadRow(number, f"expected a JSON object, not {type(obj).__name__}")
    unknown = obj.keys() - {"custom_id", "params"}
    if unknown:
        raise BadRow(number, "only custom_id and params are allowed", sorted(unknown)[0])
    custom_id = obj.get("custom_id", f"line-{number}")
    if not isinstance(custom_id, str):
        raise BadRow(number, "must be a string", "custom_id")
    params = obj.get("params", {})
    if not isinstance(params, dict):
        raise BadRow(number, "must be a JSON object", "params")
    return {"custom_id": custom_id, "params": params}


def _cells(number: int, line: bytes) -> list[str]:
    try:
        return next(csv.reader([_text(number, line)], strict=True))
    except csv.Error as exc:
        raise BadRow(number, f"not CSV: {exc}") from None


def _header(line: bytes) -> list[str]:
    names = _cells(1, line)
    for name in names:
        if not name or names.count(name) > 1:
            raise BadRow(1, "column names must be non-empty and different", name)
    return names


def _csv_item(number: int, line: bytes, header: list[str]) -> dict[str, Any]:
    cells = _cells(number, line)
    if len(cells) != len(header):
        raise BadRow(number, f"{len(cells)} cells for {len(header)} columns")
    custom_id = f"line-{number}"
    params: dict[str, Any] = {}
    for name, cell in zip(header, cells, strict=True):
        if name == "custom_id":
            custom_id = cell
        elif cell:
            params[name] = _value(cell)
    return {"custom_id": custom_id, "params": params}


def _reject_constant(name: str) -> Any:
    raise ValueError(name)  # NaN and Infinity: no JSON


def _value(cell: str) -> Any:
    """A cell that is JSON is that value; any other cell is its text."""
    try:
        return json.loads(cell, parse_constant=_reject_constant)
    except (ValueError, RecursionError):
        return cell
