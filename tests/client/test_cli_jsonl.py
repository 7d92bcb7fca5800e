"""JSON Lines items for `batchd submit`: parsed one line at a time."""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import pytest

from batchd.cli._jsonl import read_items
from batchd.client import BatchdError


def test_lines_become_items() -> None:
    lines = [
        b'{"custom_id": "a", "params": {"url": "http://x"}}\n',
        b"\n",
        b'{"params": {"n": 1}}\n',
        b'  {"custom_id": "c"}  \r\n',
        b"{}",
    ]
    assert list(read_items(lines)) == [
        ("a", {"url": "http://x"}),
        ("line-3", {"n": 1}),
        ("c", {}),
        ("line-5", {}),
    ]


@pytest.mark.parametrize(
    ("line", "description"),
    [
        (b"{not json", "not valid JSON"),
        (b"\xff\xfe", "not valid JSON"),
        (b"[1, 2]", "expected a JSON object"),
        (b'{"custom_id": 5}', "custom_id must be a string"),
        (b'{"custom_id": "a", "params": [1]}', "params must be a JSON object"),
        (b'{"custom_id": "a", "param": {}}', "unknown keys ['param']"),
    ],
)
def test_bad_line_is_invalid_argument_naming_the_line(line: bytes, description: str) -> None:
    lines = [b'{"custom_id": "ok"}', line]
    items = read_items(lines)
    assert next(items) == ("ok", {})
    with pytest.raises(BatchdError) as caught:
        next(items)
    error = caught.value
    assert error.code == grpc.StatusCode.INVALID_ARGUMENT
    assert error.message == "invalid line 2"
    assert error.field_violations[0].field == "line 2"
    assert description in error.field_violations[0].description


def test_lines_are_read_only_as_items_are_taken() -> None:
    read = 0

    def lines() -> Iterator[bytes]:
        nonlocal read
        for i in range(1_000_000):
            read += 1
            yield b'{"custom_id": "i%d"}\n' % i

    items = read_items(lines())
    assert read == 0
    assert next(items) == ("i0", {})
    assert read == 1
    assert [next(items) for _ in range(9)][-1] == ("i9", {})
    assert read == 10


def test_a_line_nested_too_deeply_is_invalid_argument_naming_the_line() -> None:
    deep = b'{"custom_id": "d", "params": {"a": ' + b"[" * 1000 + b"]" * 1000 + b"}}"
    items = read_items([b'{"custom_id": "ok"}', b"", deep])
    assert next(items) == ("ok", {})
    with pytest.raises(BatchdError) as caught:
        next(items)
    assert caught.value.field_violations[0].field == "line 3"
    assert caught.value.field_violations[0].description == "nested too deeply to read"
