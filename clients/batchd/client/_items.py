"""Items: what callers pass, how they become `batchd.v1.Item`s and upload messages.

An item may be
- a mapping `{"custom_id": "a", "params": {...}}` (params optional),
- a tuple `("a", {...})`,
- a generated `batchd.v1.Item`, sent as it is.

Params are a JSON object given as a mapping, or as `bytes` already holding its
UTF-8 JSON (passed through untouched). By default they travel as `params_json`,
compact JSON bytes, which spares both ends a Struct conversion; `params_struct=True`
sends a `google.protobuf.Struct` instead (ints then become doubles, as in any Struct).

The service reads messages of at most `MAX_REQUEST_BYTES`; an item larger than
`MAX_ITEM_BYTES` encoded, or params (given as a mapping) nested deeper than
`MAX_PARAMS_DEPTH`, is refused here, naming it, before anything is sent.
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
    "MAX_ITEM_BYTES",
    "MAX_PARAMS_DEPTH",
    "MAX_REQUEST_BYTES",
    "ItemLike",
    "Params",
    "UploadPacker",
    "aiter_upload_requests",
    "check_item_size",
    "iter_upload_requests",
    "to_item",
]

Params: TypeAlias = Mapping[str, Any] | bytes
"""An item's params: a JSON object as a mapping, or its UTF-8 JSON encoding."""

ItemLike: TypeAlias = Mapping[str, Any] | tuple[str, Params | None] | batch_pb2.Item
"""Anything `submit()` and `upload()` accept as an item."""

DEFAULT_ITEMS_PER_MESSAGE = 1000
# An upload that starts early sends its first items in a message of a chunk's worth (the
# service's default chunk size): they start running while the client packs the rest.
FIRST_EARLY_MESSAGE_ITEMS = 100
# Servers accept 4 MiB messages by default; stay well below, whatever the item count.
DEFAULT_MAX_MESSAGE_BYTES = 1 << 20

MAX_REQUEST_BYTES = 4 * 1024 * 1024 + 64 * 1024
"""The largest message the service reads (its gRPC max receive message length): 4 MiB
of items and 64 KiB for the rest of a request."""
MAX_ITEM_BYTES = 4 * 1024 * 1024
"""The largest item, encoded (custom_id and params), that the client sends: one item
alone always fits in a message of either SubmitBatch or UploadBatch."""

MAX_PARAMS_DEPTH = 32
"""Levels of objects and arrays an item's params may nest: the service's default
(`max_params_depth`)."""

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
    if not custom_id.isascii():  # the service takes ASCII ids only; this keeps it to UTF-8
        try:
            custom_id.encode()
        except UnicodeEncodeError as exc:
            raise BatchdError.invalid_argument(_where(index, ".custom_id"), str(exc)) from None
    if params_struct:
        return custom_id, _struct(params, index)
    return custom_id, _json(params, index)


def _where(index: int, field: str = "") -> str:
    """The field an error names: built only for errors, never per item."""
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
        encoded = _JSON_ENCODER.encode(params).encode()
    except (TypeError, ValueError) as exc:  # UnicodeEncodeError (a lone surrogate) is one
        raise BatchdError.invalid_argument(_where(index, ".params"), f"not JSON: {exc}") from None
    except RecursionError:
        _check_depth(params, index)  # names the limit
        raise BatchdError.invalid_argument(_where(index, ".params"), _TOO_DEEP) from None
    # A text of n bytes nests at most n / 2 levels (each opens and closes): short
    # params, most of them, need no walk.
    if len(encoded) > 2 * MAX_PARAMS_DEPTH:
        _check_depth(params, index)
    return encoded


_TOO_DEEP = "nested too deeply to encode"


