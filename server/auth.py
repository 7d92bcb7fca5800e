"""Authentication, authorization and audit of every BatchService call, in one interceptor.

For each call the interceptor reads the `authorization: Bearer <token>` metadata and the
peer's certificate identity, and asks the configured authenticators
(batchd.server.authenticators) in order. None accepts: UNAUTHENTICATED, with one message
whatever was wrong. The principal's role is below the method's (principal.METHOD_ROLES):
PERMISSION_DENIED naming the role needed. Otherwise the handler runs with the principal
set (principal.use) and the call is audited: one `audit` event per mutating call at info,
reads at debug. The health service is never intercepted; reflection is when
`--reflection on` and authentication is on. See README.md, "Security".
"""

from __future__ import annotations

import asyncio
import inspect
import ipaddress
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any

import grpc
import structlog

from batchd.core.config import SettingError, Settings
from batchd.core.logs import get_logger
from batchd.server.authenticators import parse_modes, peer_identity
from batchd.server.interception import Behaviour, Handler, WrappedHandlers, rewrap
from batchd.server.principal import (
    METHOD_ROLES,
    Authenticator,
    Credentials,
    Principal,
    Role,
    use,
)

__all__ = [
    "REFLECTION_MODES",
    "UNAUTHENTICATED_MESSAGE",
    "AuthInterceptor",
    "exposure_problem",
    "is_loopback",
    "startup_notice",
]

log = get_logger(__name__)

BATCH_SERVICE = "batchd.v1.BatchService"
REFLECTION_SERVICES = (
    "grpc.reflection.v1alpha.ServerReflection",
    "grpc.reflection.v1.ServerReflection",
)
REFLECTION_MODES = ("on", "open", "off")
# The one answer to a call without acceptable credentials: it says nothing of what was
# wrong (absent, malformed, unknown, revoked), so that it tells an attacker nothing.
UNAUTHENTICATED_MESSAGE = "the service did not accept the credentials"
# The calls that change something: audited at info, the others at debug.
MUTATING = frozenset(
    {
        "SubmitBatch",
        "UploadBatch",
        "RetryBatchItems",
        "CancelBatch",
        "PauseBatch",
        "ResumeBatch",
        "UpdateBatch",
        "DeleteBatch",
    }
)
_BEARER = "bearer "


class AuthInterceptor(grpc.aio.ServerInterceptor):
    """Authenticates, authorizes and audits BatchService calls (and reflection's, when
    `guard_reflection`)."""

    def __init__(
        self, authenticators: Sequence[Authenticator], *, guard_reflection: bool = True
    ) -> None:
        self.authenticators = tuple(authenticators)
        self.guard_reflection = guard_reflection
        self._wrapped = WrappedHandlers()

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Handler | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Handler:
        handler = await continuation(handler_call_details)
        service, _, method = handler_call_details.method.lstrip("/").partition("/")
        if handler is None:  # no such method: grpc answers UNIMPLEMENTED
            return handler  # type: ignore[return-value]
        if service == BATCH_SERVICE:
            # A method without a role of its own is for admins: new calls start closed.
            needed = METHOD_ROLES.get(method, Role.ADMIN)
        elif service in REFLECTION_SERVICES and self.guard_reflection:
            needed = Role.READER
        else:
            return handler
        return self._wrapped.of(
            handler_call_details.method,
            handler,
            lambda h: rewrap(h, lambda b: self._guarded(b, needed, _Audit(method))),
        )

    async def admit(self, context: grpc.aio.ServicerContext[Any, Any], needed: Role) -> Principal:
        """The caller's principal if it may make a call that needs `needed`; else ends
        the call with UNAUTHENTICATED or PERMISSION_DENIED."""
        credentials = Credentials(bearer_token(context), peer_identity(context))
        for authenticator in self.authenticators:
            principal = await authenticator.authenticate(credentials)
            if principal is not None:
                break
        else:
            log.info("unauthenticated", peer=context.peer())
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, UNAUTHENTICATED_MESSAGE)
        structlog.contextvars.bind_contextvars(principal=principal.subject, tenant=principal.tenant)
        if not principal.may(needed):
            log.info("permission_denied", role=principal.role.name.lower())
            await context.abort(
                grpc.StatusCode.PERMISSION_DENIED,
                f"this call needs the {needed.name.lower()} role; "
                f"the caller has {principal.role.name.lower()}",
            )
        return principal

    def _guarded(self, behaviour: Behaviour, needed: Role, audit: _Audit) -> Behaviour:
        """`behaviour` behind `admit`, audited; an async generator if it is one (a
        streaming response as grpc.aio calls it), else a coroutine function."""
        if inspect.isasyncgenfunction(behaviour):

            async def stream(request: Any, context: Any) -> AsyncIterator[Any]:
                principal = await self.admit(context, needed)
                use(principal)
                try:
                    async for response in behaviour(request, context):
                        yield response
                except BaseException as exc:
                    audit.log(principal, context, exc, request=request)
                    raise
                audit.log(principal, context, request=request)

            return stream

        async def unary(request: Any, context: Any) -> Any:
            principal = await self.admit(context, needed)
            use(principal)
            try:
                response = await behaviour(request, context)
            except BaseException as exc:
                audit.log(principal, context, exc, request=request)
                raise
            audit.log(principal, context, request=request, response=response)
            return response

        return unary


