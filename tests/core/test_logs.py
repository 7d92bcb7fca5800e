"""Logs are JSON lines off a terminal, with context bound once, and library records
(stdlib logging) come out in the same shape."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest
import structlog

from batchd.core.config import Settings
from batchd.core.logs import configure_logging, get_logger


@pytest.fixture
def json_logs() -> Iterator[io.StringIO]:
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    stream = io.StringIO()
    configure_logging(Settings(log_format="json", log_level="info"), stream)
    yield stream
    root.handlers[:], level = saved
    root.setLevel(level)
    structlog.reset_defaults()


def lines(text: str) -> list[dict[str, object]]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def test_events_are_json_with_bound_context(
    json_logs: io.StringIO,
) -> None:
    structlog.contextvars.bind_contextvars(rpc="SubmitBatch", batch_id="b1")
    try:
        get_logger("test").info("batch_submitted", items=3)
    finally:
        structlog.contextvars.clear_contextvars()
    (record,) = lines(json_logs.getvalue())
    assert record["event"] == "batch_submitted"
    assert (record["rpc"], record["batch_id"], record["items"]) == ("SubmitBatch", "b1", 3)
    assert str(record["timestamp"]).endswith("Z")


def test_stdlib_records_share_the_format(
    json_logs: io.StringIO,
) -> None:
    logging.getLogger("some.library").warning("disk %s", "full")
    (record,) = lines(json_logs.getvalue())
    assert (record["event"], record["level"], record["logger"]) == (
        "disk full",
        "warning",
        "some.library",
    )
