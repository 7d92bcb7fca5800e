"""What a progress snapshot line and the live display show."""

from __future__ import annotations

import io
import json

import grpc
from google.protobuf import duration_pb2
from rich.console import Console

from batchd.cli._output import print_batch, to_jsonable
from batchd.cli._progress import reconnect_line, render, snapshot_line
from batchd.client import Batch, BatchdError, BatchProgress, WatchReconnect
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


REASON = 'no live worker serves handler "acc.upper"'


def test_claimed_items_show_beside_running_ones() -> None:
    message = batch_pb2.BatchProgress(
        batch_id="b1",
        state=batch_pb2.BATCH_STATE_RUNNING,
        total_items=10,
        counts=batch_pb2.ItemCounts(pending=2, claimed=3, running=1, succeeded=4),
    )
    p = BatchProgress.from_proto(message)
    assert " running=1 claimed=3 pending=2 " in snapshot_line(p)
    assert "running 1  claimed 3  pending 2" in shown(p)
    assert to_jsonable(p)["counts"]["claimed"] == 3


def test_a_waiting_reason_is_shown_only_when_there_is_one() -> None:
    p = progress(waiting_reason=REASON)
    line = snapshot_line(p)
    assert line.endswith(' waiting="no live worker serves handler \\"acc.upper\\""')
    assert json.loads(line.split(" waiting=", 1)[1]) == REASON
    assert f"waiting  {REASON}" in shown(p)
    assert to_jsonable(p)["waiting_reason"] == REASON
    plain = progress()
    assert "waiting" not in snapshot_line(plain)
    assert "waiting" not in shown(plain)
    assert to_jsonable(plain)["waiting_reason"] == ""


def test_get_shows_claimed_and_the_waiting_reason() -> None:
    message = batch_pb2.Batch(
        batch_id="b1",
        handler="acc.upper",
        state=batch_pb2.BATCH_STATE_QUEUED,
        total_items=5,
        counts=batch_pb2.ItemCounts(pending=3, claimed=2),
        waiting_reason=REASON,
    )
    out = io.StringIO()
    print_batch(Batch.from_proto(message), out)
    text = out.getvalue()
    assert "counts      succeeded=0 failed=0 running=0 claimed=2 pending=3 " in text
    assert f"waiting     {REASON}\n" in text
    assert to_jsonable(Batch.from_proto(message))["waiting_reason"] == REASON
    out = io.StringIO()
    print_batch(Batch.from_proto(batch_pb2.Batch(batch_id="b2")), out)
    assert "waiting" not in out.getvalue()


def test_a_lost_stream_replaces_rate_and_eta_with_reconnecting() -> None:
    p = progress(eta=duration_pb2.Duration(seconds=26))
    assert "ETA 0:26" in shown(p)
    lost = WatchReconnect(BatchdError(grpc.StatusCode.UNAVAILABLE, "Connection refused"), 2, 0.4)
    console = Console(width=120, record=True, file=io.StringIO())
    console.print(render(p.batch_id, p, lost=lost, lost_for=3.2))
    text = console.export_text()
    assert "ETA" not in text
    assert "reconnecting… 3s, attempt 2  (UNAVAILABLE: Connection refused)" in text
    assert "6/10" in text  # the last counts stay
    assert "connecting" in reconnect_line("b1", lost)
    assert reconnect_line("b1", lost).endswith(
        " b1 reconnecting… (UNAVAILABLE: Connection refused)"
    )
