"""Live updates for the dashboard as server-sent events: batches' progress from the
server's ProgressHub, which WatchProgress reads too (a batch watched by any number of
dashboards and gRPC watchers is polled once), and the handler catalog from one shared
read per interval. Each event stream holds one of the tenant's watch slots
(Settings.tenant_max_watchers), as a WatchProgress stream does."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Sequence
from typing import Any

from aiohttp import web

from batchd.core.domain import BatchRecord, HandlerStatus
from batchd.core.errors import NotFound
from batchd.core.logs import get_logger
from batchd.core.store import BatchStore
from batchd.server.progress import ProgressHub, Snapshot
from batchd.server.tenancy import TenantView

__all__ = ["HandlerFeed", "batch_payload", "open_stream", "stream_batches", "stream_handlers"]

log = get_logger(__name__)

# A comment line this often keeps proxies from closing a quiet stream, and finds a
# browser that went away.
KEEPALIVE = 15.0
# How often the handler catalog is read again (once per server, however many streams).
HANDLERS_INTERVAL = 2.0
# At least this long between two snapshots of a batch: a person reads no faster.
MIN_INTERVAL = 0.5
# Milliseconds a browser waits before it opens an ended stream again.
RETRY = b"retry: 2000\n\n"
# Ends a stream without `done`: the browser reconnects.
_CLOSE = ("close", None)


def event(name: str, data: Any) -> bytes:
    return f"event: {name}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


def batch_payload(
    view: TenantView,
    batch: BatchRecord,
    rate: float | None,
    eta: float | None,
    effective_rate: float | None,
) -> dict[str, Any]:
    """What the page shows of a batch, as the script updates it."""
    counts = batch.counts
    return {
        "id": view.shown_id(batch.batch_id),
        "state": batch.state.name,
        "terminal": batch.state.is_terminal,
        "total": batch.total_items,
        "finished": counts.finished,
        "counts": {
            "pending": counts.pending,
            "claimed": counts.claimed,
            "running": counts.running,
            "succeeded": counts.succeeded,
            "failed": counts.failed,
            "cancelled": counts.cancelled,
            "expired": counts.expired,
        },
        "rate": rate,
        "eta": eta,
        "effective_rate": effective_rate,
        "waiting_reason": batch.waiting_reason,
        "uploading": batch.uploading,
    }


def snapshot_payload(view: TenantView, snapshot: Snapshot) -> dict[str, Any]:
    return batch_payload(
        view, snapshot.batch, snapshot.items_per_second, snapshot.eta, snapshot.effective_rate
    )


async def open_stream(request: web.Request) -> web.StreamResponse:
    response = web.StreamResponse(
        headers={
            "Content-Type": "text/event-stream",
            "Cache-Control": "no-store",
            "X-Accel-Buffering": "no",  # nginx: pass events on as they come
        }
    )
    await response.prepare(request)
    return response


async def stream_batches(
    response: web.StreamResponse,
    hub: ProgressHub,
    store: BatchStore,
    view: TenantView,
    stored_ids: Sequence[str],
    min_interval: float,
    closing: asyncio.Event,
) -> None:
    """A `progress` event per snapshot of each batch (the current one at once), `gone`
    for one that does not exist (or no longer), and `done` once every batch has finished.
    Returns when the browser goes away, and without `done` when a batch cannot be
    followed (Redis away) or the server stops (`closing`): the browser then reconnects,
    to this server or another."""
    queue: asyncio.Queue[tuple[str, Any] | None] = asyncio.Queue()
    interval = max(min_interval, MIN_INTERVAL)

    async def follow(stored_id: str) -> None:
        try:
            await store.get_batch(stored_id)
            async for snapshot, heartbeat in hub.watch(
                stored_id, min_interval=interval, heartbeat_interval=KEEPALIVE
            ):
                if not heartbeat:
                    await queue.put(("progress", snapshot_payload(view, snapshot)))
        except NotFound:
            await queue.put(("gone", {"id": view.shown_id(stored_id)}))
        except Exception as exc:  # Redis away, or the server stopping
            log.info("dashboard_watch_ended", batch_id=stored_id, error=str(exc))
            await queue.put(_CLOSE)
        finally:
            await queue.put(None)

    tasks = [asyncio.create_task(follow(stored_id)) for stored_id in stored_ids]
    stop = asyncio.create_task(closing.wait())
    stop.add_done_callback(lambda _: queue.put_nowait(_CLOSE))
    try:
        await response.write(RETRY)
        following = len(tasks)
        while following:
            try:
                item = await asyncio.wait_for(queue.get(), KEEPALIVE)
            except TimeoutError:
                await response.write(b": keepalive\n\n")
                continue
            if item is _CLOSE:
                return
            if item is None:
                following -= 1
                continue
            await response.write(event(*item))
        await response.write(event("done", {}))
    except ConnectionError:  # the browser went away
        pass
    finally:
        stop.cancel()
        for task in tasks:
            task.cancel()
        await asyncio.gather(stop, *tasks, return_exceptions=True)


class HandlerFeed:
    """The handler catalog, read at most once per HANDLERS_INTERVAL for every stream."""

    def __init__(self, store: BatchStore, worker_ttl: float) -> None:
        self.store = store
        self.worker_ttl = worker_ttl
        self._read_at = -HANDLERS_INTERVAL
        self._latest: list[HandlerStatus] = []
        self._lock = asyncio.Lock()

    async def latest(self) -> list[HandlerStatus]:
        async with self._lock:
            if time.monotonic() - self._read_at >= HANDLERS_INTERVAL:
                found = await self.store.list_handlers(self.worker_ttl)
                self._latest = sorted(found, key=lambda h: h.spec.name)
                self._read_at = time.monotonic()
            return self._latest


def handler_payload(status: HandlerStatus) -> dict[str, Any]:
    return {
        "name": status.spec.name,
        "live_workers": status.live_workers,
        "last_seen": status.last_seen,
    }


async def stream_handlers(
    response: web.StreamResponse, feed: HandlerFeed, closing: asyncio.Event
) -> None:
    """A `handlers` event every HANDLERS_INTERVAL, until the browser goes away or the
    server stops (`closing`)."""
    with contextlib.suppress(ConnectionError):
        await response.write(RETRY)
        while not closing.is_set():
            statuses = await feed.latest()
            await response.write(event("handlers", [handler_payload(s) for s in statuses]))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(closing.wait(), HANDLERS_INTERVAL)
