"""What the client returns: frozen dataclasses over the batchd.v1 messages.

Proto types stop at the client's edge. Each class has an explicit `from_proto()`
(and `to_proto()` where the client sends it): enums become `IntEnum`s with the
proto numbers, Timestamps timezone-aware `datetime`s (UTC), Durations
`timedelta`s, Structs plain dicts. Unset timestamps and durations are `None`.
An item's output comes from `output_json` (integers stay integers), or from the
`output` Struct when an older service sends only that.
"""

from __future__ import annotations

import enum
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Generic, TypeVar

import grpc
from google.protobuf import duration_pb2, json_format, struct_pb2, timestamp_pb2
from google.rpc import status_pb2

from batchd.v1 import batch_pb2, batch_service_pb2

__all__ = [
    "Batch",
    "BatchEvent",
    "BatchEventType",
    "BatchItem",
    "BatchOptions",
    "BatchProgress",
    "BatchState",
    "ExportOrder",
    "HandlerInfo",
    "ItemCounts",
    "ItemError",
    "ItemState",
    "Page",
    "ResultsPage",
    "RetryPolicy",
    "RetryResult",
    "SubmitResult",
]

T = TypeVar("T")


class BatchState(enum.IntEnum):
    """Where a batch stands; the values are those of `batchd.v1.BatchState`."""

    UNSPECIFIED = 0
    QUEUED = 1
    RUNNING = 2
    CANCELLING = 3
    COMPLETED = 4
    FAILED = 5
    CANCELLED = 6
    PAUSED = 7

    @classmethod
    def _missing_(cls, value: object) -> BatchState:
        # A state added to the proto after this client was built.
        return cls.UNSPECIFIED

    @property
    def is_terminal(self) -> bool:
        """True for COMPLETED, FAILED and CANCELLED: nothing changes any more."""
        return self in (BatchState.COMPLETED, BatchState.FAILED, BatchState.CANCELLED)


class ItemState(enum.IntEnum):
    """Where one item stands; the values are those of `batchd.v1.ItemState`."""

    UNSPECIFIED = 0
    PENDING = 1
    RUNNING = 2
    SUCCEEDED = 3
    FAILED = 4
    CANCELLED = 5
    EXPIRED = 6

    @classmethod
    def _missing_(cls, value: object) -> ItemState:
        return cls.UNSPECIFIED

    @property
    def is_terminal(self) -> bool:
        """True for SUCCEEDED, FAILED, CANCELLED and EXPIRED."""
        return self in (
            ItemState.SUCCEEDED,
            ItemState.FAILED,
            ItemState.CANCELLED,
            ItemState.EXPIRED,
        )


def _time(message: Any, name: str) -> datetime | None:
    if not message.HasField(name):
        return None
    ts: timestamp_pb2.Timestamp = getattr(message, name)
    return ts.ToDatetime(tzinfo=UTC)


def _duration(message: Any, name: str) -> timedelta | None:
    if not message.HasField(name):
        return None
    d: duration_pb2.Duration = getattr(message, name)
    return d.ToTimedelta()


def _to_duration(value: timedelta | None) -> duration_pb2.Duration | None:
    if value is None:
        return None
    d = duration_pb2.Duration()
    d.FromTimedelta(value)
    return d


def _timedelta(value: timedelta | float | None) -> timedelta | None:
    if value is None or isinstance(value, timedelta):
        return value
    return timedelta(seconds=value)


def _struct_dict(message: Any, name: str) -> dict[str, Any] | None:
    if not message.HasField(name):
        return None
    struct: struct_pb2.Struct = getattr(message, name)
    return json_format.MessageToDict(struct)


