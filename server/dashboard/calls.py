"""The dashboard's actions as BatchService calls made in-process: the same interceptor
(authentication, the role each method needs, the audit event) and the same servicer
method (validation, tenancy, the store's state rules) as a call over gRPC, with a
servicer context of our own in place of grpc's."""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Callable, Coroutine, Sequence
from typing import Any, NamedTuple

import grpc

from batchd.server.auth import AuthInterceptor
from batchd.server.principal import ANONYMOUS, Authenticator, use
from batchd.server.servicer import BatchServicer

__all__ = ["CallFailed", "LocalCalls"]

_SERVICE = "/batchd.v1.BatchService/"


class CallFailed(grpc.aio.AbortError):
    """A call ended with a status other than OK (grpc's own abort, so that the servicer's
    error translation passes it through as it does grpc's)."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(details)
        self.code = code
        self.details = details


class _Context:
    """What the interceptor and the servicer use of a grpc.aio.ServicerContext."""

    def __init__(self, credential: str | None, peer: str) -> None:
        self._metadata: tuple[tuple[str, str], ...] = (
            (("authorization", f"Bearer {credential}"),) if credential else ()
        )
        self._peer = peer
        self._code: grpc.StatusCode | None = None

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return self._metadata

    def auth_context(self) -> dict[str, list[bytes]]:
        return {}  # no transport security: never a client certificate

    def peer(self) -> str:
        return self._peer

    def code(self) -> grpc.StatusCode | None:
        return self._code

    async def abort(
        self, code: grpc.StatusCode, details: str = "", trailing_metadata: Any = ()
    ) -> None:
        self._code = code
        raise CallFailed(code, details)

    async def abort_with_status(self, status: grpc.Status) -> None:
        await self.abort(status.code, status.details)


class _Details(NamedTuple):
    method: str
    invocation_metadata: Sequence[tuple[str, str]]


class LocalCalls:
    """BatchService unary calls made in this process, as a caller holding `credential`
    (None with authentication off: every call is the anonymous admin's, as over gRPC)."""

    def __init__(self, servicer: BatchServicer, authenticators: Sequence[Authenticator]) -> None:
        self.servicer = servicer
        self.interceptor = AuthInterceptor(authenticators) if authenticators else None
        self._handlers: dict[str, grpc.RpcMethodHandler[Any, Any]] = {}

    async def call(self, method: str, request: Any, credential: str | None, peer: str) -> Any:
        """The response, or CallFailed with the status the call ended with."""
        context = _Context(credential, peer)
        behaviour = await self._behaviour(method, context)
        # A context of its own: the principal and log bindings stay with this call.
        scope = contextvars.copy_context()
        scope.run(use, ANONYMOUS)
        return await asyncio.create_task(behaviour(request, context), context=scope)

    async def _behaviour(
        self, method: str, context: _Context
    ) -> Callable[[Any, _Context], Coroutine[Any, Any, Any]]:
        if method not in self._handlers:
            servicer_method = getattr(self.servicer, method)
            self._handlers[method] = grpc.unary_unary_rpc_method_handler(servicer_method)
        handler = self._handlers[method]
        if self.interceptor is not None:
            servicer_handler = handler

            async def continuation(_: Any) -> grpc.RpcMethodHandler[Any, Any]:
                return servicer_handler

            details = _Details(_SERVICE + method, context.invocation_metadata())
            wrapped = await self.interceptor.intercept_service(continuation, details)  # type: ignore[arg-type]
            assert wrapped is not None
            handler = wrapped
        behaviour: Callable[[Any, _Context], Coroutine[Any, Any, Any]] = handler.unary_unary  # type: ignore[assignment]
        return behaviour
