"""Test helpers for handler authors: run a handler for real, without mocks.

Two levels, both usable from pytest (pytest-asyncio) or plain `asyncio.run`:

    call_handler(handler, params)       one item through the handler in this process:
                                        startup hook, one `run` with a real ItemContext,
                                        shutdown hook; returns the output or raises
    open_handler(handler)               the same, the hooks run once around many calls
    check_params(handler, params)       the JSON Schema check the server applies at
                                        submit time; raises InvalidRequest
    params_violations(handler, params)  the same check, returning the field violations
    serve_handlers(*handlers)           the whole service: a private Redis, a gRPC server
                                        and a worker serving the handlers; `.client`,
                                        `.run_batch(...)`

    params = {"name": "Ada", "webhook": webhook_url}
    output = await call_handler(greet_send, params)

    async with serve_handlers(greet_send) as service:
        run = await service.run_batch("greet.send", [("ada", params)])
        assert run.outputs["ada"]["greeting"] == "Hello, Ada!"

(`greet.send` is the handler of examples/greeter; docs/handlers.md, "Testing it".)

A package of its own beside batchd.server and batchd.worker, since it starts both: test
support, never imported by a running service (docs/design.md, "Layers").
"""

from __future__ import annotations

from batchd.core.errors import FieldViolation, InvalidRequest
from batchd.testing.calls import (
    TEST_BATCH_ID,
    InvalidOutput,
    StartedHandler,
    call_handler,
    check_params,
    open_handler,
    params_violations,
)
from batchd.testing.service import BatchRun, LocalService, serve_handlers

__all__ = [
    "TEST_BATCH_ID",
    "BatchRun",
    "FieldViolation",
    "InvalidOutput",
    "InvalidRequest",
    "LocalService",
    "StartedHandler",
    "call_handler",
    "check_params",
    "open_handler",
    "params_violations",
    "serve_handlers",
]