@dataclass(frozen=True)
class RetryPolicy:
    """How failed items are retried. Zero or `None` takes the handler's default."""

    max_attempts: int = 0
    """Attempts in all, the first included."""
    min_backoff: timedelta | None = None
    """The delay before the first retry."""
    max_backoff: timedelta | None = None
    """The longest delay between two attempts."""
    max_doublings: int = 0
    """How many times the delay doubles before it grows linearly."""

    @classmethod
    def from_proto(cls, pb: batch_pb2.RetryPolicy) -> RetryPolicy:
        return cls(
            max_attempts=pb.max_attempts,
            min_backoff=_duration(pb, "min_backoff"),
            max_backoff=_duration(pb, "max_backoff"),
            max_doublings=pb.max_doublings,
        )

    def to_proto(self) -> batch_pb2.RetryPolicy:
        return batch_pb2.RetryPolicy(
            max_attempts=self.max_attempts,
            min_backoff=_to_duration(self.min_backoff),
            max_backoff=_to_duration(self.max_backoff),
            max_doublings=self.max_doublings,
        )


@dataclass(frozen=True)
class BatchOptions:
    """How a batch is run. Zero or `None` takes the handler's default, then the
    service's; `Batch.options` shows the values in force."""

    chunk_size: int = 0
    """Items per chunk (the unit a worker picks up), 1 to 10,000."""
    retry_policy: RetryPolicy | None = None
    max_concurrent: int = 0
    """Items of this batch in flight at once across all workers; 0: no limit."""
    max_per_second: float = 0.0
    """Items of this batch started per second across all workers; 0: no limit."""
    burst: int = 0
    """Items that may start at once above the steady `max_per_second` rate."""
    rate_limit_key: str = ""
    """A rate-limit key shared with other batches."""
    priority: int = 0
    """Higher runs first."""
    item_timeout: timedelta | None = None
    """The longest one attempt of one item may take."""
    completion_window: timedelta | None = None
    """How long the batch may take from submission; items not finished by then
    end EXPIRED. `None`: the service's default (24 hours)."""
    callback_url: str = ""
    """An https URL POSTed a signed CloudEvent (`batchd.batch.finished`) when the batch
    ends; empty: none (docs/api.md, "Completion callbacks")."""
    block_size: int = 0
    """Items per handler call, for a handler that takes blocks (a bulk API), 1 to
    1,000 and not above `chunk_size`; 0: the handler's default."""

    @classmethod
    def from_proto(cls, pb: batch_pb2.BatchOptions) -> BatchOptions:
        return cls(
            chunk_size=pb.chunk_size,
            retry_policy=(
                RetryPolicy.from_proto(pb.retry_policy) if pb.HasField("retry_policy") else None
            ),
            max_concurrent=pb.max_concurrent,
            max_per_second=pb.max_per_second,
            burst=pb.burst,
            rate_limit_key=pb.rate_limit_key,
            priority=pb.priority,
            item_timeout=_duration(pb, "item_timeout"),
            completion_window=_duration(pb, "completion_window"),
            callback_url=pb.completion_callback.url,
            block_size=pb.block_size,
        )

    @classmethod
    def from_mapping(cls, options: Mapping[str, Any]) -> BatchOptions:
        """Options from a mapping of field names, e.g. `{"chunk_size": 500}`. Durations
        may be `timedelta`s or seconds; `retry_policy` a `RetryPolicy` or a mapping."""
        values = dict(options)
        unknown = set(values) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"unknown batch options: {', '.join(sorted(unknown))}")
        policy = values.get("retry_policy")
        if isinstance(policy, Mapping):
            policy_values = dict(policy)
            for name in ("min_backoff", "max_backoff"):
                policy_values[name] = _timedelta(policy_values.get(name))
            values["retry_policy"] = RetryPolicy(**policy_values)
        for name in ("item_timeout", "completion_window"):
            values[name] = _timedelta(values.get(name))
        return cls(**values)

    def to_proto(self) -> batch_pb2.BatchOptions:
        return batch_pb2.BatchOptions(
            chunk_size=self.chunk_size,
            retry_policy=self.retry_policy.to_proto() if self.retry_policy else None,
            max_concurrent=self.max_concurrent,
            max_per_second=self.max_per_second,
            burst=self.burst,
            rate_limit_key=self.rate_limit_key,
            priority=self.priority,
            item_timeout=_to_duration(self.item_timeout),
            completion_window=_to_duration(self.completion_window),
            completion_callback=(
                batch_pb2.CompletionCallback(url=self.callback_url) if self.callback_url else None
            ),
            block_size=self.block_size,
        )


