"""What batchd's server interceptors share: a method handler rebuilt around a wrapped
behaviour, and the wrapper made once per method rather than once per call."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeAlias

import grpc

__all__ = ["Behaviour", "Handler", "WrappedHandlers", "rewrap"]

Behaviour = Callable[..., Any]
Handler: TypeAlias = "grpc.RpcMethodHandler[Any, Any]"


def rewrap(handler: Handler, wrap: Callable[[Behaviour], Behaviour]) -> Handler:
    """`handler` of the same kind and (de)serializers, its behaviour `wrap(behaviour)`."""
    kinds = (
        (handler.unary_unary, grpc.unary_unary_rpc_method_handler),
        (handler.unary_stream, grpc.unary_stream_rpc_method_handler),
        (handler.stream_unary, grpc.stream_unary_rpc_method_handler),
        (handler.stream_stream, grpc.stream_stream_rpc_method_handler),
    )
    behaviour, make = next((b, m) for b, m in kinds if b is not None)
    return make(
        wrap(behaviour),
        request_deserializer=handler.request_deserializer,
        response_serializer=handler.response_serializer,
    )


class WrappedHandlers:
    """Method -> (the handler grpc gave, its wrapper): grpc hands out the same handler
    object for a method at every call, so each is wrapped once."""

    def __init__(self) -> None:
        self._wrapped: dict[str, tuple[Handler, Handler]] = {}

    def of(self, method: str, handler: Handler, wrap: Callable[[Handler], Handler]) -> Handler:
        cached = self._wrapped.get(method)
        if cached is not None and cached[0] is handler:
            return cached[1]
        wrapped = wrap(handler)
        self._wrapped[method] = (handler, wrapped)
        return wrapped
