"""Items: what callers pass, how they become `batchd.v1.Item`s and upload messages.

An item may be
- a mapping `{"custom_id": "a", "params": {...}}` (params optional),
- a tuple `("a", {...})`,
- a generated `batchd.v1.Item`, sent as it is.

Params are a JSON object given as a mapping, or as `bytes` already holding its
UTF-8 JSON (passed through untouched). By default they travel as `params_json`,
compact JSON bytes, which spares both ends a Struct conversion; `params_struct=True`
sends a `google.protobuf.Struct` instead (ints then become doubles, as in any Struct).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterable, AsyncIterator, Iterable, Iterator, Mapping
from typing import Any, TypeAlias

from google.protobuf import struct_pb2

from batchd.client._errors import BatchdError
from batchd.v1 import batch_pb2, batch_service_pb2

__all__ = [
    "DEFAULT_ITEMS_PER_MESSAGE",
    "DEFAULT_MAX_MESSAGE_BYTES",
    "ItemLike",
    "Params",
    "UploadPacker",
    "aiter_upload_requests",
    "iter_upload_requests",
    "to_item",
]

Params: TypeAlias = Mapping[str, Any] | bytes
"""An item's params: a JSON object as a mapping, or its UTF-8 JSON encoding."""

ItemLike: TypeAlias = Mapping[str, Any] | tuple[str, Params | None] | batch_pb2.Item
"""Anything `submit()` and `upload()` accept as an item."""

DEFAULT_ITEMS_PER_MESSAGE = 1000
# Servers accept 4 MiB messages by default; stay well below, whatever the item count.
DEFAULT_MAX_MESSAGE_BYTES = 1 << 20

_ITEM_KEYS = frozenset({"custom_id", "params"})


def to_item(item: ItemLike, *, index: int = 0, params_struct: bool = False) -> batch_pb2.Item:
    """Converts one item; `index` (its position in the batch) only names it in errors.

    Raises `BatchdError` (INVALID_ARGUMENT) with a field violation such as
    `items[3].params` for an item the service would refuse anyway.
    """
    if isinstance(item, batch_pb2.Item):
        return item
    custom_id, params = _parts(item, index, params_struct)
    if isinstance(params, bytes):
        return batch_pb2.Item(custom_id=custom_id, params_json=params)
    return batch_pb2.Item(custom_id=custom_id, params=params)


def _parts(
    item: ItemLike, index: int, params_struct: bool
) -> tuple[str, bytes | struct_pb2.Struct]:
    """(custom_id, params as JSON bytes or a Struct) of an item that is not an Item."""
    value: object = item  # callers without a type checker pass anything
    custom_id: object
    params: object
    if isinstance(value, tuple):
        if len(value) != 2:
            raise BatchdError.invalid_argument(_where(index), "a tuple item is (custom_id, params)")
        custom_id, params = value
    elif isinstance(value, Mapping):
        unknown = set(value) - _ITEM_KEYS
        if unknown:
            raise BatchdError.invalid_argument(
                _where(index),
                f"unknown keys {sorted(map(str, unknown))}; expected custom_id, params",
            )
        if "custom_id" not in value:
            raise BatchdError.invalid_argument(_where(index, ".custom_id"), "missing")
        custom_id, params = value["custom_id"], value.get("params")
    else:
        expected = "a mapping, a (custom_id, params) tuple or an Item"
        raise BatchdError.invalid_argument(
            _where(index), f"expected {expected}, not {type(value).__name__}"
        )
    if not isinstance(custom_id, str):
        raise BatchdError.invalid_argument(_where(index, ".custom_id"), "must be a string")
    if params_struct:
        return custom_id, _struct(params, index)
    return custom_id, _json(params, index)


def _where(index: int, field: str = "") -> str:
    """The field an error names: built only for errors (per item, it showed in uploads)."""
    return f"items[{index}]{field}"


def _json(params: object, index: int) -> bytes:
    if type(params) is not dict:  # dicts first: the checks below cost more than the rest
        if isinstance(params, bytes | bytearray | memoryview):
            return bytes(params)
        if params is None:
            return b"{}"
        if not isinstance(params, Mapping):
            raise BatchdError.invalid_argument(_where(index, ".params"), "must be a JSON object")
        params = dict(params)
    if not params:
        return b"{}"
    try:
        text = _JSON_ENCODER.encode(params)
    except (TypeError, ValueError) as exc:
        raise BatchdError.invalid_argument(_where(index, ".params"), f"not JSON: {exc}") from None
    return text.encode()


