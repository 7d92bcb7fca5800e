"""batchd.testing: the helpers handler authors test with, against the real thing."""

from __future__ import annotations

import asyncio
import math
import socket
import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

import grpc
import pytest

from batchd.client import BatchdError, ItemError, ItemState
from batchd.core.domain import BatchOptions, RetryPolicy
from batchd.testing import (
    InvalidOutput,
    InvalidRequest,
    LocalService,
    call_handler,
    check_params,
    open_handler,
    params_violations,
    serve_handlers,
)
from batchd.worker import (
    Code,
    Handler,
    ItemContext,
    PermanentError,
    RetryableError,
    WorkerInfo,
)
from batchd.worker.registry import HandlerLoadError

ROOT = Path(__file__).resolve().parents[2]


class Counter:
    """A handler with hooks that records what happened to it.

    params: {"n": int >= 0, "fail": "permanent" | "retry-once" | "boom"}
    output: {"double": 2n, "key": idempotency key, "attempt": n, "worker": worker id}
    """

    def __init__(self) -> None:
        self.events: list[str] = []
        self.worker: WorkerInfo | None = None

    async def startup(self, worker: WorkerInfo) -> None:
        self.events.append("startup")
        self.worker = worker

    async def shutdown(self) -> None:
        self.events.append("shutdown")

    async def run(self, params: dict[str, Any], ctx: ItemContext) -> Mapping[str, Any]:
        self.events.append(f"run {ctx.custom_id} {ctx.attempt}")
        fail = params.get("fail")
        if fail == "permanent":
            raise PermanentError("no such thing", code=Code.NOT_FOUND)
        if fail == "retry-once" and ctx.attempt == 1:
            raise RetryableError("busy", retry_after=0)
        if fail == "boom":
            raise ZeroDivisionError("boom")
        assert self.worker is not None
        return {
            "double": params["n"] * 2,
            "key": ctx.idempotency_key,
            "attempt": ctx.attempt,
            "worker": self.worker.worker_id,
        }

    def handler(self, **changes: Any) -> Handler:
        values: dict[str, Any] = {
            "name": "test.counter",
            "description": "Doubles n.",
            "params_schema": {
                "type": "object",
                "properties": {
                    "n": {"type": "integer", "minimum": 0},
                    "fail": {"enum": ["permanent", "retry-once", "boom"]},
                },
                "required": ["n"],
                "additionalProperties": False,
            },
            "default_options": BatchOptions(
                chunk_size=10, retry_policy=RetryPolicy(max_attempts=3, min_backoff=0.01)
            ),
            "run": self.run,
            "startup": self.startup,
            "shutdown": self.shutdown,
        }
        values.update(changes)
        return Handler(**values)


# -- call_handler, open_handler ------------------------------------------------------


async def test_call_handler_runs_the_hooks_around_one_attempt() -> None:
    counter = Counter()
    output = await call_handler(counter.handler(), {"n": 21}, custom_id="a", attempt=2)
    assert output == {"double": 42, "key": "test-batch/a", "attempt": 2, "worker": "test-worker"}
    assert counter.events == ["startup", "run a 2", "shutdown"]


async def test_call_handler_raises_the_handlers_error_after_its_shutdown() -> None:
    counter = Counter()
    with pytest.raises(PermanentError) as caught:
        await call_handler(counter.handler(), {"n": 1, "fail": "permanent"})
    assert caught.value.code == Code.NOT_FOUND
    assert counter.events[-1] == "shutdown"
    with pytest.raises(ZeroDivisionError):
        await call_handler(counter.handler(), {"n": 1, "fail": "boom"})


async def test_call_handler_refuses_params_the_server_would_refuse() -> None:
    counter = Counter()
    with pytest.raises(InvalidRequest) as caught:
        await call_handler(counter.handler(), {"n": -1})
    assert [v.field for v in caught.value.violations] == ["items[0].params.n"]
    assert counter.events == ["startup", "shutdown"]
    # validate=False hands the handler what it would never get from a worker.
    with pytest.raises(KeyError):
        await call_handler(counter.handler(), {}, validate=False)


