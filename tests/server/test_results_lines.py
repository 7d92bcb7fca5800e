"""The export's JSON Lines (batchd.server.results): one compact line per item whatever the
stored output looks like, and runs of lines bounded in bytes."""

from __future__ import annotations

import json

from batchd.core.domain import ItemState
from batchd.server.results import render_lines


def test_a_stored_output_that_is_not_compact_still_makes_one_line() -> None:
    pretty = b'{\n  "n": 12345678901234567890,\n  "s": "a\\nb"\n}'
    row = (
        "a",
        0,
        [int(ItemState.SUCCEEDED), 1, 1_765_000_000_123, 1_765_000_000_125, pretty, 0, ""],
    )
    [(lines, count)] = list(render_lines([row]))
    assert count == 1
    assert lines.count(b"\n") == 1
    record = json.loads(lines)
    assert record["output"] == {"n": 12345678901234567890, "s": "a\nb"}
    assert (record["start_time"], record["end_time"]) == (
        "2025-12-06T05:46:40.123Z",
        "2025-12-06T05:46:40.125Z",
    )


def test_an_error_is_named_and_its_message_escaped() -> None:
    row = ("b", 3, [int(ItemState.FAILED), 2, None, None, None, 14, 'said "no"\n'])
    [(lines, _)] = list(render_lines([row]))
    record = json.loads(lines)
    assert record["error"] == {"code": "UNAVAILABLE", "message": 'said "no"\n'}
    assert (record["output"], record["start_time"]) == (None, None)


def test_runs_of_lines_stop_at_the_byte_limit_but_hold_one_line_at_least() -> None:
    rows = [(f"i{n}", n, [int(ItemState.CANCELLED), 0, None, None, None, 0, ""]) for n in range(10)]
    runs = list(render_lines(rows, max_bytes=300))
    assert sum(count for _, count in runs) == 10
    assert all(len(lines) <= 300 for lines, _ in runs)
    assert [count for _, count in render_lines(rows[:2], max_bytes=10)] == [1, 1]
