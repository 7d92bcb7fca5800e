"""Decodes BatchService requests itself, so that a malformed one is INVALID_ARGUMENT.

grpc's generated handlers decode with `FromString`; a message protobuf refuses (params
nested past its depth limit of 100 messages, bytes that are no message at all) then
ends the call as UNKNOWN before the servicer runs. Here the deserializer catches the
DecodeError and hands the servicer a `Malformed` naming the field it found at fault;
the servicer answers it as INVALID_ARGUMENT (`translate_errors`, `UploadBatch`).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import grpc
from google.protobuf import descriptor, message, symbol_database

from batchd.core.errors import InvalidRequest
from batchd.v1 import batch_service_pb2

SERVICE = batch_service_pb2.DESCRIPTOR.services_by_name["BatchService"]
_BAD = "nested deeper than protobuf's limit, or not a valid protobuf message"
_UPLOAD_ITEM = re.compile(r"items\.items\[(\d+)\](.*)")


@dataclass(frozen=True)
class Malformed:
    """A request protobuf could not decode; `field` is where (empty: not found)."""

    type_name: str
    field: str

    def error(self, first_index: int = 0) -> InvalidRequest:
        """The refusal; an upload's item index counts from `first_index` on."""
        field = self.field
        if match := _UPLOAD_ITEM.fullmatch(field):
            field = f"items[{first_index + int(match[1])}]{match[2]}"
        if not field:
            return InvalidRequest(f"the request is not a valid {self.type_name}")
        return InvalidRequest.for_field(field, _BAD)


def add_servicer(
    servicer: Any, server: grpc.aio.Server, serialized: Mapping[str, Callable[..., Any]]
) -> None:
    """`add_BatchServiceServicer_to_server`, with deserializers that refuse cleanly.
    `serialized`: method name -> a behaviour answering it that yields responses already
    serialized (bytes), sent as they are, in place of the servicer's typed method."""
    handlers = {}
    for method in SERVICE.methods:
        request = _message_class(method.input_type)
        response = _message_class(method.output_type)
        kind = _HANDLER_KINDS[method.client_streaming, method.server_streaming]
        behaviour = serialized.get(method.name)
        handlers[method.name] = kind(
            getattr(servicer, method.name) if behaviour is None else behaviour,
            request_deserializer=deserializer(request),
            response_serializer=response.SerializeToString if behaviour is None else _as_is,
        )
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(SERVICE.full_name, handlers),)
    )
    server.add_registered_method_handlers(SERVICE.full_name, handlers)


def _as_is(data: bytes) -> bytes:
    return data


_HANDLER_KINDS: dict[tuple[bool, bool], Callable[..., grpc.RpcMethodHandler[Any, Any]]] = {
    (False, False): grpc.unary_unary_rpc_method_handler,
    (True, False): grpc.stream_unary_rpc_method_handler,
    (False, True): grpc.unary_stream_rpc_method_handler,
    (True, True): grpc.stream_stream_rpc_method_handler,
}


def deserializer(cls: type[message.Message]) -> Callable[[bytes], Any]:
    def decode(data: bytes) -> Any:
        try:
            return cls.FromString(data)
        except message.DecodeError:
            return Malformed(cls.DESCRIPTOR.name, locate(cls.DESCRIPTOR, data))

    return decode


def _message_class(desc: descriptor.Descriptor) -> type[message.Message]:
    cls: type[message.Message] = symbol_database.Default().GetSymbol(desc.full_name)
    return cls


def locate(
    desc: Any,
    data: bytes,
    path: str = "",
    wrap: Callable[[bytes], bytes] | None = None,
    top: type[message.Message] | None = None,
) -> str:
    """The path of the first field of `data` (a `desc` message) that fails to decode:
    descends through this service's messages, stops at google.protobuf's (a Struct).

    Each field is tried alone, inside the same outer messages (`wrap` puts it back in
    them), so that protobuf's depth limit counts as it did for the whole request."""
    top = top or _message_class(desc)
    wrap = wrap or (lambda field_bytes: field_bytes)
    counts: dict[int, int] = {}
    try:
        for number, value in _fields(data):
            field = desc.fields_by_number.get(number)
            if field is None or not isinstance(value, bytes):
                continue
            position = counts.get(number, 0)
            counts[number] = position + 1
            name = f"{path}.{field.name}" if path else field.name
            if field.is_repeated:
                name = f"{name}[{position}]"
            try:
                top.FromString(wrap(_field(number, value)))
                continue
            except message.DecodeError:
                pass
            sub = field.message_type
            if sub is None or sub.file.package == "google.protobuf":
                return name
            inner = functools.partial(_rewrap, wrap, number)
            return locate(sub, value, name, inner, top) or name
    except ValueError:  # truncated or garbled: whatever was read so far decoded
        return path
    return path


def _rewrap(wrap: Callable[[bytes], bytes], number: int, field_bytes: bytes) -> bytes:
    return wrap(_field(number, field_bytes))


def _field(number: int, value: bytes) -> bytes:
    """A length-delimited field on the wire."""
    return _to_varint(number << 3 | 2) + _to_varint(len(value)) + value


def _to_varint(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _fields(data: bytes) -> Iterator[tuple[int, bytes | int]]:
    """(field number, value) of each field on the wire; length-delimited values as bytes."""
    position, end = 0, len(data)
    while position < end:
        key, position = _varint(data, position)
        number, wire_type = key >> 3, key & 7
        if wire_type == 0:
            value, position = _varint(data, position)
            yield number, value
        elif wire_type in (1, 5):
            position += 8 if wire_type == 1 else 4
            yield number, 0
        elif wire_type == 2:
            length, position = _varint(data, position)
            if position + length > end:
                raise ValueError("truncated")
            yield number, data[position : position + length]
            position += length
        else:
            raise ValueError(f"wire type {wire_type}")


def _varint(data: bytes, position: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if position >= len(data) or shift > 63:
            raise ValueError("bad varint")
        byte = data[position]
        position += 1
        result |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return result, position