async def test_open_handler_starts_once_for_many_calls() -> None:
    counter = Counter()
    async with open_handler(counter.handler(), concurrency=3) as started:
        assert started.worker.concurrency == 3
        outputs = [await started.call({"n": n}, custom_id=f"i{n}") for n in range(3)]
    assert [o["double"] for o in outputs] == [0, 2, 4]
    assert counter.events == ["startup", "run i0 1", "run i1 1", "run i2 1", "shutdown"]


@pytest.mark.parametrize("output", [[1, 2], {"x": math.nan}, {"x": {1, 2}}])
async def test_an_output_the_worker_would_refuse_raises(output: object) -> None:
    async def run(params: dict[str, Any], ctx: ItemContext) -> Any:
        return output

    with pytest.raises(InvalidOutput):
        await call_handler(Handler(name="test.bad", run=run), {})


async def test_the_output_is_what_a_client_reads_back() -> None:
    async def run(params: dict[str, Any], ctx: ItemContext) -> Mapping[str, Any]:
        return {"pair": (1, 2), "params": params}

    output = await call_handler(Handler(name="test.echo", run=run), {"x": 1.5})
    assert output == {"pair": [1, 2], "params": {"x": 1.5}}


async def test_item_timeout_is_a_retryable_deadline_exceeded() -> None:
    async def run(params: dict[str, Any], ctx: ItemContext) -> Mapping[str, Any]:
        await asyncio.sleep(10)
        return {}

    handler = Handler(name="test.slow", run=run, default_options=BatchOptions(item_timeout=0.05))
    with pytest.raises(RetryableError) as caught:
        await call_handler(handler, {})
    assert caught.value.code == Code.DEADLINE_EXCEEDED
    with pytest.raises(RetryableError):
        await call_handler(Handler(name="test.slow", run=run), {}, item_timeout=0.05)


# -- check_params, params_violations ---------------------------------------------------


def test_check_params_names_fields_as_the_server_does() -> None:
    handler = Counter().handler()
    check_params(handler, {"n": 3})
    assert params_violations(handler, {"n": 3}) == []
    (violation,) = params_violations(handler, {"n": 3, "extra": 1}, index=4)
    assert violation.field == "items[4].params"
    with pytest.raises(InvalidRequest, match=r"items\[0\]\.params\.n"):
        check_params(handler, {"n": "three"})
    (not_json,) = params_violations(handler, {"n": math.inf})
    assert not_json.field == "items[0].params"


# -- serve_handlers -------------------------------------------------------------------


@pytest.fixture(scope="module")
async def counter() -> Counter:
    return Counter()


@pytest.fixture(scope="module")
async def service(counter: Counter) -> AsyncIterator[LocalService]:
    async with serve_handlers(counter.handler()) as running:
        yield running


async def test_run_batch_returns_every_outcome(service: LocalService) -> None:
    items: list[tuple[str, dict[str, Any]]] = [
        ("ok", {"n": 2}),
        ("flaky", {"n": 5, "fail": "retry-once"}),
        ("gone", {"n": 1, "fail": "permanent"}),
        ("boom", {"n": 1, "fail": "boom"}),
    ]
    run = await service.run_batch("test.counter", items)
    assert run.batch.state.is_terminal
    assert run.batch.counts.succeeded == 2
    assert list(run.items) == ["ok", "flaky", "gone", "boom"]
    ok = run.outputs["ok"]
    assert (ok["double"], ok["key"], ok["attempt"]) == (4, f"{run.batch.batch_id}/ok", 1)
    flaky = run.items["flaky"]
    assert (flaky.state, flaky.attempts) == (ItemState.SUCCEEDED, 2)
    assert set(run.failed) == {"gone", "boom"}
    errors = {cid: item.error for cid, item in run.failed.items()}
    assert errors == {
        "gone": ItemError(grpc.StatusCode.NOT_FOUND, "no such thing"),
        "boom": ItemError(grpc.StatusCode.UNKNOWN, "boom"),
    }