@dataclass(frozen=True)
class ItemCounts:
    """Items per state; they add up to the batch's `total_items`."""

    pending: int = 0
    """Items waiting for a worker."""
    running: int = 0
    """Items a worker is running now (an attempt in flight)."""
    succeeded: int = 0
    failed: int = 0
    cancelled: int = 0
    expired: int = 0
    claimed: int = 0
    """Items a worker has taken that have not started: they wait for a worker slot, a
    rate-limit permit or `max_concurrent`."""

    @property
    def finished(self) -> int:
        """Items in a terminal state: succeeded, failed, cancelled or expired."""
        return self.succeeded + self.failed + self.cancelled + self.expired

    @classmethod
    def from_proto(cls, pb: batch_pb2.ItemCounts) -> ItemCounts:
        return cls(
            pending=pb.pending,
            running=pb.running,
            succeeded=pb.succeeded,
            failed=pb.failed,
            cancelled=pb.cancelled,
            expired=pb.expired,
            claimed=pb.claimed,
        )


@dataclass(frozen=True)
class Batch:
    """A batch: what was submitted and where it stands."""

    batch_id: str
    handler: str
    state: BatchState
    options: BatchOptions
    metadata: Mapping[str, str]
    request_id: str
    total_items: int
    chunk_count: int
    counts: ItemCounts
    create_time: datetime | None
    start_time: datetime | None
    end_time: datetime | None
    waiting_reason: str = ""
    """Why an unfinished batch makes no progress, when the service knows (e.g.
    `no live worker serves handler "acc.upper"`); empty otherwise."""
    scheduled_start_time: datetime | None = None
    """When a batch submitted with a `start_time` may start; None for one that could
    start at once."""
    uploading: bool = False
    """True while the upload that started the batch early is still under way
    (`upload(..., start_early=True)`): its items are still coming."""

    @classmethod
    def from_proto(cls, pb: batch_pb2.Batch) -> Batch:
        return cls(
            batch_id=pb.batch_id,
            handler=pb.handler,
            state=BatchState(pb.state),
            options=BatchOptions.from_proto(pb.options),
            metadata=dict(pb.metadata),
            request_id=pb.request_id,
            total_items=pb.total_items,
            chunk_count=pb.chunk_count,
            counts=ItemCounts.from_proto(pb.counts),
            create_time=_time(pb, "create_time"),
            start_time=_time(pb, "start_time"),
            end_time=_time(pb, "end_time"),
            waiting_reason=pb.waiting_reason,
            scheduled_start_time=_time(pb, "scheduled_start_time"),
            uploading=pb.uploading,
        )


@dataclass(frozen=True)
class SubmitResult:
    """What `submit()` and `upload()` return."""

    batch: Batch
    """The batch as stored."""
    replayed: bool
    """True when the request_id had been seen and the original batch is returned."""


@dataclass(frozen=True)
class RetryResult:
    """What `retry()` returns."""

    batch: Batch
    """The batch after the request (RUNNING again if anything was requeued)."""
    requeued: int
    """How many items were queued again."""
    replayed: bool
    """True when the request_id had been seen and the original result is returned."""


