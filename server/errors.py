"""Maps batchd's error tree to gRPC statuses with rich details (AIP-193), in one place.

Every servicer method is wrapped by `translate_errors`: a `BatchdError` becomes its
status code with google.rpc details (BadRequest field violations, RetryInfo); a Redis
outage becomes UNAVAILABLE, Redis refusing writes (batchd.core.redis_refusals)
RESOURCE_EXHAUSTED or UNAVAILABLE; anything else is logged and becomes a bare INTERNAL, so no
stack trace ever reaches a client.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar, cast

import grpc
import redis.exceptions
import structlog
from google.protobuf import any_pb2, duration_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from batchd.core.domain import TENANT_SEPARATOR
from batchd.core.errors import (
    AlreadyExists,
    BatchdError,
    Exhausted,
    FailedPrecondition,
    InvalidRequest,
    NotFound,
    Unavailable,
)
from batchd.core.logs import get_logger
from batchd.core.redis_refusals import redis_refusal
from batchd.server import principal
from batchd.server.decoding import Malformed

log = get_logger(__name__)

_CODES: dict[type[BatchdError], int] = {
    InvalidRequest: code_pb2.INVALID_ARGUMENT,
    NotFound: code_pb2.NOT_FOUND,
    AlreadyExists: code_pb2.ALREADY_EXISTS,
    FailedPrecondition: code_pb2.FAILED_PRECONDITION,
    Exhausted: code_pb2.RESOURCE_EXHAUSTED,
    Unavailable: code_pb2.UNAVAILABLE,
}

# Redis being down or slow is the caller's cue to retry, not a bug of ours.
_REDIS_OUTAGES = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError)


def to_status(error: BatchdError) -> grpc.Status:
    code = next((c for t, c in _CODES.items() if isinstance(error, t)), code_pb2.INTERNAL)
    details: list[Any] = []
    if isinstance(error, InvalidRequest) and error.violations:
        details.append(
            error_details_pb2.BadRequest(
                field_violations=[
                    error_details_pb2.BadRequest.FieldViolation(
                        field=v.field, description=v.description
                    )
                    for v in error.violations
                ]
            )
        )
    if isinstance(error, Exhausted):
        delay = duration_pb2.Duration()
        delay.FromNanoseconds(int(error.retry_after * 1e9))
        details.append(error_details_pb2.RetryInfo(retry_delay=delay))
        if error.quota_subject:
            details.append(
                error_details_pb2.QuotaFailure(
                    violations=[
                        error_details_pb2.QuotaFailure.Violation(
                            subject=error.quota_subject, description=error.quota_description
                        )
                    ]
                )
            )
    packed = []
    for detail in details:
        wrapper = any_pb2.Any()
        wrapper.Pack(detail)
        packed.append(wrapper)
    return rpc_status.to_status(status_pb2.Status(code=code, message=error.message, details=packed))


async def abort_for(exc: Exception, context: grpc.aio.ServicerContext[Any, Any]) -> None:
    """Ends the call with the status that `exc` stands for. Always raises."""
    refused = redis_refusal(exc)
    if refused is not None:
        log.warning("redis_refused_write", error=str(exc))
        exc = refused
    if isinstance(exc, BatchdError):
        # The store names a tenant's batch by its stored id: say the caller's own.
        own = f"{principal.current().tenant}{TENANT_SEPARATOR}"
        exc.message = exc.message.replace(f"'{own}", "'")
        status = to_status(exc)
        # What abort_with_status does, through abort: a context wrapper of an interceptor
        # (tracing's) sees the code.
        await context.abort(status.code, status.details, status.trailing_metadata)
    if isinstance(exc, _REDIS_OUTAGES):
        log.warning("redis_unavailable", error=str(exc))
        await context.abort(grpc.StatusCode.UNAVAILABLE, "the batch store is unavailable")
    log.exception("rpc_failed")
    await context.abort(grpc.StatusCode.INTERNAL, "internal error")


Method = TypeVar("Method", bound=Callable[..., Any])


def translate_errors(method: Method) -> Method:
    """Wraps a unary or streaming servicer method; binds `rpc` to the log context."""
    rpc = method.__name__

    if inspect.isasyncgenfunction(method):

        @functools.wraps(method)
        async def stream(self: Any, request: Any, context: Any) -> AsyncIterator[Any]:
            structlog.contextvars.bind_contextvars(rpc=rpc)
            try:
                if isinstance(request, Malformed):
                    raise request.error()
                async for response in method(self, request, context):
                    yield response
            except grpc.aio.AbortError:
                raise
            except Exception as exc:
                await abort_for(exc, context)

        return cast(Method, stream)

    @functools.wraps(method)
    async def unary(self: Any, request: Any, context: Any) -> Any:
        structlog.contextvars.bind_contextvars(rpc=rpc)
        try:
            if isinstance(request, Malformed):
                raise request.error()
            return await cast(Callable[..., Awaitable[Any]], method)(self, request, context)
        except grpc.aio.AbortError:
            raise
        except Exception as exc:
            await abort_for(exc, context)

    return cast(Method, unary)
