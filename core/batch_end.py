"""`batch_finished`: the one log event of a batch's end (docs/operations.md, "Logs").

A batch ends inside one Lua script — the record of its last item, a cancel, an expiry, a
resume of a batch whose items all finished while it was paused — and only that script
call sees the end happen (core/lua/_batch.lua, `ended_now`), so the process that made
the call, worker or server, logs it, and no other. A redrive that reopens a finished
batch leads to another end, logged again. A reply lost to an outage after its script ran
loses the event (the call's retry finds the batch already ended).
"""

from __future__ import annotations

from typing import Any

from batchd.core.domain import BatchState, tenant_of
from batchd.core.logs import get_logger

__all__ = ["log_batch_end"]

log = get_logger(__name__)


def log_batch_end(batch_id: str, ended: Any) -> None:
    """Logs `batch_finished` if `ended` is a script's `ended_now` (not false/nil)."""
    if not ended or not isinstance(ended, list):
        return
    state, handler, total, ok, failed, cancelled, expired, created, started, end = ended
    created_ms, end_ms = int(created), int(end)
    started_ms = int(started) if started else None
    log.info(
        "batch_finished",
        batch_id=batch_id,
        tenant=tenant_of(batch_id),
        handler=bytes(handler).decode() if handler else "",
        state=BatchState(int(state)).name,
        total=int(total),
        succeeded=int(ok),
        failed=int(failed),
        cancelled=int(cancelled),
        expired=int(expired),
        # Queued: from creation to the first claim (to the end, if none ever came).
        queued_seconds=_seconds((started_ms or end_ms) - created_ms),
        running_seconds=_seconds(end_ms - started_ms) if started_ms is not None else 0.0,
        total_seconds=_seconds(end_ms - created_ms),
    )


def _seconds(ms: int) -> float:
    return round(max(ms, 0) / 1000, 3)