@dataclass(frozen=True)
class BatchProgress:
    """One progress snapshot of a batch, as `watch()` yields them."""

    batch_id: str
    state: BatchState
    total_items: int
    counts: ItemCounts
    items_per_second: float
    """Items finished per second, recently."""
    eta: timedelta | None
    """The expected time to finish at the current rate; `None` when unknown."""
    create_time: datetime | None
    start_time: datetime | None
    end_time: datetime | None
    observe_time: datetime | None
    """When the service read this snapshot."""
    heartbeat: bool = False
    """True when nothing changed since the previous snapshot."""
    effective_rate: float = 0.0
    """The start rate in force now (items/s), lowered while the downstream asks to slow
    down; 0 when the batch has no rate limit."""
    waiting_reason: str = ""
    """Why an unfinished batch makes no progress, as `Batch.waiting_reason`."""
    scheduled_start_time: datetime | None = None
    """When a batch submitted with a `start_time` may start, as
    `Batch.scheduled_start_time`."""
    uploading: bool = False
    """True while its upload is still under way, as `Batch.uploading`."""

    @property
    def fraction(self) -> float:
        """The finished share of the items, 0.0 to 1.0 (1.0 for an empty batch)."""
        if self.total_items == 0:
            return 1.0
        return self.counts.finished / self.total_items

    @classmethod
    def from_proto(cls, pb: batch_pb2.BatchProgress, *, heartbeat: bool = False) -> BatchProgress:
        return cls(
            batch_id=pb.batch_id,
            state=BatchState(pb.state),
            total_items=pb.total_items,
            counts=ItemCounts.from_proto(pb.counts),
            items_per_second=pb.items_per_second,
            eta=_duration(pb, "eta"),
            create_time=_time(pb, "create_time"),
            start_time=_time(pb, "start_time"),
            end_time=_time(pb, "end_time"),
            observe_time=_time(pb, "observe_time"),
            heartbeat=heartbeat,
            effective_rate=pb.effective_rate,
            waiting_reason=pb.waiting_reason,
            scheduled_start_time=_time(pb, "scheduled_start_time"),
            uploading=pb.uploading,
        )


class BatchEventType(enum.IntEnum):
    """What happened to a batch (`watch_batches()`); the values are those of
    `batchd.v1.BatchEventType`."""

    UNSPECIFIED = 0
    """Not an event: a heartbeat, or a type added after this client was built."""
    CREATED = 1
    STARTED = 2
    PAUSED = 3
    RESUMED = 4
    CANCEL_REQUESTED = 5
    FINISHED = 6
    """The batch ended: COMPLETED or CANCELLED, as `state` says."""
    RETRIED = 7
    DELETED = 8

    @classmethod
    def _missing_(cls, value: object) -> BatchEventType:
        return cls.UNSPECIFIED


@dataclass(frozen=True)
class BatchEvent:
    """One event of `watch_batches()`: what happened to a batch, and the batch right
    after it. A heartbeat (`heartbeat=True`, only with `heartbeats=True`) carries only
    a cursor."""

    cursor: str
    """Pass as `cursor=` to carry on after this event (or heartbeat)."""
    type: BatchEventType
    event_time: datetime | None
    batch_id: str
    state: BatchState
    """The batch's state right after the event."""
    handler: str = ""
    metadata: dict[str, str] = field(default_factory=dict)
    total_items: int = 0
    counts: ItemCounts = field(default_factory=ItemCounts)
    """Items per state right after the event; `running` holds every item a worker
    holds (claimed ones too)."""
    heartbeat: bool = False

    @classmethod
    def from_proto(cls, pb: batch_service_pb2.WatchBatchesResponse) -> BatchEvent:
        event = pb.event
        return cls(
            cursor=pb.cursor or event.cursor,
            type=BatchEventType(event.type),
            event_time=_time(event, "event_time"),
            batch_id=event.batch_id,
            state=BatchState(event.state),
            handler=event.handler,
            metadata=dict(event.metadata),
            total_items=event.total_items,
            counts=ItemCounts.from_proto(event.counts),
            heartbeat=pb.heartbeat,
        )


_STATUS_CODES = {code.value[0]: code for code in grpc.StatusCode}


@dataclass(frozen=True)
class ItemError:
    """Why an item failed: a status code and a message."""

    code: grpc.StatusCode
    message: str

    @classmethod
    def from_proto(cls, pb: status_pb2.Status) -> ItemError:
        return cls(
            code=_STATUS_CODES.get(pb.code, grpc.StatusCode.UNKNOWN),
            message=pb.message,
        )


def _output(pb: batch_pb2.BatchItem) -> dict[str, Any] | None:
    if pb.output_json:
        try:
            output = json.loads(pb.output_json)
        except ValueError:
            output = None  # not JSON after all: the Struct still says what it can
        if isinstance(output, dict):
            return output
    return _struct_dict(pb, "output")