async def test_run_batch_takes_options(service: LocalService) -> None:
    run = await service.run_batch(
        "test.counter",
        [(f"i{n}", {"n": n, "fail": "retry-once"}) for n in range(3)],
        options={"chunk_size": 1, "retry_policy": {"max_attempts": 1}},
    )
    assert run.batch.chunk_count == 3
    assert {item.state for item in run.items.values()} == {ItemState.FAILED}


async def test_the_server_refuses_what_params_violations_names(service: LocalService) -> None:
    handler = Counter().handler()
    bad: list[dict[str, Any]] = [{"n": -1}, {"n": 1, "fail": "sometimes"}, {"x": 1}]
    for params in bad:
        with pytest.raises(BatchdError) as caught:
            await service.run_batch("test.counter", [("a", params)])
        assert caught.value.code == grpc.StatusCode.INVALID_ARGUMENT
        served = [(v.field, v.description) for v in caught.value.field_violations]
        local = [(v.field, v.description) for v in params_violations(handler, params)]
        assert served == local


async def test_the_worker_serves_the_builtins_and_started_the_handler_once(
    service: LocalService, counter: Counter
) -> None:
    names = {info.name for info in await service.client.handlers()}
    assert {"noop", "sleep", "http.request", "test.counter"} <= names
    assert counter.events.count("startup") == 1
    assert service.target.startswith("127.0.0.1:")
    assert service.redis_url.startswith("redis://127.0.0.1:")


async def test_leaving_stops_the_worker_then_the_redis() -> None:
    counter = Counter()
    async with serve_handlers(counter.handler(), builtins=False) as running:
        names = {info.name for info in await running.client.handlers()}
        port = int(running.redis_url.rsplit(":", 1)[1].split("/")[0])
    assert names == {"test.counter"}
    assert counter.events == ["startup", "shutdown"]
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=1).close()


async def test_a_failing_startup_hook_is_raised(redis_url: str) -> None:
    async def startup(worker: WorkerInfo) -> None:
        raise RuntimeError("no database")

    handler = Counter().handler(startup=startup)
    overrides = {"redis_url": redis_url}  # the session's Redis: one fewer to start
    with pytest.raises(RuntimeError, match="no database"):
        async with serve_handlers(handler, settings_overrides=overrides, builtins=False):
            pass


async def test_an_existing_redis_gets_a_key_prefix_of_its_own(redis_url: str) -> None:
    overrides = {"redis_url": redis_url, "worker_concurrency": 7}
    async with serve_handlers(Counter().handler(), settings_overrides=overrides) as running:
        run = await running.run_batch("test.counter", [("a", {"n": 1})])
        assert running.settings.key_prefix.startswith("batchd-test-")
        assert running.settings.worker_concurrency == 7
    assert run.outputs["a"]["double"] == 2


async def test_two_handlers_with_one_name_are_refused() -> None:
    with pytest.raises(HandlerLoadError, match="noop"):
        async with serve_handlers(Counter().handler(name="noop")):
            pass


PLAIN_ASYNCIO = """
import asyncio
from batchd.worker import Handler
from batchd.testing import call_handler, serve_handlers

async def run(params, ctx):
    return {"hello": params["name"]}

async def main():
    handler = Handler(name="plain.hello", run=run)
    print(await call_handler(handler, {"name": "unit"}))
    async with serve_handlers(handler, builtins=False) as service:
        result = await service.run_batch("plain.hello", [("a", {"name": "e2e"})])
        print(result.outputs)

asyncio.run(main())
"""


@pytest.mark.slow
def test_the_helpers_need_no_pytest() -> None:
    process = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(PLAIN_ASYNCIO)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert process.returncode == 0, process.stderr
    lines = process.stdout.splitlines()
    assert "{'hello': 'unit'}" in lines
    assert "{'a': {'hello': 'e2e'}}" in lines
