"""The server-wide cap on calls open at once (Settings.grpc_max_concurrent_calls).

An interceptor, outermost of all, counts the calls whose handler is running — unary,
streaming, authenticated or not — and refuses one beyond the cap with
RESOURCE_EXHAUSTED, a google.rpc.QuotaFailure naming the setting and a RetryInfo.
Health checks (`grpc.health.v1.Health/Check`, and the `Watch` stream each batchd client
holds per connection to balance over replicas) are never refused nor counted: a server at
its cap is busy, not sick, and neither an orchestrator nor a client must take it for gone.

grpc.aio.server's own `maximum_concurrent_rpcs` is not used: it answers a bare
"Concurrent RPC limit exceeded!" that names no setting, carries no details, and refuses
health checks like any other call.
"""

from __future__ import annotations

import inspect
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc

from batchd.core.errors import Exhausted
from batchd.core.logs import get_logger
from batchd.server.errors import to_status
from batchd.server.interception import Behaviour, Handler, WrappedHandlers, rewrap

__all__ = ["CALLS_RETRY_AFTER", "LIMIT_SETTING", "CallCapInterceptor"]

log = get_logger(__name__)

LIMIT_SETTING = "BATCHD_GRPC_MAX_CONCURRENT_CALLS"
# Seconds a refused caller is told to wait: calls end all the time, and a client may try
# another server sooner.
CALLS_RETRY_AFTER = 1.0
# Never refused: liveness and readiness probes, and clients' health watches.
EXEMPT = frozenset({"/grpc.health.v1.Health/Check", "/grpc.health.v1.Health/Watch"})
# Seconds between two warnings that calls are being refused.
_WARN_EVERY = 60.0


class CallCapInterceptor(grpc.aio.ServerInterceptor):
    """Refuses a call while `limit` calls are open on this server."""

    def __init__(self, limit: int) -> None:
        if limit <= 0:
            raise ValueError("limit: at least 1 (no interceptor at all for no limit)")
        self.limit = limit
        self.open = 0  # calls whose handler is running
        self._refused = 0  # since the last warning
        self._warned_at = -_WARN_EVERY  # time.monotonic()
        self._wrapped = WrappedHandlers()

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Handler | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Handler:
        handler = await continuation(handler_call_details)
        method = handler_call_details.method
        if handler is None or method in EXEMPT:
            return handler  # type: ignore[return-value]
        return self._wrapped.of(method, handler, lambda h: rewrap(h, self._counted))

    def _counted(self, behaviour: Behaviour) -> Behaviour:
        """`behaviour`, refused at the cap and counted while it runs; an async generator
        if it is one (a streaming response as grpc.aio calls it), else a coroutine."""
        if inspect.isasyncgenfunction(behaviour):

            async def stream(request: Any, context: Any) -> AsyncIterator[Any]:
                await self._admit(context)
                try:
                    async for response in behaviour(request, context):
                        yield response
                finally:
                    self.open -= 1

            return stream

        async def unary(request: Any, context: Any) -> Any:
            await self._admit(context)
            try:
                return await behaviour(request, context)
            finally:
                self.open -= 1

        return unary

    async def _admit(self, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        """Counts the call open, or ends it with RESOURCE_EXHAUSTED at the cap."""
        if self.open < self.limit:
            self.open += 1
            return
        self._refused += 1
        now = time.monotonic()
        if now - self._warned_at >= _WARN_EVERY:
            log.warning("calls_refused", limit=self.limit, refused=self._refused)
            self._warned_at, self._refused = now, 0
        refusal = Exhausted(
            f"the server has {self.open} calls open, its limit ({LIMIT_SETTING}); "
            "try again shortly, or another server",
            CALLS_RETRY_AFTER,
            quota_subject="grpc_max_concurrent_calls",
            quota_description=(
                f"calls open at once on one server: at most {self.limit} ({LIMIT_SETTING})"
            ),
        )
        await context.abort_with_status(to_status(refusal))
