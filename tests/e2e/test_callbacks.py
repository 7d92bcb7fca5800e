"""Completion callbacks end to end — real gRPC server, real workers, private Redis, a real
local receiver: the event arrives signed (checked with the verification code of
docs/api.md), after two refusals, and is acknowledged once; a 503 with Retry-After is
retried no sooner than it asks; a loopback address the
egress guard was not opened to is dropped, never reached; bad URLs and a tenant without
a secret are refused at submit; a worker killed mid-delivery leaves the event to another."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest
from aiohttp import web
from redis.asyncio import Redis
from support.polling import poll
from support.processes import worker as worker_process

from batchd.client import AsyncClient, BatchdError
from batchd.core.config import Settings
from batchd.core.keys import Keys
from batchd.server.app import BatchdServer, start_server
from batchd.worker.app import BatchdWorker, build_worker

ROOT = Path(__file__).resolve().parents[2]
SECRET = "callback-test-secret-0123456789"


def documented_verify() -> Callable[[bytes, bytes, str], bool]:
    """verify_batchd_signature, as docs/api.md gives it to receivers."""
    section = (ROOT / "docs" / "api.md").read_text().split("## Completion callbacks\n", 1)[1]
    match = re.search(r"```python\n(.*?)```", section, re.DOTALL)
    assert match, "no python block under 'Completion callbacks'"
    namespace: dict[str, Any] = {}
    exec(compile(match.group(1), "docs/api.md", "exec"), namespace)
    verify: Callable[[bytes, bytes, str], bool] = namespace["verify_batchd_signature"]
    return verify


@dataclass
class Post:
    path: str
    event: dict[str, Any]
    body: bytes
    verified: bool
    timestamp: int
    status: int = 0
    at: float = field(default_factory=time.time)  # when it arrived


@dataclass
class Receiver:
    """Verifies every POST with the documented code (401 if it fails). /flaky/*: 500 for
    the first two POSTs of each event id, then 204. /busy: 503 with `Retry-After: 2` to
    the first POST of each event id, then 204. /hold: the first POST is never answered,
    the next ones get 204."""

    port: int = 0
    posts: list[Post] = field(default_factory=list)
    accepted: Counter[str] = field(default_factory=Counter)
    verify: Callable[[bytes, bytes, str], bool] = field(default_factory=documented_verify)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def of(self, event_id: str) -> list[Post]:
        return [p for p in self.posts if p.event["id"] == event_id]

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        header = request.headers.get("batchd-signature", "")
        stamp = re.match(r"t=(\d+),", header)
        post = Post(
            request.path, json.loads(body), body, self.verify(SECRET.encode(), body, header),
            int(stamp.group(1)) if stamp else 0,
        )  # fmt: skip
        self.posts.append(post)
        earlier = len(self.of(post.event["id"])) - 1
        if not post.verified:
            post.status = 401
        elif request.path.startswith("/flaky/") and earlier < 2:
            post.status = 500
        elif request.path == "/busy" and earlier == 0:
            post.status = 503
            return web.Response(status=503, headers={"Retry-After": "2"})
        elif request.path == "/hold" and earlier == 0:
            await asyncio.Event().wait()  # until the worker's connection goes
        else:
            post.status = 204
            self.accepted[post.event["id"]] += 1
        return web.Response(status=post.status)


@contextlib.asynccontextmanager
async def receiving() -> AsyncIterator[Receiver]:
    receiver = Receiver()
    app = web.Application()
    app.router.add_post("/{tail:.*}", receiver.handle)
    runner = web.AppRunner(app, shutdown_timeout=0.1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    receiver.port = runner.addresses[0][1]
    try:
        yield receiver
    finally:
        await runner.cleanup()


@dataclass
class Service:
    settings: Settings
    server: BatchdServer
    worker: BatchdWorker
    client: AsyncClient
    redis: Redis
    keys: Keys
    receiver: Receiver
    closed: Receiver  # a loopback receiver the egress guard was not opened to


@pytest.fixture
async def service(redis_url: str) -> AsyncIterator[Service]:
    async with receiving() as receiver, receiving() as closed:
        settings = Settings(
            redis_url=redis_url,
            host="127.0.0.1",
            key_prefix=f"cb{uuid.uuid4().hex[:8]}:",
            egress_allow=f"127.0.0.1:{receiver.port}",  # not closed.port
            callback_secret=SECRET,
            callback_allow_http=True,
            callback_retry_delay=0.05,
            maintenance_interval=0.05,  # how often workers look for due callbacks
        )
        server = await start_server(settings, port=0, metrics_port=0)
        worker = build_worker(settings, poll_delay=0.01, metrics_port=0)
        task = asyncio.create_task(worker.async_run())
        redis = Redis.from_url(redis_url)
        client = AsyncClient(f"127.0.0.1:{server.port}")
        keys = Keys(settings.key_prefix)
        try:
            await worker.started.wait()
            yield Service(settings, server, worker, client, redis, keys, receiver, closed)
        finally:
            await client.close()
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            await worker.close()
            await server.stop(grace=0)
            await redis.aclose()


def counted(service: Service, result: str) -> float:
    assert service.worker.metrics is not None
    value = service.worker.metrics.registry.get_sample_value(
        "batchd_worker_callbacks_total", {"result": result}
    )
    return value or 0.0


async def test_the_event_arrives_signed_after_two_failures_and_is_acknowledged_once(
    service: Service,
) -> None:
    receiver = service.receiver
    url = receiver.url("/flaky/done")
    items: list[tuple[str, dict[str, object]]] = [(f"i{n}", {}) for n in range(3)]
    submitted = await service.client.submit("noop", items, options={"callback_url": url})
    batch = submitted.batch
    assert batch.options.callback_url == url

    async def accepted() -> str | None:
        return next(iter(receiver.accepted), None)

    event_id = await poll(accepted)
    posts = receiver.of(event_id)
    assert [p.status for p in posts] == [500, 500, 204]  # retried until acknowledged
    assert all(p.verified for p in posts)
    assert all(abs(p.timestamp - time.time()) < 60 for p in posts)
    assert len({p.body for p in posts}) == 1  # the same event each time
    event = posts[0].event
    assert event["specversion"] == "1.0"
    assert event["type"] == "batchd.batch.finished"
    assert event["source"] == "batchd"
    assert event["subject"] == batch.batch_id
    data = event["data"]
    assert data["state"] == "COMPLETED"
    assert data["total_items"] == 3
    assert data["counts"] == {"succeeded": 3, "failed": 0, "cancelled": 0, "expired": 0}
    assert data["results"]["cli"] == f"batchd results {batch.batch_id}"
    finished = await service.client.get(batch.batch_id)
    assert finished.end_time is not None
    assert event["time"].startswith(finished.end_time.strftime("%Y-%m-%dT%H:%M:%S"))

    # Acknowledged: out of the outbox, so it is never sent again.
    async def settled() -> bool | None:
        return True if await service.redis.zcard(service.keys.callbacks) == 0 else None

    await poll(settled)
    assert receiver.accepted == {event_id: 1}
    assert counted(service, "delivered") == 1
    assert counted(service, "failed") == 2


async def test_a_503_with_retry_after_is_tried_again_no_sooner(service: Service) -> None:
    receiver = service.receiver
    options = {"callback_url": receiver.url("/busy")}
    await service.client.submit("noop", [("a", {})], options=options)

    async def accepted() -> str | None:
        return next(iter(receiver.accepted), None)

    event_id = await poll(accepted)
    first, second = receiver.of(event_id)
    assert (first.status, second.status) == (503, 204)
    # The back-off alone (callback_retry_delay 0.05 s) would have tried again at once.
    assert second.at - first.at >= 1.95
    assert counted(service, "failed") == 1


async def test_a_redrive_that_ends_the_batch_again_sends_a_new_event(service: Service) -> None:
    receiver = service.receiver
    options = {"callback_url": receiver.url("/ok"), "retry_policy": {"max_attempts": 1}}
    items = [("ok", {"seconds": 0}), ("bad", {"seconds": 0, "fail": True})]
    batch = (await service.client.submit("sleep", items, options=options)).batch

    async def accepted(count: int) -> list[str] | None:
        return list(receiver.accepted) if len(receiver.accepted) >= count else None

    (first,) = await poll(lambda: accepted(1))
    await service.client.retry(batch.batch_id)
    ids = await poll(lambda: accepted(2))
    assert ids[0] == first
    assert ids[1] != first
    assert [receiver.of(i)[0].event["data"]["counts"]["failed"] for i in ids] == [1, 1]
    assert receiver.accepted == {first: 1, ids[1]: 1}


async def test_a_loopback_address_the_egress_guard_was_not_opened_to_is_dropped(
    service: Service,
) -> None:
    url = service.closed.url("/hooks")
    await service.client.submit("noop", [("a", {})], options={"callback_url": url})

    async def dropped() -> bool | None:
        return True if counted(service, "dropped") == 1 else None

    await poll(dropped)
    assert await service.redis.zcard(service.keys.callbacks) == 0
    assert service.closed.posts == []


BAD_URLS = {
    "ftp://hooks.example/x": "must be an https URL",
    "https://user:pw@hooks.example/x": "must not carry a user or password",
    "https://hooks.example/x#frag": "must not have a fragment",
    "https:///x": "must name a host",
    "https://hooks.example/a b": "without spaces",
    "https://hooks.example:99999/": "not a valid URL",
    "https://hooks.example/" + "x" * 2048: "at most 2048 characters",
}


@pytest.mark.parametrize(("url", "problem"), BAD_URLS.items(), ids=list(range(len(BAD_URLS))))
async def test_a_bad_callback_url_is_invalid_argument(
    service: Service, url: str, problem: str
) -> None:
    with pytest.raises(BatchdError) as caught:
        await service.client.submit("noop", [("a", {})], options={"callback_url": url})
    assert caught.value.code is grpc.StatusCode.INVALID_ARGUMENT
    [violation] = caught.value.field_violations
    assert violation.field == "options.completion_callback.url"
    assert problem in violation.description


async def test_without_the_settings_http_and_unsigned_callbacks_are_refused(
    client: AsyncClient,
) -> None:
    # The shared end-to-end service: no BATCHD_CALLBACK_ALLOW_HTTP, no secret.
    with pytest.raises(BatchdError) as caught:
        await client.submit("noop", [("a", {})], options={"callback_url": "http://127.0.0.1/"})
    assert caught.value.code is grpc.StatusCode.INVALID_ARGUMENT
    assert "BATCHD_CALLBACK_ALLOW_HTTP" in caught.value.field_violations[0].description
    with pytest.raises(BatchdError) as caught:
        await client.submit("noop", [("a", {})], options={"callback_url": "https://h.example/"})
    assert caught.value.code is grpc.StatusCode.FAILED_PRECONDITION
    assert "BATCHD_CALLBACK_SECRET" in caught.value.message


@pytest.mark.slow
async def test_a_worker_killed_mid_delivery_leaves_the_event_to_another(
    redis_url: str, tmp_path: Path
) -> None:
    async with receiving() as receiver:
        prefix = f"cbk{uuid.uuid4().hex[:8]}:"
        env = {
            "BATCHD_REDIS_URL": redis_url,
            "BATCHD_KEY_PREFIX": prefix,
            "BATCHD_EGRESS_ALLOW": f"127.0.0.1:{receiver.port}",
            "BATCHD_CALLBACK_SECRET": SECRET,
            "BATCHD_CALLBACK_TIMEOUT": "2",  # a claim lasts 4 s
            "BATCHD_MAINTENANCE_INTERVAL": "0.05",
        }
        settings = Settings.from_env(env, callback_allow_http=True)
        server = await start_server(settings, port=0, metrics_port=0)
        first = worker_process(env, tmp_path / "first.log").start()
        second = worker_process(env, tmp_path / "second.log")
        try:
            async with AsyncClient(f"127.0.0.1:{server.port}") as client:
                await poll(lambda: _served(client), within=60)
                options = {"callback_url": receiver.url("/hold")}
                await client.submit("noop", [("a", {})], options=options)

                async def posted(count: int) -> bool | None:
                    return True if len(receiver.posts) >= count else None

                await poll(lambda: posted(1), within=30)
                first.kill()  # while the receiver holds its POST
                second.start()
                event_id = receiver.posts[0].event["id"]

                async def accepted() -> bool | None:
                    return True if receiver.accepted[event_id] else None

                await poll(accepted, within=30)

                async def logged() -> bool | None:  # once the answer reached the worker
                    events = second.events()
                    return any(e.get("event") == "callback_delivered" for e in events) or None

                await poll(logged, within=30)
            assert [p.event["id"] for p in receiver.posts] == [event_id, event_id]
        finally:
            first.stop()
            second.stop()
            await server.stop(grace=0)


async def _served(client: AsyncClient) -> bool | None:
    handlers = await client.handlers()
    return True if any(h.name == "noop" and h.live_workers for h in handlers) else None
