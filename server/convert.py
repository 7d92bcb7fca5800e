"""Conversions between batchd.v1 messages and the core's domain types."""

from __future__ import annotations

import json
from typing import Any

from google.protobuf import duration_pb2, struct_pb2, timestamp_pb2
from google.rpc import status_pb2

from batchd.core.domain import (
    BatchOptions,
    BatchRecord,
    HandlerStatus,
    ItemCounts,
    ItemView,
    RetryPolicy,
)
from batchd.core.events import BatchEvent
from batchd.server.progress import Snapshot
from batchd.v1 import batch_pb2, batch_service_pb2


def seconds(duration: duration_pb2.Duration) -> float:
    return duration.seconds + duration.nanos / 1e9


def duration(value: float) -> duration_pb2.Duration:
    message = duration_pb2.Duration()
    message.FromNanoseconds(int(value * 1e9))
    return message


def timestamp(value: float | None) -> timestamp_pb2.Timestamp | None:
    if value is None:
        return None
    message = timestamp_pb2.Timestamp()
    message.FromNanoseconds(int(value * 1e9))
    return message


def options_from_proto(message: batch_pb2.BatchOptions) -> BatchOptions:
    retry = message.retry_policy
    return BatchOptions(
        chunk_size=message.chunk_size,
        retry_policy=RetryPolicy(
            max_attempts=retry.max_attempts,
            min_backoff=seconds(retry.min_backoff),
            max_backoff=seconds(retry.max_backoff),
            max_doublings=retry.max_doublings,
        ),
        max_concurrent=message.max_concurrent,
        max_per_second=message.max_per_second,
        burst=message.burst,
        rate_limit_key=message.rate_limit_key,
        priority=message.priority,
        item_timeout=seconds(message.item_timeout),
        completion_window=seconds(message.completion_window),
        callback_url=message.completion_callback.url,
        block_size=message.block_size,
    )


def options_to_proto(options: BatchOptions) -> batch_pb2.BatchOptions:
    retry = options.retry_policy
    return batch_pb2.BatchOptions(
        chunk_size=options.chunk_size,
        retry_policy=batch_pb2.RetryPolicy(
            max_attempts=retry.max_attempts,
            min_backoff=duration(retry.min_backoff),
            max_backoff=duration(retry.max_backoff),
            max_doublings=retry.max_doublings,
        ),
        max_concurrent=options.max_concurrent,
        max_per_second=options.max_per_second,
        burst=options.burst,
        rate_limit_key=options.rate_limit_key,
        priority=options.priority,
        item_timeout=duration(options.item_timeout),
        completion_window=duration(options.completion_window),
        completion_callback=(
            batch_pb2.CompletionCallback(url=options.callback_url) if options.callback_url else None
        ),
        block_size=options.block_size,
    )


def counts_to_proto(counts: ItemCounts) -> batch_pb2.ItemCounts:
    return batch_pb2.ItemCounts(
        pending=counts.pending,
        running=counts.running,
        succeeded=counts.succeeded,
        failed=counts.failed,
        cancelled=counts.cancelled,
        expired=counts.expired,
        claimed=counts.claimed,
    )


def batch_to_proto(batch: BatchRecord) -> batch_pb2.Batch:
    return batch_pb2.Batch(
        batch_id=batch.batch_id,
        handler=batch.handler,
        state=int(batch.state),  # type: ignore[arg-type]  # domain enums mirror the proto numbers
        options=options_to_proto(batch.options),
        metadata=dict(batch.metadata),
        request_id=batch.request_id,
        total_items=batch.total_items,
        chunk_count=batch.chunk_count,
        counts=counts_to_proto(batch.counts),
        create_time=timestamp(batch.create_time),
        start_time=timestamp(batch.start_time),
        end_time=timestamp(batch.end_time),
        waiting_reason=batch.waiting_reason,
        scheduled_start_time=timestamp(batch.scheduled_start),
        uploading=batch.uploading,
    )


def progress_to_proto(snapshot: Snapshot, batch_id: str) -> batch_pb2.BatchProgress:
    """A WatchProgress update; `batch_id`: the id as the caller sees it."""
    batch = snapshot.batch
    progress = batch_pb2.BatchProgress(
        batch_id=batch_id,
        state=int(batch.state),  # type: ignore[arg-type]  # domain enums mirror the proto numbers
        total_items=batch.total_items,
        counts=counts_to_proto(batch.counts),
        items_per_second=snapshot.items_per_second,
        create_time=timestamp(batch.create_time),
        start_time=timestamp(batch.start_time),
        end_time=timestamp(batch.end_time),
        observe_time=timestamp(snapshot.observed_at),
        effective_rate=snapshot.effective_rate,
        waiting_reason=batch.waiting_reason,
        scheduled_start_time=timestamp(batch.scheduled_start),
        uploading=batch.uploading,
    )
    if snapshot.eta is not None:
        progress.eta.CopyFrom(duration(snapshot.eta))
    return progress


def event_to_proto(event: BatchEvent, batch_id: str) -> batch_service_pb2.BatchEvent:
    """A WatchBatches event; `batch_id`: the id as the caller sees it."""
    return batch_service_pb2.BatchEvent(
        cursor=event.cursor,
        type=int(event.type),  # type: ignore[arg-type]  # domain enums mirror the proto numbers
        event_time=timestamp(event.time),
        batch_id=batch_id,
        state=int(event.state),  # type: ignore[arg-type]
        handler=event.handler,
        metadata=dict(event.metadata),
        total_items=event.total_items,
        counts=counts_to_proto(event.counts),
    )


def item_to_proto(item: ItemView) -> batch_pb2.BatchItem:
    message = batch_pb2.BatchItem(
        custom_id=item.custom_id,
        index=item.index,
        state=int(item.state),  # type: ignore[arg-type]
        attempts=item.attempts,
        start_time=timestamp(item.start_time),
        end_time=timestamp(item.end_time),
        next_attempt_time=timestamp(item.next_attempt_time),
    )
    if item.output_json is not None:
        message.output.update(json.loads(item.output_json))
        message.output_json = item.output_json
    if item.error_code or item.error_message:
        message.error.CopyFrom(status_pb2.Status(code=item.error_code, message=item.error_message))
    return message


def handler_to_proto(status: HandlerStatus) -> batch_pb2.HandlerInfo:
    spec = status.spec
    schema = struct_pb2.Struct()
    schema.update(dict(spec.params_schema))
    return batch_pb2.HandlerInfo(
        name=spec.name,
        description=spec.description,
        params_schema=schema,
        default_options=options_to_proto(spec.default_options),
        live_workers=status.live_workers,
        last_seen_time=timestamp(status.last_seen),
    )


def struct_to_dict(struct: struct_pb2.Struct) -> dict[str, Any]:
    """A Struct as plain Python values (faster than json_format.MessageToDict)."""
    return {key: _value(struct.fields[key]) for key in struct.fields}


def _value(value: struct_pb2.Value) -> Any:
    kind = value.WhichOneof("kind")
    if kind == "struct_value":
        return struct_to_dict(value.struct_value)
    if kind == "list_value":
        return [_value(v) for v in value.list_value.values]
    if kind == "number_value":
        number = value.number_value
        # JSON has one number type; keep integers integral so schemas' "integer" holds.
        return int(number) if number.is_integer() and abs(number) < 2**53 else number
    if kind == "string_value":
        return value.string_value
    if kind == "bool_value":
        return value.bool_value
    return None