@dataclass(frozen=True)
class BatchItem:
    """The outcome of one item."""

    custom_id: str
    index: int
    """The item's position in the batch, from 0."""
    state: ItemState
    attempts: int
    output: dict[str, Any] | None
    """The handler's output, for a SUCCEEDED item, as it returned it: integers stay
    integers (from `output_json`; from the `output` Struct, whose numbers are all
    floats, only when the service sends no `output_json`)."""
    error: ItemError | None
    """Why the item failed, for a FAILED item (or, for a PENDING item waiting for a
    retry, why its last attempt failed)."""
    start_time: datetime | None
    end_time: datetime | None
    next_attempt_time: datetime | None = None
    """When a PENDING item waiting for a retry becomes due."""

    @classmethod
    def from_proto(cls, pb: batch_pb2.BatchItem) -> BatchItem:
        return cls(
            custom_id=pb.custom_id,
            index=pb.index,
            state=ItemState(pb.state),
            attempts=pb.attempts,
            output=_output(pb),
            error=ItemError.from_proto(pb.error) if pb.HasField("error") else None,
            start_time=_time(pb, "start_time"),
            end_time=_time(pb, "end_time"),
            next_attempt_time=_time(pb, "next_attempt_time"),
        )


@dataclass(frozen=True)
class HandlerInfo:
    """A handler that workers serve."""

    name: str
    description: str
    params_schema: dict[str, Any]
    """The JSON Schema every item's params must satisfy."""
    default_options: BatchOptions
    live_workers: int
    """Workers alive now that serve the handler; 0: batches wait QUEUED."""
    last_seen_time: datetime | None

    @classmethod
    def from_proto(cls, pb: batch_pb2.HandlerInfo) -> HandlerInfo:
        return cls(
            name=pb.name,
            description=pb.description,
            params_schema=_struct_dict(pb, "params_schema") or {},
            default_options=BatchOptions.from_proto(pb.default_options),
            live_workers=pb.live_workers,
            last_seen_time=_time(pb, "last_seen_time"),
        )


@dataclass(frozen=True)
class Page(Generic[T]):
    """One page of a listing."""

    items: tuple[T, ...] = field(default=())
    next_page_token: str = ""
    """Pass as `page_token` for the next page; empty on the last page."""


class ExportOrder(enum.IntEnum):
    """The order of an export's lines; the values are those of `batchd.v1.ExportOrder`."""

    SUBMISSION = 1
    """As the items were submitted (by index)."""
    CUSTOM_ID = 2
    """By custom_id, in byte order."""

    @classmethod
    def parse(cls, value: ExportOrder | str) -> ExportOrder:
        """An order from itself or a name: "submission", "custom_id" or "id"."""
        if isinstance(value, ExportOrder):
            return value
        name = value.strip().lower()
        if name in {"id", "custom_id"}:
            return cls.CUSTOM_ID
        if name == "submission":
            return cls.SUBMISSION
        raise ValueError(f"unknown export order {value!r} (submission, custom_id or id)")


@dataclass(frozen=True)
class ResultsPage:
    """One message of an export (ExportBatchResults): the next lines of the batch's
    results file."""

    lines: bytes
    """JSON Lines, UTF-8, one object per item, each line ending with a newline: write
    them to a file as they are."""
    line_count: int
    cursor: str
    """Pass as `after` to export the rest, from the line after this page's last."""
    position: int
    """Lines of the whole export up to and including this page's last."""
    total_items: int
    """Lines of the whole export (the batch's items)."""

    @classmethod
    def from_proto(cls, pb: batch_service_pb2.ExportBatchResultsResponse) -> ResultsPage:
        return cls(
            lines=pb.lines,
            line_count=pb.line_count,
            cursor=pb.cursor,
            position=pb.position,
            total_items=pb.total_items,
        )

    def records(self) -> list[dict[str, Any]]:
        """The lines as dicts: custom_id, index, state, attempts, output, error, start_time,
        end_time (docs/client.md, "Results as one file")."""
        return [json.loads(line) for line in self.lines.splitlines()]
