"""A batch's end as a CloudEvent (structured JSON mode), and its signature.

The body is built from the record the ending script filed, so every delivery of one
event sends the same bytes. The signature header is Stripe's scheme:
`batchd-signature: t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<body>">`, the key
being the tenant's callback secret; `verify` is what a receiver runs (docs/api.md,
"Completion callbacks", shows the same code to copy).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

from batchd.core.domain import TENANT_SEPARATOR, BatchState

__all__ = ["CONTENT_TYPE", "EVENT_TYPE", "SIGNATURE_HEADER", "CallbackEvent", "sign", "verify"]

EVENT_TYPE: Final = "batchd.batch.finished"
CONTENT_TYPE: Final = "application/cloudevents+json; charset=utf-8"
SIGNATURE_HEADER: Final = "batchd-signature"
# What `source` says: the service; `subject` names the batch.
SOURCE: Final = "batchd"
# Where the batch's results come from, for the event's `data.results`.
RESULTS_RPC: Final = "batchd.v1.BatchService/ExportBatchResults"


@dataclass(frozen=True)
class CallbackEvent:
    """An outbox record (_callbacks.lua): the batch's end, by its stored id. Times are
    Unix milliseconds; `started` None if no item was ever claimed."""

    event_id: str
    batch_id: str
    tenant: str
    url: str
    filed_ms: int
    state: BatchState
    handler: str
    total: int
    succeeded: int
    failed: int
    cancelled: int
    expired: int
    created_ms: int
    started_ms: int | None
    ended_ms: int

    @classmethod
    def from_record(cls, raw: bytes | str) -> CallbackEvent:
        r: Mapping[str, Any] = json.loads(raw)
        return cls(
            event_id=r["id"],
            batch_id=r["batch"],
            tenant=r["tenant"],
            url=r["url"],
            filed_ms=int(r["filed"]),
            state=BatchState(int(r["state"])),
            handler=r["handler"] or "",
            total=int(r["total"]),
            succeeded=int(r["succeeded"]),
            failed=int(r["failed"]),
            cancelled=int(r["cancelled"]),
            expired=int(r["expired"]),
            created_ms=int(r["created"]),
            started_ms=int(r["started"]) if r.get("started") else None,
            ended_ms=int(r["ended"]),
        )

    @property
    def shown_id(self) -> str:
        """The batch id as its submitter knows it (without the tenant's prefix)."""
        tenant, separator, name = self.batch_id.partition(TENANT_SEPARATOR)
        return name if separator else tenant

    def body(self) -> bytes:
        """The CloudEvent, as JSON: the same bytes for every delivery of the event."""
        shown = self.shown_id
        event = {
            "specversion": "1.0",
            "id": self.event_id,
            "source": SOURCE,
            "type": EVENT_TYPE,
            "subject": shown,
            "time": _rfc3339(self.ended_ms),
            "datacontenttype": "application/json",
            "data": {
                "batch_id": shown,
                "state": self.state.name,
                "handler": self.handler,
                "total_items": self.total,
                "counts": {
                    "succeeded": self.succeeded,
                    "failed": self.failed,
                    "cancelled": self.cancelled,
                    "expired": self.expired,
                },
                "create_time": _rfc3339(self.created_ms),
                "start_time": _rfc3339(self.started_ms) if self.started_ms else None,
                "end_time": _rfc3339(self.ended_ms),
                "duration_seconds": round((self.ended_ms - self.created_ms) / 1000, 3),
                "results": {"rpc": RESULTS_RPC, "cli": f"batchd results {shown}"},
            },
        }
        return json.dumps(event, separators=(",", ":")).encode()


def sign(secret: bytes, body: bytes, timestamp: int | None = None) -> str:
    """The `batchd-signature` header's value for `body` at `timestamp` (now if None)."""
    t = int(time.time()) if timestamp is None else timestamp
    mac = hmac.new(secret, f"{t}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={t},v1={mac}"


def verify(secret: bytes, body: bytes, header: str, tolerance: float = 300.0) -> bool:
    """True if `header` signs `body` with `secret` within `tolerance` seconds of now
    (the receiver's check; replays older than that are refused)."""
    try:
        fields = dict(part.split("=", 1) for part in header.split(","))
        timestamp = int(fields["t"])
    except (KeyError, ValueError):
        return False
    if abs(time.time() - timestamp) > tolerance:
        return False
    expected = hmac.new(secret, f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected, fields.get("v1", ""))


def _rfc3339(ms: int) -> str:
    return (
        datetime.fromtimestamp(ms / 1000, UTC)
        .isoformat(timespec="milliseconds")
        .replace("+00:00", "Z")
    )
