"""The handler API: what a user writes to run the items of a batch.

A handler is a `Handler` value: a name, a description, a JSON Schema for its params,
default batch options and an async `run(params, ctx)` that returns the item's output (a
JSON object). Optional `startup`/`shutdown` hooks open and close resources shared by every
item a worker process runs, such as a connection pool. The `handler` decorator makes one
from an async function, its hooks added with `on_startup` / `on_shutdown`:

    @handler("greet.send", params_schema=SCHEMA, default_options=OPTIONS)
    async def greet_send(params: dict[str, Any], ctx: ItemContext) -> dict[str, Any]:
        ...  # its docstring is the handler's description

    @greet_send.on_startup
    async def open_pool(worker: WorkerInfo) -> None: ...

What `run` raises decides the item's fate:

    Exception
    └── HandlerError        carries a google.rpc code and a message
        ├── PermanentError  the item fails now; never retried
        └── RetryableError  the attempt failed; the item may be retried (after retry_after)
            └── SlowDown    the same, and the downstream is overloaded (HTTP 429, 503):
                            the batch's (or its key's) start rate drops for every worker

Any other exception fails the item with code UNKNOWN and the exception's message; the
traceback goes to the worker's log, never into the stored error.

A handler for a downstream with a bulk API (a bulk insert, a batch endpoint) may also
take items in blocks: `run_many(items)` gets a list of `(params, ctx)` pairs and returns
one outcome per item, in order — the item's output, or the exception its `run` would
have raised (returned, not raised: it fails that item only). An exception `run_many`
raises fails every item of the block. `bulk_handler` makes one from such a function;
the batch option `block_size` (default: the handler's) says how many items a call takes.
"""

from __future__ import annotations

import enum
import inspect
import re
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

import aiohttp
import structlog

from batchd.core.config import Settings
from batchd.core.domain import MAX_BLOCK_SIZE, BatchOptions, tenant_of
from batchd.worker.egress import egress_session

if TYPE_CHECKING:
    from batchd.core.otel import Tracing

__all__ = [
    "BlockOutcome",
    "Code",
    "Handler",
    "HandlerError",
    "ItemContext",
    "PermanentError",
    "RateKey",
    "RetryableError",
    "RunItem",
    "RunMany",
    "ShutdownHook",
    "SlowDown",
    "StartupHook",
    "WorkerInfo",
    "bulk_handler",
    "handler",
]

# A handler name: what batches refer to, e.g. "http.request".
_NAME = re.compile(r"^[a-z][a-z0-9_]*(\.[a-z0-9_]+)*$")


class Code(enum.IntEnum):
    """The google.rpc.Code values a handler may fail an item with (a plain int works too)."""

    CANCELLED = 1
    UNKNOWN = 2
    INVALID_ARGUMENT = 3
    DEADLINE_EXCEEDED = 4
    NOT_FOUND = 5
    ALREADY_EXISTS = 6
    PERMISSION_DENIED = 7
    RESOURCE_EXHAUSTED = 8
    FAILED_PRECONDITION = 9
    ABORTED = 10
    OUT_OF_RANGE = 11
    UNIMPLEMENTED = 12
    INTERNAL = 13
    UNAVAILABLE = 14
    DATA_LOSS = 15
    UNAUTHENTICATED = 16