# json.dumps with options builds an encoder per call: one, made once.
_JSON_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def _struct(params: object, index: int) -> struct_pb2.Struct:
    if isinstance(params, bytes | bytearray | memoryview):
        try:
            params = json.loads(bytes(params))
        except ValueError as exc:
            raise BatchdError.invalid_argument(
                _where(index, ".params"), f"not JSON: {exc}"
            ) from None
    struct = struct_pb2.Struct()
    if params is None:
        return struct
    if not isinstance(params, Mapping):
        raise BatchdError.invalid_argument(_where(index, ".params"), "must be a JSON object")
    try:
        struct.update(params)
    except (TypeError, ValueError, AttributeError) as exc:
        raise BatchdError.invalid_argument(_where(index, ".params"), f"not JSON: {exc}") from None
    return struct


class UploadPacker:
    """Packs items into `UploadBatchItems` messages of at most `items_per_message`
    items and (unless one item alone is larger) `max_message_bytes` bytes."""

    def __init__(
        self,
        *,
        items_per_message: int = DEFAULT_ITEMS_PER_MESSAGE,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        params_struct: bool = False,
    ) -> None:
        if items_per_message < 1:
            raise ValueError("items_per_message must be at least 1")
        self._per_message = items_per_message
        self._max_bytes = max_message_bytes
        self._struct = params_struct
        self._new_message()
        self.count = 0
        """Items packed so far."""

    def add(self, item: ItemLike) -> batch_service_pb2.UploadBatchRequest | None:
        """Adds one item; returns a full message when there is one to send."""
        # Written straight into the message being filled: an Item built and then copied
        # in cost the client a fifth of an upload's time.
        index = self.count
        self.count += 1
        if isinstance(item, batch_pb2.Item):
            custom_id, params = item.custom_id, None
            size = item.ByteSize()
        else:
            custom_id, params = _parts(item, index, self._struct)
            params_size = len(params) if isinstance(params, bytes) else params.ByteSize()
            size = len(custom_id.encode()) + params_size
        size += 8  # tags, length prefixes and the repeated field's own: a few bytes
        full = None
        if self._count_pending and self._pending_bytes + size > self._max_bytes:
            full = self.flush()
        if params is None:
            self._items.append(item)  # type: ignore[arg-type]  # an Item, checked above
        elif isinstance(params, bytes):
            self._items.add(custom_id=custom_id, params_json=params)
        else:
            self._items.add(custom_id=custom_id, params=params)
        self._count_pending += 1
        self._pending_bytes += size
        if full is None and self._count_pending >= self._per_message:
            full = self.flush()
        return full

    def flush(self) -> batch_service_pb2.UploadBatchRequest | None:
        """Returns the items not sent yet as one message, or None if there are none."""
        if not self._count_pending:
            return None
        message = self._message
        self._new_message()
        return message

    def _new_message(self) -> None:
        self._message = batch_service_pb2.UploadBatchRequest()
        self._items = self._message.items.items
        self._count_pending = 0
        self._pending_bytes = 0


def iter_upload_requests(
    header: batch_service_pb2.UploadBatchHeader,
    items: Iterable[ItemLike],
    packer: UploadPacker,
) -> Iterator[batch_service_pb2.UploadBatchRequest]:
    """The messages of an UploadBatch stream, pulling items only as messages fill."""
    yield batch_service_pb2.UploadBatchRequest(header=header)
    for item in items:
        message = packer.add(item)
        if message is not None:
            yield message
    last = packer.flush()
    if last is not None:
        yield last
    yield _end(packer)


def _end(packer: UploadPacker) -> batch_service_pb2.UploadBatchRequest:
    # Only this message commits the batch: a stream that breaks off before it, even one
    # that looks cleanly closed to the server, leaves nothing behind.
    return batch_service_pb2.UploadBatchRequest(
        end=batch_service_pb2.UploadBatchEnd(item_count=packer.count)
    )


async def aiter_upload_requests(
    header: batch_service_pb2.UploadBatchHeader,
    items: Iterable[ItemLike] | AsyncIterable[ItemLike],
    packer: UploadPacker,
) -> AsyncIterator[batch_service_pb2.UploadBatchRequest]:
    """`iter_upload_requests` over a sync or an async iterable."""
    if not isinstance(items, AsyncIterable):
        for message in iter_upload_requests(header, items, packer):
            yield message
        return
    yield batch_service_pb2.UploadBatchRequest(header=header)
    async for item in items:
        full = packer.add(item)
        if full is not None:
            yield full
    last = packer.flush()
    if last is not None:
        yield last
    yield _end(packer)
