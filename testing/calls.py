"""One item through a handler in this process, and the server's check of its params.

    call_handler(handler, params)       startup hook, one `run` with a real ItemContext,
                                        shutdown hook; returns the output or raises
    open_handler(handler)               the same, the hooks run once around many calls
    check_params(handler, params)       the JSON Schema check the server applies at
                                        submit time; raises InvalidRequest
    params_violations(handler, params)  the same check, returning the field violations

What `call_handler` raises is what the worker would turn into the item's outcome:
`PermanentError` fails the item, `RetryableError` (or `SlowDown`) asks for another
attempt, anything else fails it with UNKNOWN. An output that is not a JSON object, which
the worker would fail with INTERNAL, raises `InvalidOutput`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from batchd.client import BatchdError, to_item
from batchd.core import fastjson
from batchd.core.codec import decode_handler, encode_handler
from batchd.core.config import Settings
from batchd.core.errors import FieldViolation
from batchd.core.logs import get_logger
from batchd.server.validation import SchemaCache, Violations, check_items
from batchd.worker.handler import Code, Handler, ItemContext, RetryableError, WorkerInfo
from batchd.worker.registry import specs

__all__ = [
    "TEST_BATCH_ID",
    "InvalidOutput",
    "StartedHandler",
    "call_handler",
    "check_params",
    "open_handler",
    "params_violations",
]

# The batch id of items run by call_handler: idempotency keys read "test-batch/<custom_id>".
TEST_BATCH_ID = "test-batch"
TEST_WORKER_ID = "test-worker"

log = get_logger(__name__)


class InvalidOutput(TypeError):
    """The handler returned something the worker would fail with INTERNAL: not a
    mapping, or not encodable as a JSON object (NaN, sets, objects...)."""


@dataclass
class StartedHandler:
    """A handler whose startup hook has run (see `open_handler`): call it many times."""

    handler: Handler
    worker: WorkerInfo
    _validate: bool = field(default=True, repr=False)

    async def call(
        self,
        params: Mapping[str, Any] | bytes,
        *,
        custom_id: str = "item-1",
        batch_id: str = TEST_BATCH_ID,
        attempt: int = 1,
        item_timeout: float | None = None,
    ) -> dict[str, Any]:
        """Runs one attempt of one item, as a worker would; returns its output as the
        service would store it (a JSON round trip) or raises what the handler raised.

        Params are checked against the handler's schema first (`InvalidRequest`, as a
        submit would be refused), unless the handler was opened with `validate=False`,
        and reach `run` as JSON decodes them. `item_timeout` (seconds; default the
        handler's default option, 0 for none) bounds the attempt as the worker does:
        an overrun raises `RetryableError` with code DEADLINE_EXCEEDED.
        """
        if self._validate:
            check_params(self.handler, params)
        decoded = json.loads(_params_json(params))
        ctx = ItemContext(
            batch_id=batch_id,
            custom_id=custom_id,
            attempt=attempt,
            logger=log.bind(batch_id=batch_id),
        )
        limit = self.handler.default_options.item_timeout if item_timeout is None else item_timeout
        deadline = asyncio.timeout(limit if limit > 0 else None)
        try:
            async with deadline:
                output = await self.handler.run(decoded, ctx)
        except TimeoutError as exc:
            if deadline.expired():
                message = f"item timed out after {limit:g}s"
                raise RetryableError(message, code=Code.DEADLINE_EXCEEDED) from exc
            raise
        return _stored_output(output)


@contextlib.asynccontextmanager
async def open_handler(
    handler: Handler,
    *,
    settings: Settings | None = None,
    concurrency: int | None = None,
    validate: bool = True,
) -> AsyncIterator[StartedHandler]:
    """Runs the handler's startup hook, yields it ready for `.call(params)`, and runs
    its shutdown hook on the way out (also when the block raises).

    The hook gets a `WorkerInfo` with `settings` (default `Settings()`) and
    `concurrency` (default settings.worker_concurrency), as a worker process would.
    """
    settings = settings or Settings()
    worker = WorkerInfo(
        worker_id=TEST_WORKER_ID,
        concurrency=settings.worker_concurrency if concurrency is None else concurrency,
        settings=settings,
    )
    if handler.startup is not None:
        await handler.startup(worker)
    try:
        yield StartedHandler(handler, worker, validate)
    finally:
        if handler.shutdown is not None:
            await handler.shutdown()


async def call_handler(
    handler: Handler,
    params: Mapping[str, Any] | bytes,
    *,
    custom_id: str = "item-1",
    batch_id: str = TEST_BATCH_ID,
    attempt: int = 1,
    settings: Settings | None = None,
    item_timeout: float | None = None,
    validate: bool = True,
) -> dict[str, Any]:
    """Startup hook, one attempt of one item, shutdown hook: returns the item's output
    or raises the handler's error. See `StartedHandler.call` for the details.

        with pytest.raises(PermanentError) as caught:
            await call_handler(handler, {"name": "nobody"})
        assert caught.value.code == Code.NOT_FOUND
    """
    async with open_handler(handler, settings=settings, validate=validate) as started:
        return await started.call(
            params,
            custom_id=custom_id,
            batch_id=batch_id,
            attempt=attempt,
            item_timeout=item_timeout,
        )


def params_violations(
    handler: Handler, params: Mapping[str, Any] | bytes, *, index: int = 0
) -> list[FieldViolation]:
    """The field violations the server would answer for `params` as the item at
    `index` of a submitted batch (`items[0].params.name`, with the same descriptions);
    empty when the params would be accepted.

    The check is the server's own: the handler's schema as a worker publishes it (a
    JSON round trip through the catalog), compiled as the server compiles it, applied
    to the params as the client sends them.
    """
    (spec,) = specs({handler.name: handler})
    published, _ = decode_handler(encode_handler(spec, 0))
    try:
        item = to_item(("item", params), index=index)
    except BatchdError as exc:  # the client refuses it before sending anything
        return [FieldViolation(v.field, v.description) for v in exc.field_violations]
    violations = Violations()
    validator = SchemaCache().validator(published)
    check_items(violations, [item], first_index=index, validator=validator)
    return violations.items


def check_params(handler: Handler, params: Mapping[str, Any] | bytes, *, index: int = 0) -> None:
    """Raises `InvalidRequest` (with `.violations`) when the server would refuse
    `params` at submit time; see `params_violations`."""
    violations = Violations()
    for violation in params_violations(handler, params, index=index):
        violations.add(violation.field, violation.description)
    violations.raise_if_any()


def _params_json(params: Mapping[str, Any] | bytes) -> bytes:
    if isinstance(params, bytes):
        return params
    return json.dumps(dict(params), separators=(",", ":"), ensure_ascii=False).encode()


def _stored_output(output: object) -> dict[str, Any]:
    """The output as the worker stores it and a client reads it back."""
    if not isinstance(output, Mapping):
        raise InvalidOutput(f"handler returned {type(output).__name__}, not a JSON object")
    try:
        encoded = fastjson.dumps(output)  # exactly as the worker encodes it
    except (TypeError, ValueError) as exc:
        raise InvalidOutput(f"handler output is not JSON: {exc}") from exc
    decoded: dict[str, Any] = json.loads(encoded)
    return decoded
