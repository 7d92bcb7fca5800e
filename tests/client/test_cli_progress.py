"""What a progress snapshot line and the live display show."""

from __future__ import annotations

import io

from rich.console import Console

from batchd.cli._progress import render, snapshot_line
from batchd.client import BatchProgress
from batchd.v1 import batch_pb2


def progress(**fields: object) -> BatchProgress:
    message = batch_pb2.BatchProgress(
        batch_id="b1",
        state=batch_pb2.BATCH_STATE_RUNNING,
        total_items=10,
        counts=batch_pb2.ItemCounts(pending=4, succeeded=5, failed=1),
        items_per_second=2.5,
        **fields,  # type: ignore[arg-type]
    )
    return BatchProgress.from_proto(message)


def shown(p: BatchProgress) -> str:
    console = Console(width=120, record=True, file=io.StringIO())
    console.print(render(p.batch_id, p))
    return console.export_text()


def test_a_rate_limited_batch_shows_its_effective_rate() -> None:
    p = progress(effective_rate=140.0)
    assert p.effective_rate == 140.0
    assert snapshot_line(p).endswith("limit=140.0/s")
    assert "limit 140.0/s" in shown(p)


def test_an_unlimited_batch_shows_no_limit() -> None:
    p = progress()
    assert "limit" not in snapshot_line(p)
    assert "limit" not in shown(p)
    assert "6/10" in snapshot_line(p)