def _check_depth(params: Mapping[str, Any], index: int) -> None:
    """Refuses params nested deeper than MAX_PARAMS_DEPTH (without recursion)."""
    depth = 0
    level: list[Any] = [params]
    while level:
        containers = [v for v in level if isinstance(v, Mapping | list | tuple)]
        if not containers:
            return
        depth += 1
        if depth > MAX_PARAMS_DEPTH:
            raise BatchdError.invalid_argument(
                _where(index, ".params"),
                f"nested deeper than {MAX_PARAMS_DEPTH} levels of objects and arrays",
            )
        level = [
            child
            for container in containers
            for child in (container.values() if isinstance(container, Mapping) else container)
        ]


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
        except RecursionError:
            raise BatchdError.invalid_argument(_where(index, ".params"), _TOO_DEEP) from None
    struct = struct_pb2.Struct()
    if params is None:
        return struct
    if not isinstance(params, Mapping):
        raise BatchdError.invalid_argument(_where(index, ".params"), "must be a JSON object")
    _check_depth(params, index)
    try:
        struct.update(params)
    except (TypeError, ValueError, AttributeError) as exc:
        raise BatchdError.invalid_argument(_where(index, ".params"), f"not JSON: {exc}") from None
    except RecursionError:
        raise BatchdError.invalid_argument(_where(index, ".params"), _TOO_DEEP) from None
    return struct


def check_item_size(size: int, index: int, custom_id: str) -> None:
    """Raises `BatchdError` (INVALID_ARGUMENT) naming the item when `size`, its encoded
    size, is over `MAX_ITEM_BYTES`: the service would refuse its message whole."""
    if size > MAX_ITEM_BYTES:
        raise BatchdError.invalid_argument(
            _where(index),
            f"item {custom_id!r} is {size:,} bytes encoded, over the limit of "
            f"{MAX_ITEM_BYTES:,} bytes (4 MiB) per item",
        )


def _item_size(custom_id: str, params_size: int) -> int:
    """The encoded size of an Item of this custom_id and params (bytes or Struct)."""
    cid = len(custom_id) if custom_id.isascii() else len(custom_id.encode())
    size = params_size + (1 + _varint_size(params_size) if params_size else 0)
    return size + (1 + _varint_size(cid) + cid if cid else 0)


def _varint_size(value: int) -> int:
    return max(1, (value.bit_length() + 6) // 7)


class UploadPacker:
    """Packs items into `UploadBatchItems` messages of at most `items_per_message`
    items and (unless one item alone is larger) `max_message_bytes` bytes."""

    def __init__(
        self,
        *,
        items_per_message: int = DEFAULT_ITEMS_PER_MESSAGE,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        params_struct: bool = False,
        first_message_items: int | None = None,
    ) -> None:
        """`first_message_items`: fewer items in the first message (at most
        `items_per_message`), so that it goes out sooner."""
        if items_per_message < 1:
            raise ValueError("items_per_message must be at least 1")
        if first_message_items is None:
            first_message_items = items_per_message
        elif first_message_items < 1:
            raise ValueError("first_message_items must be at least 1")
        self._per_message_after = items_per_message
        self._per_message = min(first_message_items, items_per_message)
        self._max_bytes = max_message_bytes
        self._struct = params_struct
        self._new_message()
        self.count = 0
        """Items packed so far."""

    def add(self, item: ItemLike) -> batch_service_pb2.UploadBatchRequest | None:
        """Adds one item; returns a full message when there is one to send."""
        # Written straight into the message being filled: an Item built and then copied
        # in would be a second copy of every item.
        index = self.count
        self.count += 1
        if isinstance(item, batch_pb2.Item):
            custom_id, params = item.custom_id, None
            size = item.ByteSize()
        else:
            custom_id, params = _parts(item, index, self._struct)
            params_size = len(params) if isinstance(params, bytes) else params.ByteSize()
            # At least the encoded size: the two fields' tags and length prefixes
            # take at most 8 bytes.
            size = len(custom_id.encode()) + params_size + 8
            if size > MAX_ITEM_BYTES:
                size = _item_size(custom_id, params_size)
        if size > MAX_ITEM_BYTES:
            check_item_size(size, index, custom_id)
        size += 5  # the repeated field's tag and length prefix
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
        self._per_message = self._per_message_after
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
