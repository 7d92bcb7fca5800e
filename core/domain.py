"""Domain types shared by the server and the workers.

Plain frozen dataclasses and int enums; protobuf types stop at the gRPC edge. Enum
values equal the proto enum numbers so that the edge converts with a plain int cast.
Times are Unix epoch seconds as floats.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any, NamedTuple


class BatchState(enum.IntEnum):
    QUEUED = 1
    RUNNING = 2
    CANCELLING = 3
    COMPLETED = 4
    FAILED = 5
    CANCELLED = 6
    PAUSED = 7

    @property
    def is_terminal(self) -> bool:
        return self in TERMINAL_BATCH_STATES


TERMINAL_BATCH_STATES = frozenset({BatchState.COMPLETED, BatchState.FAILED, BatchState.CANCELLED})


class ItemState(enum.IntEnum):
    PENDING = 1
    RUNNING = 2
    SUCCEEDED = 3
    FAILED = 4
    CANCELLED = 5
    EXPIRED = 6

    @property
    def is_terminal(self) -> bool:
        return self in TERMINAL_ITEM_STATES


TERMINAL_ITEM_STATES = frozenset(
    {ItemState.SUCCEEDED, ItemState.FAILED, ItemState.CANCELLED, ItemState.EXPIRED}
)


# The tenant of every batch submitted without authentication (and of every batch stored
# before tenants existed). Its batches keep their ids as given; another tenant's are
# stored as `<tenant>~<id>` (batchd.server.tenancy).
DEFAULT_TENANT = "default"
# Tenant names: lower case, digits and dashes, starting with a letter or digit.
TENANT_PATTERN = re.compile(r"[a-z0-9][a-z0-9-]{0,31}")
# What joins a tenant to a name it owns; in no id a caller gives.
TENANT_SEPARATOR = "~"


def tenant_of(stored_id: str) -> str:
    """The tenant of a batch by its stored id (`acme~<id>`, or a default tenant's id)."""
    tenant, separator, _ = stored_id.partition(TENANT_SEPARATOR)
    return tenant if separator else DEFAULT_TENANT


@dataclass(frozen=True)
class RetryPolicy:
    """Cloud Tasks retry semantics. Zero fields mean "take the default"."""

    max_attempts: int = 0
    min_backoff: float = 0.0
    max_backoff: float = 0.0
    max_doublings: int = 0


# The most items one handler call may take (BatchOptions.block_size).
MAX_BLOCK_SIZE = 1000


@dataclass(frozen=True)
class BatchOptions:
    """How a batch is run. Zero fields mean "take the default" until merged."""

    chunk_size: int = 0
    retry_policy: RetryPolicy = field(default_factory=RetryPolicy)
    max_concurrent: int = 0
    max_per_second: float = 0.0
    burst: int = 0
    rate_limit_key: str = ""
    priority: int = 0
    item_timeout: float = 0.0
    completion_window: float = 0.0  # seconds from submission; then unfinished items EXPIRE
    callback_url: str = ""  # POSTed a signed CloudEvent when the batch ends (core/callbacks)
    # Items per handler call for a handler with `run_many` (1: one item per call).
    block_size: int = 0

    def merged_over(self, defaults: BatchOptions) -> BatchOptions:
        """These options, with every zero field taken from `defaults`."""
        merged: BatchOptions = _merge(self, defaults)
        return merged

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> BatchOptions:
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        retry = values.pop("retry_policy", None) or {}
        retry_known = {f.name for f in fields(RetryPolicy)}
        policy = RetryPolicy(**{k: v for k, v in retry.items() if k in retry_known})
        return cls(retry_policy=policy, **values)


# The BatchOptions fields UpdateBatch may change (its update_mask paths), in the order
# error messages list them; the rest are fixed at submission.
UPDATABLE_OPTIONS = ("priority", "max_per_second", "burst", "max_concurrent")


def _merge(primary: Any, fallback: Any) -> Any:
    changes: dict[str, Any] = {}
    for f in fields(primary):
        mine, theirs = getattr(primary, f.name), getattr(fallback, f.name)
        if isinstance(mine, RetryPolicy):
            changes[f.name] = _merge(mine, theirs)
        elif not mine:
            changes[f.name] = theirs
    return replace(primary, **changes)


@dataclass(frozen=True)
class ItemCounts:
    pending: int = 0
    running: int = 0
    succeeded: int = 0
    failed: int = 0
    cancelled: int = 0
    expired: int = 0
    # Items of claimed chunks not started yet (waiting in their worker); the rest of the
    # claimed items are `running`.
    claimed: int = 0

    @property
    def total(self) -> int:
        return self.pending + self.claimed + self.running + self.finished

    @property
    def finished(self) -> int:
        return self.succeeded + self.failed + self.cancelled + self.expired


@dataclass(frozen=True)
class BatchRecord:
    """A committed batch as the store keeps it."""

    batch_id: str
    handler: str
    state: BatchState
    options: BatchOptions
    metadata: Mapping[str, str]
    request_id: str
    total_items: int
    chunk_count: int
    counts: ItemCounts
    create_time: float
    start_time: float | None = None
    end_time: float | None = None
    # Why an unfinished batch makes no progress (BatchStore.explain_waits); "" otherwise.
    waiting_reason: str = ""
    tenant: str = DEFAULT_TENANT
    # When a batch submitted with a start time may start (Unix seconds); None: at once.
    scheduled_start: float | None = None
    # Its upload started it early and has not ended yet: items are still coming.
    uploading: bool = False


class NewItem(NamedTuple):
    """An item on its way in: params already validated, as compact JSON bytes. (A named
    tuple, not a frozen dataclass: the server makes one per item submitted, and a tuple
    is far cheaper to build.)"""

    custom_id: str
    params_json: bytes


@dataclass(frozen=True)
class BatchSpec:
    """Everything about a new batch except its items.

    `options` are the effective options (defaults merged in by the edge). The store
    digests the spec and the items as they arrive to recognise request_id replays.
    """

    batch_id: str
    handler: str
    options: BatchOptions
    metadata: Mapping[str, str]
    request_id: str = ""
    tenant: str = DEFAULT_TENANT
    # The W3C traceparent of the call that made the batch, when tracing is on: its
    # chunk runs continue that trace. Not part of the request digest.
    trace_parent: str = ""
    # When the batch may start (Unix seconds); None or a past time: at once.
    start_at: float | None = None


@dataclass(slots=True)
class ItemOutcome:
    """The outcome of one attempt of an item, as a worker records it: terminal, or — with
    `retry_at` set and state PENDING — a failed attempt to be retried at that time (the
    error fields then carry the attempt's error).

    Not frozen, unlike the other values here (treat it as if it were): a worker makes one
    per item, and a frozen dataclass is several times slower to build."""

    index: int  # position in the batch, from 0
    state: ItemState
    attempts: int
    start_time: float | None
    end_time: float | None
    output_json: bytes | None = None  # a JSON object, for SUCCEEDED
    error_code: int = 0  # a google.rpc.Code, for FAILED
    error_message: str = ""
    retry_at: float | None = None


@dataclass(frozen=True)
class ItemView:
    """One item as ListBatchItems shows it: its id plus its outcome or live state."""

    custom_id: str
    index: int
    state: ItemState
    attempts: int = 0
    start_time: float | None = None
    end_time: float | None = None
    output_json: bytes | None = None
    error_code: int = 0
    error_message: str = ""
    next_attempt_time: float | None = None  # for a PENDING item waiting for a retry


@dataclass(frozen=True)
class HandlerSpec:
    """What a worker publishes about a handler it serves."""

    name: str
    description: str
    params_schema: Mapping[str, Any]
    default_options: BatchOptions = field(default_factory=BatchOptions)

    @property
    def takes_blocks(self) -> bool:
        """The handler has `run_many`: it publishes a default block_size of 1 or more
        (0 for the others), and batches may ask for blocks above 1."""
        return self.default_options.block_size > 0


@dataclass(frozen=True)
class HandlerStatus:
    spec: HandlerSpec
    live_workers: int
    last_seen: float | None


@dataclass(frozen=True)
class ClaimedChunk:
    """A chunk handed to a worker: the items it still has to run."""

    batch_id: str
    chunk: int
    handler: str
    options: BatchOptions
    first_index: int  # global index of the chunk's first item
    items: list[tuple[int, str, bytes]]  # (global index, custom_id, params_json) not yet done
    token: str = ""  # the claim's lease token: renewals and the release must present it
    attempts: Mapping[int, int] = field(default_factory=dict)  # global index -> attempts so far
    trace_parent: str = ""  # the batch's stored traceparent ("": none; see BatchSpec)
