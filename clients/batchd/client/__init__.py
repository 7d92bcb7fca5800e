"""batchd.client: a typed Python client of the batchd batch-processing service.

`Client` (blocking) and `AsyncClient` (asyncio) have the same methods:

    submit(handler, items, *, options, metadata, request_id, batch_id, start_time) -> SubmitResult
    upload(handler, items, *, items_per_message, ...)                  -> SubmitResult
    get(batch_id)                                                      -> Batch
    list(*, states, page_size)          -> (async) iterator of Batch, every page
    list_page(*, states, page_size, page_token)                        -> Page[Batch]
    cancel(batch_id)                                                   -> Batch
    pause(batch_id)                                                    -> Batch
    resume(batch_id)                                                   -> Batch
    update(batch_id, *, priority, max_per_second, burst, max_concurrent) -> Batch
    retry(batch_id, custom_ids=None, *, request_id)                    -> RetryResult
    delete(batch_id)                                                   -> None
    items(batch_id, *, states, page_size) -> (async) iterator of BatchItem, every page
    items_page(batch_id, *, states, page_size, page_token)             -> Page[BatchItem]
    handlers()                                                         -> list[HandlerInfo]
    export_results(batch_id, *, order, after) -> (async) iterator of ResultsPage
    watch(batch_id, *, min_interval, heartbeat_interval, retry, on_reconnect)
                                        -> (async) iterator of BatchProgress
    watch_batches(*, states, labels, handler, types, cursor, from_oldest,
                  heartbeat_interval, heartbeats, retry, on_reconnect)
                                        -> (async) iterator of BatchEvent

Results are frozen dataclasses (`Batch`, `BatchProgress`, ...) converted from the
batchd.v1 messages, with `IntEnum` states, `datetime`s and `timedelta`s. Items
are mappings, `(custom_id, params)` tuples or `batchd.v1.batch_pb2.Item`s.

An item over `MAX_ITEM_BYTES` encoded (4 MiB) is refused before anything is sent,
as is a SubmitBatch request over `MAX_REQUEST_BYTES`, the most the service reads.

TLS: `Client(target, tls=True)` trusts the system's root CAs;
`tls=TLS(ca_file="ca.pem")` a private CA, and with `cert_file` and `key_file` the
client presents its certificate (mTLS). A file that cannot be read or holds no PEM
raises `TLSFileError` (a ValueError) when the client is created.

Errors: every failed call raises `BatchdError` (`.code`, a `grpc.StatusCode`;
`.message`; `.field_violations`; `.retry_after`; `.quota_violations`); nothing else
escapes from an RPC.
"""

from batchd.client._async import AsyncClient
from batchd.client._errors import BatchdError, FieldViolation, QuotaViolation
from batchd.client._items import (
    MAX_ITEM_BYTES,
    MAX_PARAMS_DEPTH,
    MAX_REQUEST_BYTES,
    ItemLike,
    Params,
    to_item,
)
from batchd.client._requests import DEFAULT_TARGET, DEFAULT_TIMEOUT
from batchd.client._sync import Client
from batchd.client._tls import TLS, TLSFileError, TLSLike
from batchd.client._types import (
    Batch,
    BatchEvent,
    BatchEventType,
    BatchItem,
    BatchOptions,
    BatchProgress,
    BatchState,
    ExportOrder,
    HandlerInfo,
    ItemCounts,
    ItemError,
    ItemState,
    Page,
    ResultsPage,
    RetryPolicy,
    RetryResult,
    SubmitResult,
)
from batchd.client._watch import WatchReconnect, WatchRetry

__all__ = [
    "DEFAULT_TARGET",
    "DEFAULT_TIMEOUT",
    "MAX_ITEM_BYTES",
    "MAX_PARAMS_DEPTH",
    "MAX_REQUEST_BYTES",
    "TLS",
    "AsyncClient",
    "Batch",
    "BatchEvent",
    "BatchEventType",
    "BatchItem",
    "BatchOptions",
    "BatchProgress",
    "BatchState",
    "BatchdError",
    "Client",
    "ExportOrder",
    "FieldViolation",
    "HandlerInfo",
    "ItemCounts",
    "ItemError",
    "ItemLike",
    "ItemState",
    "Page",
    "Params",
    "QuotaViolation",
    "ResultsPage",
    "RetryPolicy",
    "RetryResult",
    "SubmitResult",
    "TLSFileError",
    "TLSLike",
    "WatchReconnect",
    "WatchRetry",
    "to_item",
]
