"""The `handler` decorator and the hooks added with `on_startup` / `on_shutdown`: what
they make is a plain `Handler`, loaded and run like one built by hand."""

from __future__ import annotations

import sys
import types
from collections.abc import Iterator
from typing import Any

import pytest

from batchd.testing import call_handler, serve_handlers
from batchd.worker import (
    BatchOptions,
    Handler,
    ItemContext,
    RetryPolicy,
    WorkerInfo,
    handler,
)
from batchd.worker.registry import load_handlers

OPTIONS = BatchOptions(chunk_size=7, retry_policy=RetryPolicy(max_attempts=2))
SCHEMA = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}


def counter() -> tuple[Handler, list[str]]:
    """A decorated handler with both hooks, and the list they write what happened to."""
    events: list[str] = []

    @handler("test.decorated", params_schema=SCHEMA, default_options=OPTIONS)
    async def doubled(params: dict[str, Any], ctx: ItemContext) -> dict[str, Any]:
        """Doubles n.

        Only the first paragraph is the description.
        """
        events.append(f"run {ctx.custom_id}")
        return {"double": 2 * params["n"]}

    @doubled.on_startup
    async def opened(worker: WorkerInfo) -> None:
        events.append(f"startup {worker.concurrency}")

    @doubled.on_shutdown
    async def closed() -> None:
        events.append("shutdown")

    assert opened.__name__ == "opened"  # the hooks stay plain functions
    return doubled, events


def test_the_decorator_makes_a_handler() -> None:
    made, _ = counter()
    assert isinstance(made, Handler)
    assert made.name == "test.decorated"
    assert made.description == "Doubles n."
    assert (made.params_schema, made.default_options) == (SCHEMA, OPTIONS)
    assert made.startup is not None
    assert made.shutdown is not None


def test_defaults_are_those_of_handler() -> None:
    @handler("test.bare", description="")
    async def bare(params: dict[str, Any], ctx: ItemContext) -> dict[str, Any]:
        return {}

    built = Handler(name="test.bare", run=bare.run)
    assert bare == built  # name, description, schema and options compare
    assert (bare.startup, bare.shutdown, bare.rate_key, bare.settings) == (None,) * 4


async def test_the_hooks_run_around_the_item() -> None:
    made, events = counter()
    assert await call_handler(made, {"n": 21}, custom_id="a") == {"double": 42}
    assert events[0].startswith("startup ")
    assert events[1:] == ["run a", "shutdown"]


def test_a_second_hook_of_a_kind_is_refused() -> None:
    made, _ = counter()

    async def another(worker: WorkerInfo) -> None:
        pass

    with pytest.raises(ValueError, match="already has a startup hook"):
        made.on_startup(another)


def test_only_async_functions_are_taken() -> None:
    def blocking(params: dict[str, Any], ctx: ItemContext) -> dict[str, Any]:
        return {}

    with pytest.raises(TypeError, match="async def"):
        handler("test.blocking")(blocking)  # type: ignore[arg-type]

    @handler("test.fine")
    async def fine(params: dict[str, Any], ctx: ItemContext) -> dict[str, Any]:
        return {}

    def sync_hook(worker: WorkerInfo) -> None:
        pass

    with pytest.raises(TypeError, match="startup hook must be an async def"):
        fine.on_startup(sync_hook)  # type: ignore[type-var]


def test_a_bad_name_is_refused_at_definition() -> None:
    with pytest.raises(ValueError, match="lowercase words"):

        @handler("Not A Name")
        async def run(params: dict[str, Any], ctx: ItemContext) -> dict[str, Any]:
            return {}


@pytest.fixture
def decorated_module() -> Iterator[str]:
    """A module holding a decorated handler, importable as a `--handlers` path names it."""
    module = types.ModuleType("decorated_handlers")
    module.doubled, _ = counter()  # type: ignore[attr-defined]
    sys.modules[module.__name__] = module
    yield module.__name__
    del sys.modules[module.__name__]


def test_an_import_path_may_name_the_decorated_handler(decorated_module: str) -> None:
    served = load_handlers(f"{decorated_module}:doubled")
    assert served["test.decorated"].default_options.chunk_size == 7


async def test_a_worker_serves_it_with_its_hooks() -> None:
    made, events = counter()
    async with serve_handlers(made, builtins=False) as service:
        run = await service.run_batch("test.decorated", [("a", {"n": 1}), ("b", {"n": 2})])
    assert run.outputs == {"a": {"double": 2}, "b": {"double": 4}}
    assert events[0].startswith("startup ")
    assert events[-1] == "shutdown"
    assert sorted(events[1:-1]) == ["run a", "run b"]