class HandlerError(Exception):
    """An item failure the handler chose: a google.rpc code and a message for the caller."""

    default_code: int = Code.UNKNOWN

    def __init__(self, message: str, *, code: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.code = int(self.default_code if code is None else code)


class PermanentError(HandlerError):
    """Retrying cannot help (bad input, not found, forbidden): the item fails now."""

    default_code = Code.FAILED_PRECONDITION


class RetryableError(HandlerError):
    """This attempt failed but another may succeed; `retry_after` (seconds) is a hint."""

    default_code = Code.UNAVAILABLE

    def __init__(
        self, message: str, *, code: int | None = None, retry_after: float | None = None
    ) -> None:
        super().__init__(message, code=code)
        self.retry_after = retry_after


class SlowDown(RetryableError):
    """The downstream asks to slow down (HTTP 429 or 503, a quota error): a retryable
    failure that also cuts the start rate of the batch — of its rate-limit key, when it
    has one — for every worker (adaptive back-off: docs/design.md, "Flow control")."""

    default_code = Code.RESOURCE_EXHAUSTED


class ItemContext:
    """What a handler knows about the item it runs, besides its params.

    `batch_id` (as stored: `<tenant>~<id>` for a tenant's batch), `custom_id`, `tenant`,
    `attempt` (1 for the first) and `logger`, read-only. A plain class with slots rather
    than a frozen dataclass, and its logger bound only when a handler first uses it: a
    worker makes one per item, and most handlers never log.
    """

    __slots__ = ("_attempt", "_batch_id", "_custom_id", "_logger", "_parent_logger")

    def __init__(
        self,
        batch_id: str,
        custom_id: str,
        attempt: int,
        logger: structlog.typing.FilteringBoundLogger,
    ) -> None:
        """`logger`: the batch's, bound with `custom_id` when a handler first reads it."""
        self._batch_id = batch_id
        self._custom_id = custom_id
        self._attempt = attempt
        self._logger: structlog.typing.FilteringBoundLogger | None = None
        self._parent_logger = logger

    @property
    def batch_id(self) -> str:
        return self._batch_id

    @property
    def custom_id(self) -> str:
        return self._custom_id

    @property
    def tenant(self) -> str:
        """The tenant whose batch this is (`DEFAULT_TENANT` without tenancy): a handler
        that reaches shared resources keeps each tenant to its own."""
        return tenant_of(self._batch_id)

    @property
    def attempt(self) -> int:
        return self._attempt

    @property
    def logger(self) -> structlog.typing.FilteringBoundLogger:
        """Bound with batch_id and custom_id. Never log params or outputs with it."""
        if self._logger is None:
            self._logger = self._parent_logger.bind(custom_id=self._custom_id)
        return self._logger

    @property
    def idempotency_key(self) -> str:
        """Stable across attempts and workers: pass it on to APIs that deduplicate."""
        return f"{self._batch_id}/{self._custom_id}"

    def __repr__(self) -> str:
        return (
            f"ItemContext(batch_id={self._batch_id!r}, custom_id={self._custom_id!r}, "
            f"attempt={self._attempt})"
        )


@dataclass(frozen=True)
class WorkerInfo:
    """What a startup hook learns about the worker process it runs in."""

    worker_id: str
    concurrency: int  # items in flight at most in this process: size pools to it
    # The worker's settings: a handler reads its own with `settings.section(cls)`, cls
    # the dataclass it names as `Handler.settings` (batchd.core.config).
    settings: Settings = field(default_factory=Settings, compare=False)
    # The worker's tracing when it traces (the OTEL_* variables; docs/operations.md,
    # "Traces"), else None: `tracing.provider` is its TracerProvider, and
    # `tracing.client_trace_configs()` makes an aiohttp session's requests spans of the
    # item that makes them.
    tracing: Tracing | None = field(default=None, compare=False)

    def egress_session(self, *, headers: Mapping[str, str]) -> aiohttp.ClientSession:
        """An aiohttp session for a handler's requests on an item's behalf: every
        connection through the egress guard (batchd.worker.egress), as many at once as
        items in flight, each request a span of its item when the worker traces."""
        return egress_session(
            self.settings,
            limit=max(self.concurrency, 1),
            headers=headers,
            trace_configs=self.tracing.client_trace_configs() if self.tracing else (),
        )


class RunItem(Protocol):
    """Runs one item: returns its output, a JSON object (or raises, see HandlerError)."""

    def __call__(
        self, params: dict[str, Any], ctx: ItemContext, /
    ) -> Awaitable[Mapping[str, Any]]: ...


# One item's outcome from `run_many`: its output, or the exception that fails it.
BlockOutcome = Mapping[str, Any] | BaseException


class RunMany(Protocol):
    """Runs a block of items, `(params, ctx)` pairs: returns one outcome per item, in
    order (its output, or an exception such as `RetryableError` for that item alone)."""

    def __call__(
        self, items: Sequence[tuple[dict[str, Any], ItemContext]], /
    ) -> Awaitable[Sequence[BlockOutcome]]: ...


class RateKey(Protocol):
    """The rate-limit key of an item, from its params (None: none), for batches that name
    no rate_limit_key: its starts share that key's adaptive back-off with every batch
    using it. `http.request` keys by destination, `host:<host>:<port>`."""

    def __call__(self, params: Mapping[str, Any], /) -> str | None: ...


class StartupHook(Protocol):
    """Opens what the handler shares across items, once per worker process."""

    def __call__(self, worker: WorkerInfo, /) -> Awaitable[None]: ...


class ShutdownHook(Protocol):
    """Closes what the startup hook opened, after the last item."""

    def __call__(self) -> Awaitable[None]: ...


_Startup = TypeVar("_Startup", bound=StartupHook)
_Shutdown = TypeVar("_Shutdown", bound=ShutdownHook)


@dataclass(frozen=True, kw_only=True)
class Handler:
    """A named piece of work a worker serves; see the module docstring."""

    name: str
    run: RunItem = field(compare=False)
    description: str = ""
    # JSON Schema every item's params must satisfy; the server checks it at submit time.
    params_schema: Mapping[str, Any] = field(default_factory=lambda: {"type": "object"})
    default_options: BatchOptions = field(default_factory=BatchOptions)
    startup: StartupHook | None = field(default=None, compare=False)
    shutdown: ShutdownHook | None = field(default=None, compare=False)
    rate_key: RateKey | None = field(default=None, compare=False)
    # The handler's own settings: a frozen dataclass of `batchd.core.config.setting`
    # fields. A worker serving the handler takes each as a flag and a BATCHD_* variable;
    # the startup hook reads them with `worker.settings.section(<that dataclass>)`.
    settings: type[Any] | None = field(default=None, compare=False)
    # Runs items in blocks (see the module docstring); `default_options.block_size` is
    # its default block size (1 when left 0). None: one item per call, always.
    run_many: RunMany | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        if not _NAME.match(self.name):
            raise ValueError(
                f"handler name {self.name!r}: lowercase words of [a-z0-9_] joined by dots"
            )
        if self.run_many is None and self.default_options.block_size > 1:
            raise ValueError(f"handler {self.name!r}: a block_size above 1 needs run_many")
        if self.run_many is not None and not inspect.iscoroutinefunction(self.run_many):
            raise TypeError(f"handler {self.name!r}: run_many must be an async def")

    @property
    def block_size(self) -> int:
        """Its default items per call: 0 without run_many, else 1 or more."""
        if self.run_many is None:
            return 0
        return max(self.default_options.block_size, 1)

    def on_startup(self, hook: _Startup) -> _Startup:
        """Decorator: `hook` becomes this handler's startup hook (one per handler)."""
        self._add_hook("startup", hook)
        return hook

    def on_shutdown(self, hook: _Shutdown) -> _Shutdown:
        """Decorator: `hook` becomes this handler's shutdown hook (one per handler)."""
        self._add_hook("shutdown", hook)
        return hook

    def _add_hook(self, kind: str, hook: Callable[..., Awaitable[None]]) -> None:
        # Hooks are added where the handler is defined, at import, before any worker
        # holds it: the one assignment a frozen Handler allows after construction.
        if not inspect.iscoroutinefunction(hook):
            raise TypeError(f"handler {self.name!r}: the {kind} hook must be an async def")
        if getattr(self, kind) is not None:
            raise ValueError(f"handler {self.name!r} already has a {kind} hook")
        object.__setattr__(self, kind, hook)


def handler(
    name: str,
    *,
    description: str | None = None,
    params_schema: Mapping[str, Any] | type[Any] | None = None,
    default_options: BatchOptions | None = None,
    rate_key: RateKey | None = None,
    settings: type[Any] | None = None,
) -> Callable[[RunItem], Handler]:
    """Decorator: the async function `run(params, ctx)` becomes a `Handler` of that name.

    The description defaults to the function's docstring (its first paragraph); the other
    arguments are `Handler`'s, but `params_schema` may also be a TypedDict, dataclass or
    pydantic model, whose JSON Schema (`schema_of`) the server then checks params against.
    Add hooks with `@<handler>.on_startup` and `.on_shutdown`.
    The result is the `Handler` itself: name it in an entry point or `--handlers`, pass it
    to `batchd.testing`; its function is `.run`.
    """

    def define(run: RunItem) -> Handler:
        if not inspect.iscoroutinefunction(run):
            raise TypeError(f"handler {name!r}: run must be an async def, got {run!r}")
        return Handler(
            name=name,
            run=run,
            description=_summary(run) if description is None else description,
            params_schema=_params_schema(params_schema),
            default_options=BatchOptions() if default_options is None else default_options,
            rate_key=rate_key,
            settings=settings,
        )

    return define


def bulk_handler(
    name: str,
    *,
    block_size: int,
    description: str | None = None,
    params_schema: Mapping[str, Any] | type[Any] | None = None,
    default_options: BatchOptions | None = None,
    rate_key: RateKey | None = None,
    settings: type[Any] | None = None,
) -> Callable[[RunMany], Handler]:
    """Decorator: the async function `run_many(items)` becomes a `Handler` that takes
    items in blocks of `block_size` by default (a batch's `block_size` option overrides
    it). Its `run` calls `run_many` with one item. The other arguments are `handler`'s."""
    if not 1 <= block_size <= MAX_BLOCK_SIZE:
        raise ValueError(f"handler {name!r}: block_size must be 1 to {MAX_BLOCK_SIZE}")

    def define(run_many: RunMany) -> Handler:
        if not inspect.iscoroutinefunction(run_many):
            raise TypeError(f"handler {name!r}: run_many must be an async def, got {run_many!r}")

        async def run(params: dict[str, Any], ctx: ItemContext) -> Mapping[str, Any]:
            (outcome,) = await run_many([(params, ctx)])
            if isinstance(outcome, BaseException):
                raise outcome
            return outcome

        options = BatchOptions() if default_options is None else default_options
        return Handler(
            name=name,
            run=run,
            run_many=run_many,
            description=_summary(run_many) if description is None else description,
            params_schema=_params_schema(params_schema),
            default_options=replace(options, block_size=block_size),
            rate_key=rate_key,
            settings=settings,
        )

    return define


def schema_of(params: type[Any]) -> dict[str, Any]:
    """The JSON Schema of a TypedDict, dataclass or pydantic model, as pydantic writes it
    (nested types under `$defs`). Needs pydantic: `pip install 'batchd[schema]'`."""
    try:
        from pydantic import TypeAdapter
    except ImportError:
        raise ImportError(
            "a params_schema from a type needs pydantic: pip install 'batchd[schema]'"
        ) from None
    schema: dict[str, Any] = TypeAdapter(params).json_schema()
    return schema


def _params_schema(given: Mapping[str, Any] | type[Any] | None) -> Mapping[str, Any]:
    if given is None:
        return {"type": "object"}
    if isinstance(given, type):
        return schema_of(given)
    return given


def _summary(function: object) -> str:
    """The first paragraph of a docstring, on one line ("" without one)."""
    doc = inspect.getdoc(function) or ""
    return " ".join(doc.split("\n\n", 1)[0].split())
