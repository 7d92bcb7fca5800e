"""Request building shared by `Client` and `AsyncClient`, and their channel defaults."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence, Sized
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
from google.protobuf import duration_pb2, timestamp_pb2

from batchd.client._errors import BatchdError
from batchd.client._items import (
    MAX_ITEM_BYTES,
    MAX_REQUEST_BYTES,
    ItemLike,
    check_item_size,
    to_item,
)
from batchd.client._types import BatchOptions, BatchState, ExportOrder, ItemState
from batchd.client._watch import WatchRetry
from batchd.v1 import batch_pb2, batch_service_pb2

__all__ = [
    "DEFAULT_TARGET",
    "DEFAULT_TIMEOUT",
    "SUBMIT_RETRY",
    "OptionsLike",
    "announced_count",
    "bearer_metadata",
    "channel_options",
    "export_request",
    "list_batches_request",
    "list_items_request",
    "retry_delay",
    "submit_request",
    "upload_header",
    "watch_request",
]

DEFAULT_TARGET = "localhost:50051"
DEFAULT_TIMEOUT = 30.0
"""Seconds a unary call may take; uploads and watches have no deadline by default."""

OptionsLike = BatchOptions | batch_pb2.BatchOptions | Mapping[str, Any]
"""Batch options: a `BatchOptions`, the generated message, or a mapping such as
`{"chunk_size": 500, "retry_policy": {"max_attempts": 3}}`."""

_SERVICE = "batchd.v1.BatchService"
# Safe to repeat on UNAVAILABLE: they read, or (CancelBatch) are idempotent. SubmitBatch
# is only with a request_id, so the client repeats it itself (SUBMIT_RETRY).
_RETRIED_METHODS = ("GetBatch", "ListBatches", "CancelBatch", "ListBatchItems", "ListHandlers")
_SERVICE_CONFIG = {
    # Calls go to every address the target names or resolves to, in turn, skipping the
    # servers whose health (grpc.health.v1 Watch) is not SERVING: a server draining on
    # SIGTERM, or one that has lost Redis. With one address it is that address.
    "loadBalancingConfig": [{"round_robin": {}}],
    "healthCheckConfig": {"serviceName": _SERVICE},
    "methodConfig": [
        {
            "name": [{"service": _SERVICE, "method": m} for m in _RETRIED_METHODS],
            "retryPolicy": {
                "maxAttempts": 4,
                "initialBackoff": "0.2s",
                "maxBackoff": "3s",
                "backoffMultiplier": 2,
                "retryableStatusCodes": ["UNAVAILABLE"],
            },
        }
    ],
}


SUBMIT_RETRY = WatchRetry(initial_backoff=0.2, max_backoff=3.0, max_retries=3)
"""How `submit()` with a request_id repeats a call that failed UNAVAILABLE (a server lost
mid-call): the request_id makes the repeat return the batch the first call created."""


def retry_delay(error: BatchdError, request_id: str, failures: int) -> float:
    """Seconds to wait before sending a failed SubmitBatch again; raises `error` when it
    must not be repeated: no request_id, another code than UNAVAILABLE, no retries left."""
    retried = error.code in SUBMIT_RETRY.retryable_codes and failures <= SUBMIT_RETRY.max_retries
    if not (request_id and retried):
        raise error
    return SUBMIT_RETRY.delay(failures, error.retry_after)


def bearer_metadata(token: str | None) -> tuple[tuple[str, str], ...]:
    """The metadata that presents `token` (an API key or JWT) on a call, none without
    one. Sent with each call rather than as call credentials, which grpc refuses on a
    plaintext channel: the same header reaches the service over TLS and over loopback."""
    token = (token or "").strip()
    if not token:
        return ()
    if any(c.isspace() or not c.isprintable() for c in token):
        raise ValueError("token: a single word without spaces or control characters")
    return (("authorization", f"Bearer {token}"),)


def channel_options(extra: Sequence[tuple[str, Any]] = ()) -> list[tuple[str, Any]]:
    """Options for a channel the client creates itself; `extra` wins over the defaults."""
    options: dict[str, Any] = {
        "grpc.service_config": json.dumps(_SERVICE_CONFIG),
        # Pages of items carry their outputs: allow more than the 4 MiB default.
        "grpc.max_receive_message_length": 64 << 20,
        "grpc.max_send_message_length": 64 << 20,
    }
    options.update(dict(extra))
    return list(options.items())


def _options(options: OptionsLike | None) -> batch_pb2.BatchOptions | None:
    if options is None or isinstance(options, batch_pb2.BatchOptions):
        return options
    if isinstance(options, BatchOptions):
        return options.to_proto()
    try:
        return BatchOptions.from_mapping(options).to_proto()
    except (TypeError, ValueError) as exc:
        raise BatchdError(grpc.StatusCode.INVALID_ARGUMENT, f"options: {exc}") from None


def submit_request(
    handler: str,
    items: Iterable[ItemLike],
    *,
    options: OptionsLike | None,
    metadata: Mapping[str, str] | None,
    request_id: str | None,
    batch_id: str | None,
    params_struct: bool,
    start_time: datetime | None = None,
) -> batch_service_pb2.SubmitBatchRequest:
    """The request, or `BatchdError` (INVALID_ARGUMENT) when the service could not read
    it: an item over `MAX_ITEM_BYTES`, or the whole over `MAX_REQUEST_BYTES`."""
    request = batch_service_pb2.SubmitBatchRequest(
        handler=handler,
        items=[to_item(item, index=i, params_struct=params_struct) for i, item in enumerate(items)],
        options=_options(options),
        metadata=metadata,
        request_id=request_id or "",
        batch_id=batch_id or "",
        start_time=_timestamp(start_time),
    )
    size = request.ByteSize()
    if size > MAX_ITEM_BYTES:  # else no item can be over it
        for index, item in enumerate(request.items):
            check_item_size(item.ByteSize(), index, item.custom_id)
    if size > MAX_REQUEST_BYTES:
        raise BatchdError(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"the request is {size:,} bytes, over the {MAX_REQUEST_BYTES:,} the service "
            "reads in one message: submit fewer items per call, or upload() them",
        )
    return request


def upload_header(
    handler: str,
    *,
    options: OptionsLike | None,
    metadata: Mapping[str, str] | None,
    request_id: str | None,
    batch_id: str | None,
    start_time: datetime | None = None,
    start_early: bool = False,
    item_count: int = 0,
) -> batch_service_pb2.UploadBatchHeader:
    return batch_service_pb2.UploadBatchHeader(
        handler=handler,
        options=_options(options),
        metadata=metadata,
        request_id=request_id or "",
        batch_id=batch_id or "",
        start_time=_timestamp(start_time),
        start_early=start_early,
        item_count=item_count if start_early else 0,
    )


def announced_count(items: object, start_early: bool, item_count: int | None) -> int:
    """The item count an upload that starts early announces: `item_count`, else the
    length of `items`; ValueError for an iterable of unknown length. 0 without
    `start_early`."""
    if not start_early:
        return 0
    if item_count is not None:
        return item_count
    if isinstance(items, Sized):
        return len(items)
    raise ValueError(
        "start_early needs item_count (how many items the upload carries) when the items "
        "have no len()"
    )


def _timestamp(moment: datetime | None) -> timestamp_pb2.Timestamp | None:
    """`moment` as a Timestamp; a naive datetime is taken as UTC."""
    if moment is None:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    message = timestamp_pb2.Timestamp()
    message.FromDatetime(moment.astimezone(UTC))
    return message


def list_batches_request(
    states: Iterable[BatchState] | None, page_size: int, page_token: str
) -> batch_service_pb2.ListBatchesRequest:
    return batch_service_pb2.ListBatchesRequest(
        page_size=page_size,
        page_token=page_token,
        states=[batch_pb2.BatchState.ValueType(s) for s in states or ()],
    )


def list_items_request(
    batch_id: str, states: Iterable[ItemState] | None, page_size: int, page_token: str
) -> batch_service_pb2.ListBatchItemsRequest:
    return batch_service_pb2.ListBatchItemsRequest(
        batch_id=batch_id,
        page_size=page_size,
        page_token=page_token,
        states=[batch_pb2.ItemState.ValueType(s) for s in states or ()],
    )


def export_request(
    batch_id: str, order: ExportOrder | str, after: str
) -> batch_service_pb2.ExportBatchResultsRequest:
    try:
        parsed = ExportOrder.parse(order)
    except ValueError as exc:
        raise BatchdError(grpc.StatusCode.INVALID_ARGUMENT, f"order: {exc}") from None
    return batch_service_pb2.ExportBatchResultsRequest(
        batch_id=batch_id, order=batch_service_pb2.ExportOrder.ValueType(parsed), after=after
    )


def _seconds(value: float | timedelta) -> duration_pb2.Duration:
    d = duration_pb2.Duration()
    d.FromTimedelta(value if isinstance(value, timedelta) else timedelta(seconds=value))
    return d


def watch_request(
    batch_id: str,
    min_interval: float | timedelta | None,
    heartbeat_interval: float | timedelta | None,
) -> batch_service_pb2.WatchProgressRequest:
    return batch_service_pb2.WatchProgressRequest(
        batch_id=batch_id,
        min_interval=None if min_interval is None else _seconds(min_interval),
        heartbeat_interval=None if heartbeat_interval is None else _seconds(heartbeat_interval),
    )


def update_request(
    batch_id: str,
    *,
    priority: int | None,
    max_per_second: float | None,
    burst: int | None,
    max_concurrent: int | None,
) -> batch_service_pb2.UpdateBatchRequest:
    """An UpdateBatchRequest setting the options given (not None), and only those."""
    values = {
        "priority": priority,
        "max_per_second": max_per_second,
        "burst": burst,
        "max_concurrent": max_concurrent,
    }
    given = {name: value for name, value in values.items() if value is not None}
    request = batch_service_pb2.UpdateBatchRequest(batch_id=batch_id)
    for name, value in given.items():
        setattr(request.options, name, value)
    request.update_mask.paths.extend(given)
    return request