class _Audit:
    """The audit event of one call of `method`: who, which batch, and the outcome."""

    def __init__(self, method: str) -> None:
        self.method = method
        self.mutating = method in MUTATING

    def log(
        self,
        principal: Principal,
        context: grpc.aio.ServicerContext[Any, Any],
        exc: BaseException | None = None,
        *,
        request: Any = None,
        response: Any = None,
    ) -> None:
        if exc is None:
            code = "OK"
        elif isinstance(exc, grpc.aio.AbortError):
            code = _code_name(context)
        elif isinstance(exc, GeneratorExit | asyncio.CancelledError):
            code = "CANCELLED"
        else:
            code = "UNKNOWN"
        emit = log.info if self.mutating else log.debug
        emit(
            "audit",
            principal=principal.subject,
            tenant=principal.tenant,
            role=principal.role.name.lower(),
            method=self.method,
            batch_id=_batch_id(response) or _batch_id(request) or "",
            code=code,
        )


def _code_name(context: grpc.aio.ServicerContext[Any, Any]) -> str:
    code = context.code()
    return code.name if isinstance(code, grpc.StatusCode) else "UNKNOWN"


def _batch_id(message: Any) -> str | None:
    """The batch a request or response names (`batch_id`, or `batch.batch_id`)."""
    if message is None:
        return None
    batch_id = getattr(message, "batch_id", None)
    if isinstance(batch_id, str) and batch_id:
        return batch_id
    batch = getattr(message, "batch", None)
    return getattr(batch, "batch_id", None) if batch is not None else None


def bearer_token(context: grpc.aio.ServicerContext[Any, Any]) -> str | None:
    """The token of the call's `authorization: Bearer <token>` metadata, if any."""
    for key, value in context.invocation_metadata() or ():
        if key == "authorization" and isinstance(value, str):
            if value[: len(_BEARER)].lower() == _BEARER:
                return value[len(_BEARER) :].strip() or None
            return None
    return None


def is_loopback(host: str) -> bool:
    """Whether `host` (a --host value) is reachable from this machine only."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a name, or "" (every address)


def exposure_problem(settings: Settings) -> str | None:
    """Why `settings` must not start a server (auth off on a non-loopback address, or a
    bad --auth / --reflection), or None. Off on the network is allowed with --insecure,
    with a warning."""
    modes = parse_modes(settings.auth)
    if settings.reflection not in REFLECTION_MODES:
        raise SettingError(
            f"--reflection {settings.reflection!r}: one of {', '.join(REFLECTION_MODES)}"
        )
    if modes or is_loopback(settings.host) or settings.insecure:
        return None
    return (
        f"refusing to serve {settings.host} without authentication: anyone who reaches "
        "the port could read, change and delete every batch. Turn authentication on with "
        "--auth tokens|jwt|mtls (BATCHD_AUTH), listen on 127.0.0.1, or pass --insecure "
        "(BATCHD_INSECURE=1) to serve it unauthenticated anyway"
    )


def startup_notice(settings: Settings, port: int) -> str | None:
    """The line a server started without authentication says about it, or None."""
    if parse_modes(settings.auth):
        return None
    where = f"{settings.host}:{port}"
    if is_loopback(settings.host):
        return (
            f"batchd: listening on {where} with authentication off (--auth none): "
            "any process on this machine may call it"
        )
    return (
        f"batchd: WARNING: listening on {where} with authentication off (--insecure): "
        "anyone who reaches the port may read, change and delete every batch"
    )
