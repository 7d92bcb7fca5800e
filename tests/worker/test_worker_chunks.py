"""`run_chunk` end to end: batches committed through the real store, run by an in-process
ARQ worker in burst mode against the private Redis, checked through the store."""

from __future__ import annotations

import asyncio
import json
import textwrap
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import Redis

from batchd.core.config import Settings
from batchd.core.domain import (
    BatchOptions,
    BatchRecord,
    BatchSpec,
    BatchState,
    ItemState,
    ItemView,
    NewItem,
    RetryPolicy,
)
from batchd.core.keys import Keys
from batchd.core.store import BatchStore, RecordResult
from batchd.worker import app
from batchd.worker.app import build_worker
from batchd.worker.handler import (
    Code,
    Handler,
    ItemContext,
    PermanentError,
    RetryableError,
    WorkerInfo,
)


def settings_for(redis_url: str, **overrides: Any) -> Settings:
    """Settings with a fresh key prefix: the queue, catalog and batches are this test's own
    (the end-to-end suite's worker polls the default queue of the same Redis)."""
    values: dict[str, Any] = {
        "redis_url": redis_url,
        "key_prefix": f"wt{uuid.uuid4().hex[:10]}:",
        "heartbeat_interval": 0.2,
    }
    values.update(overrides)
    return Settings(**values)


def store_for(redis: Redis, settings: Settings) -> BatchStore:
    return BatchStore(redis, Keys(settings.key_prefix))


async def submit(
    store: BatchStore,
    handler: str,
    params: Sequence[Mapping[str, Any]],
    *,
    options: BatchOptions | None = None,
) -> str:
    """Commits a batch of items `i0`, `i1`, ... straight through the store."""
    batch_id = f"b{uuid.uuid4().hex[:12]}"
    spec = BatchSpec(
        batch_id=batch_id,
        handler=handler,
        options=options or BatchOptions(chunk_size=100),
        metadata={},
    )
    session = await store.begin_upload(spec)
    await session.add_items(
        NewItem(custom_id=f"i{n}", params_json=json.dumps(p).encode()) for n, p in enumerate(params)
    )
    await session.commit()
    return batch_id


async def run_burst(settings: Settings, handlers: Iterable[Handler] = ()) -> None:
    """Runs a worker until the queue is empty, then shuts it down."""
    worker = build_worker(settings, burst=True, extra_handlers=handlers, poll_delay=0.01)
    try:
        await worker.async_run()
    finally:
        await worker.close()


async def all_items(store: BatchStore, batch_id: str) -> list[ItemView]:
    items, cursor = await store.list_items(batch_id, 1000, "", [])
    while cursor:
        page, cursor = await store.list_items(batch_id, 1000, cursor, [])
        items += page
    return items


def consumer_tasks() -> int:
    """The chunk runs' consumer tasks alive now (batchd.worker.chunk_runner names them)."""
    return sum(task.get_name().startswith("consumer ") for task in asyncio.all_tasks())


def output(item: ItemView) -> Any:
    assert item.output_json is not None
    return json.loads(item.output_json)


def assert_counts_add_up(batch: BatchRecord) -> None:
    assert batch.counts.total == batch.total_items


async def test_noop_batch_completes_over_several_chunks(redis: Redis, redis_url: str) -> None:
    settings = settings_for(redis_url)
    store = store_for(redis, settings)
    batch_id = await submit(store, "noop", [{}] * 25, options=BatchOptions(chunk_size=10))
    await run_burst(settings)
    batch = await store.get_batch(batch_id)
    assert batch.state == BatchState.COMPLETED
    assert batch.chunk_count == 3
    assert batch.counts.succeeded == 25
    assert_counts_add_up(batch)
    items = await all_items(store, batch_id)
    assert [i.custom_id for i in items] == [f"i{n}" for n in range(25)]
    assert {(i.state, i.attempts, i.output_json) for i in items} == {
        (ItemState.SUCCEEDED, 1, b"{}")
    }
    assert all(i.start_time is not None and i.end_time is not None for i in items)
    assert all(i.start_time <= i.end_time for i in items)  # type: ignore[operator]


class Mixed:
    """A handler whose params say how it ends; counts attempts per custom_id."""

    def __init__(self) -> None:
        self.attempts: dict[str, int] = {}
        self.hang = asyncio.Event()  # never set: `hang` items wait for their timeout

    async def run(self, params: dict[str, Any], ctx: ItemContext) -> Mapping[str, Any]:
        self.attempts[ctx.custom_id] = ctx.attempt
        do = params["do"]
        if do == "echo":
            return {"params": params, "key": ctx.idempotency_key, "attempt": ctx.attempt}
        if do == "permanent":
            raise PermanentError("no such thing", code=Code.NOT_FOUND)
        if do == "plain":
            raise ValueError("boom")
        if do == "flaky" and ctx.attempt < 3:
            raise RetryableError("try again", retry_after=0)
        if do == "flaky":
            return {"attempt": ctx.attempt}
        if do == "always_retryable":
            raise RetryableError("still down", code=Code.UNAVAILABLE)
        if do == "not_json":
            return {"value": {1, 2}}
        if do == "not_object":
            return [1, 2]  # type: ignore[return-value]
        if do == "hang":
            await self.hang.wait()
        if do == "cancelled":
            raise asyncio.CancelledError  # not the worker's doing: the item fails
        raise AssertionError(do)

    def handler(self) -> Handler:
        return Handler(name="test.mixed", run=self.run)


async def test_outputs_errors_and_retries(redis: Redis, redis_url: str) -> None:
    settings = settings_for(redis_url)
    store = store_for(redis, settings)
    mixed = Mixed()
    cases = [
        "echo",
        "permanent",
        "plain",
        "flaky",
        "always_retryable",
        "not_json",
        "not_object",
        "hang",
        "cancelled",
    ]
    options = BatchOptions(
        chunk_size=4,
        retry_policy=RetryPolicy(max_attempts=3, min_backoff=0.001),
        item_timeout=0.05,
    )
    batch_id = await submit(store, "test.mixed", [{"do": c} for c in cases], options=options)
    await run_burst(settings, [mixed.handler()])

    batch = await store.get_batch(batch_id)
    assert batch.state == BatchState.COMPLETED
    assert (batch.counts.succeeded, batch.counts.failed) == (2, 7)
    assert_counts_add_up(batch)
    items = dict(zip(cases, await all_items(store, batch_id), strict=True))

    echo = items["echo"]
    assert (echo.state, echo.attempts) == (ItemState.SUCCEEDED, 1)
    assert output(echo) == {"params": {"do": "echo"}, "key": f"{batch_id}/i0", "attempt": 1}
    assert echo.output_json == b'{"params":{"do":"echo"},"key":"' + batch_id.encode() + b'/i0",' + (
        b'"attempt":1}'
    )  # compact JSON

    def failure(case: str) -> tuple[ItemState, int, int, str]:
        item = items[case]
        return item.state, item.attempts, item.error_code, item.error_message

    assert failure("permanent") == (ItemState.FAILED, 1, Code.NOT_FOUND, "no such thing")
    assert failure("plain") == (ItemState.FAILED, 1, Code.UNKNOWN, "boom")
    assert (items["flaky"].state, items["flaky"].attempts) == (ItemState.SUCCEEDED, 3)
    assert output(items["flaky"]) == {"attempt": 3}
    assert failure("always_retryable") == (ItemState.FAILED, 3, Code.UNAVAILABLE, "still down")
    state, attempts, code, message = failure("not_json")
    assert (state, attempts, code) == (ItemState.FAILED, 1, Code.INTERNAL)
    assert message.startswith("handler output is not JSON")
    assert failure("not_object") == (
        ItemState.FAILED,
        1,
        Code.INTERNAL,
        "handler returned list, not a JSON object",
    )
    # item_timeout bounds each attempt; a timed-out attempt is retried like any other.
    assert failure("hang") == (
        ItemState.FAILED,
        3,
        Code.DEADLINE_EXCEEDED,
        "item timed out after 0.05s",
    )
    assert items["hang"].output_json is None
    assert failure("cancelled") == (
        ItemState.FAILED,
        1,
        Code.CANCELLED,
        "the handler was cancelled",
    )


async def test_sleep_builtin(redis: Redis, redis_url: str) -> None:
    settings = settings_for(redis_url)
    store = store_for(redis, settings)
    batch_id = await submit(store, "sleep", [{"seconds": 0}, {"seconds": 0.001, "fail": True}])
    await run_burst(settings)
    ok, failed = await all_items(store, batch_id)
    assert (ok.state, output(ok)) == (ItemState.SUCCEEDED, {"slept": 0})
    assert (failed.state, failed.error_code) == (ItemState.FAILED, Code.ABORTED)


@pytest.mark.slow
async def test_http_request_through_the_worker(
    redis: Redis, redis_url: str, http_base: str
) -> None:
    settings = settings_for(redis_url, worker_concurrency=8, egress_allow="127.0.0.1")
    store = store_for(redis, settings)

    def url(path: str) -> str:
        return f"{http_base}{path}"

    params: list[dict[str, Any]] = [
        {"url": url("/json")},
        {"url": url("/status/404")},
        {"url": url("/status/500?retry_after=0")},
        {"url": url("/flaky?key=chunk-test")},
        {"url": url("/slow"), "timeout": 0.1},
        {"url": url("/large")},
        {"url": url("/echo"), "method": "POST", "json": {"n": 1}},
    ]
    options = BatchOptions(chunk_size=50, retry_policy=RetryPolicy(max_attempts=3))
    batch_id = await submit(store, "http.request", params, options=options)
    await run_burst(settings)

    batch = await store.get_batch(batch_id)
    assert batch.state == BatchState.COMPLETED
    assert_counts_add_up(batch)
    ok, missing, broken, flaky, slow, large, echo = await all_items(store, batch_id)
    assert output(ok)["status"] == 200
    assert output(ok)["body"] == '{"ok": true}'
    assert (missing.state, missing.attempts, missing.error_code, missing.error_message) == (
        ItemState.FAILED,
        1,
        Code.NOT_FOUND,
        "HTTP 404 Not Found",
    )
    assert (broken.state, broken.attempts, broken.error_code) == (
        ItemState.FAILED,
        3,
        Code.UNAVAILABLE,
    )
    assert broken.error_message == "HTTP 500 Internal Server Error"
    assert (flaky.state, flaky.attempts, output(flaky)["body"]) == (
        ItemState.SUCCEEDED,
        3,
        '{"tries": 3}',
    )
    assert (slow.state, slow.attempts, slow.error_code) == (
        ItemState.FAILED,
        3,
        Code.DEADLINE_EXCEEDED,
    )
    assert output(large)["body_truncated"] is True
    assert output(echo)["status"] == 200


async def test_cancel_mid_chunk_cancels_the_items_not_started(
    redis: Redis, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # One consumer, a flush after every item: the worker learns of the cancel at the
    # first flush after it, and must then start nothing more.
    settings = settings_for(redis_url, worker_concurrency=1, outcome_flush_items=1)
    store = store_for(redis, settings)
    started: list[str] = []
    first_started = asyncio.Event()
    release = asyncio.Event()
    saw_cancelling = asyncio.Event()

    async def gated(params: dict[str, Any], ctx: ItemContext) -> Mapping[str, Any]:
        started.append(ctx.custom_id)
        first_started.set()
        await release.wait()
        if ctx.custom_id == "i0":
            release.clear()  # i1 waits until the worker has seen the cancel
        return {}

    record = BatchStore.record_outcomes

    async def watched(self: BatchStore, *args: Any, **kwargs: Any) -> RecordResult:
        result = await record(self, *args, **kwargs)
        if result.state == BatchState.CANCELLING:
            saw_cancelling.set()
        return result

    monkeypatch.setattr(BatchStore, "record_outcomes", watched)
    batch_id = await submit(store, "test.gated", [{}] * 10, options=BatchOptions(chunk_size=10))
    worker = asyncio.create_task(run_burst(settings, [Handler(name="test.gated", run=gated)]))
    await first_started.wait()
    cancelled = await store.cancel_batch(batch_id)
    assert cancelled.state == BatchState.CANCELLING  # its only chunk is in a worker's hands
    release.set()  # i0 ends; its flush reports CANCELLING while i1 is in flight
    await saw_cancelling.wait()
    release.set()  # i1, in flight, may finish
    await worker

    batch = await store.get_batch(batch_id)
    assert batch.state == BatchState.CANCELLED
    assert (batch.counts.succeeded, batch.counts.cancelled) == (2, 8)
    assert batch.counts.pending == batch.counts.running == batch.counts.claimed == 0
    assert_counts_add_up(batch)
    assert started == ["i0", "i1"]
    items = await all_items(store, batch_id)
    assert [i.state for i in items[:2]] == [ItemState.SUCCEEDED] * 2
    assert {(i.state, i.attempts, i.start_time) for i in items[2:]} == {
        (ItemState.CANCELLED, 0, None)
    }


async def test_items_in_flight_are_bounded_per_worker(redis: Redis, redis_url: str) -> None:
    # Two chunk jobs at once share the worker's 4 slots; 120 items never mean 120 tasks.
    settings = settings_for(redis_url, worker_concurrency=4, worker_max_chunks=2)
    store = store_for(redis, settings)
    in_flight = 0
    most_in_flight = 0
    most_consumers = 0
    full = asyncio.Event()

    async def probe(params: dict[str, Any], ctx: ItemContext) -> Mapping[str, Any]:
        nonlocal in_flight, most_in_flight, most_consumers
        in_flight += 1
        most_in_flight = max(most_in_flight, in_flight)
        most_consumers = max(most_consumers, consumer_tasks())
        if in_flight == 4:
            full.set()
        await full.wait()  # every item overlaps with others until the slots filled up once
        in_flight -= 1
        return {}

    options = BatchOptions(chunk_size=60)
    batch_ids = [await submit(store, "test.probe", [{}] * 60, options=options) for _ in range(2)]
    await run_burst(settings, [Handler(name="test.probe", run=probe)])
    assert most_in_flight == 4
    # A consumer per slot, and at most one more per chunk job, waiting for a slot.
    assert most_consumers <= 4 + 2
    for batch_id in batch_ids:
        assert (await store.get_batch(batch_id)).counts.succeeded == 60


async def test_outcomes_are_flushed_before_the_chunk_ends(
    redis: Redis, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Every item after the first waits until the first is recorded: by count here
    # (outcome_flush_items=1), by time in the next test.
    await _flush_before_end(
        redis,
        redis_url,
        monkeypatch,
        outcome_flush_items=1,
        outcome_flush_interval=3600.0,
    )


async def test_outcomes_are_flushed_on_a_timer(
    redis: Redis, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    await _flush_before_end(
        redis,
        redis_url,
        monkeypatch,
        outcome_flush_items=1000,
        outcome_flush_interval=0.02,
    )


async def _flush_before_end(
    redis: Redis, redis_url: str, monkeypatch: pytest.MonkeyPatch, **overrides: Any
) -> None:
    settings = settings_for(redis_url, worker_concurrency=1, **overrides)
    store = store_for(redis, settings)
    flushes: list[tuple[list[int], bool]] = []
    first_recorded = asyncio.Event()
    record = BatchStore.record_outcomes

    async def watched(
        self: BatchStore, batch_id: str, chunk: int, outcomes: Any, **kwargs: Any
    ) -> Any:
        flushes.append(([o.index for o in outcomes], kwargs["release"]))
        state = await record(self, batch_id, chunk, outcomes, **kwargs)
        if any(o.index == 0 for o in outcomes):
            first_recorded.set()
        return state

    async def waits_for_first(params: dict[str, Any], ctx: ItemContext) -> Mapping[str, Any]:
        if ctx.custom_id != "i0":
            await first_recorded.wait()
        return {}

    monkeypatch.setattr(BatchStore, "record_outcomes", watched)
    batch_id = await submit(store, "test.wait", [{}] * 5, options=BatchOptions(chunk_size=5))
    await run_burst(settings, [Handler(name="test.wait", run=waits_for_first)])
    assert flushes[0] == ([0], False)
    assert flushes[-1][1] is True  # the last flush releases the chunk
    assert [release for _, release in flushes].count(True) == 1
    assert sorted(i for indexes, _ in flushes for i in indexes) == list(range(5))
    assert (await store.get_batch(batch_id)).counts.succeeded == 5


async def test_handlers_from_settings_import_paths(
    redis: Redis, redis_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    module = f"batchd_test_ext_{tmp_path.name.replace('-', '_')}"
    (tmp_path / f"{module}.py").write_text(
        textwrap.dedent(
            """
            from batchd.worker import Handler

            async def shout(params, ctx):
                return {"text": params["text"].upper()}

            SHOUT = Handler(name="ext.shout", run=shout, description="Upper-cases text.")
            """
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    settings = settings_for(redis_url, handlers=f"{module}:SHOUT")
    store = store_for(redis, settings)
    batch_id = await submit(store, "ext.shout", [{"text": "hi"}])
    await run_burst(settings)
    (item,) = await all_items(store, batch_id)
    assert output(item) == {"text": "HI"}


async def test_catalog_is_published_and_withdrawn(
    redis: Redis, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = settings_for(redis_url, heartbeat_interval=0.01)
    store = store_for(redis, settings)
    events: list[str] = []
    started = asyncio.Event()
    beats = 0
    heartbeat_seen = asyncio.Event()
    publish = BatchStore.publish_worker

    async def counted(self: BatchStore, *args: Any, **kwargs: Any) -> None:
        nonlocal beats
        await publish(self, *args, **kwargs)
        beats += 1
        if beats == 3:  # the start-up publication and two heartbeats
            heartbeat_seen.set()

    async def startup(worker: WorkerInfo) -> None:
        events.append(f"startup {worker.concurrency}")
        started.set()

    async def shutdown() -> None:
        events.append("shutdown")

    async def noop(params: dict[str, Any], ctx: ItemContext) -> Mapping[str, Any]:
        return {}

    hooked = Handler(
        name="test.hooked",
        run=noop,
        description="Has hooks.",
        params_schema={"type": "object", "additionalProperties": False},
        default_options=BatchOptions(chunk_size=7),
        startup=startup,
        shutdown=shutdown,
    )
    monkeypatch.setattr(BatchStore, "publish_worker", counted)
    worker = app.build_worker(settings, extra_handlers=[hooked], poll_delay=0.01)
    running = asyncio.create_task(worker.async_run())
    try:
        await worker.started.wait()
        assert started.is_set()  # handler hooks run before the catalog is published
        await heartbeat_seen.wait()
        statuses = {s.spec.name: s for s in await store.list_handlers(settings.worker_ttl)}
        assert {"noop", "sleep", "http.request", "test.hooked"} <= set(statuses)
        status = statuses["test.hooked"]
        assert status.live_workers == 1
        assert status.spec.description == "Has hooks."
        assert status.spec.params_schema == {"type": "object", "additionalProperties": False}
        assert status.spec.default_options.chunk_size == 7
    finally:
        running.cancel()
        with pytest.raises(asyncio.CancelledError):
            await running
        await worker.close()
    assert events == [f"startup {settings.worker_concurrency}", "shutdown"]
    statuses = {s.spec.name: s for s in await store.list_handlers(settings.worker_ttl)}
    assert statuses["test.hooked"].live_workers == 0


async def test_a_worker_never_takes_a_chunk_of_a_handler_it_does_not_serve(
    redis: Redis, redis_url: str
) -> None:
    # The job stays in its handler's queue, untouched, for a worker that serves it.
    settings = settings_for(redis_url)
    store = store_for(redis, settings)
    keys = Keys(settings.key_prefix)
    batch_id = await submit(store, "test.absent", [{}] * 3)
    await run_burst(settings)
    batch = await store.get_batch(batch_id)
    assert batch.state == BatchState.QUEUED
    assert batch.counts.pending == 3
    queued = await redis.zrange(keys.queue("test.absent"), 0, -1)
    assert [bytes(job).decode() for job in queued] == [f"{batch_id}:0"]
    assert await redis.exists(f"arq:in-progress:{batch_id}:0", f"arq:retry:{batch_id}:0") == 0


async def test_a_chunk_of_slow_items_fills_every_worker_slot(redis: Redis, redis_url: str) -> None:
    # Consumers are started as items wait, not all up front: they must still reach the
    # worker's whole concurrency.
    settings = settings_for(redis_url, worker_concurrency=200, worker_max_chunks=1)
    store = store_for(redis, settings)
    in_flight = 0
    most_in_flight = 0
    full = asyncio.Event()

    async def probe(params: dict[str, Any], ctx: ItemContext) -> Mapping[str, Any]:
        nonlocal in_flight, most_in_flight
        in_flight += 1
        most_in_flight = max(most_in_flight, in_flight)
        if in_flight == 200:
            full.set()
        await full.wait()
        in_flight -= 1
        return {}

    batch_id = await submit(store, "test.probe", [{}] * 500, options=BatchOptions(chunk_size=500))
    async with asyncio.timeout(30):
        await run_burst(settings, [Handler(name="test.probe", run=probe)])
    assert most_in_flight == 200
    assert (await store.get_batch(batch_id)).counts.succeeded == 500


async def run_brief_chunks(
    redis: Redis, redis_url: str, chunks: int, size: int, on_item: Callable[[], None]
) -> None:
    """`chunks` batches of one chunk of `size` brief items (2 ms each), run by a worker of
    20 slots holding up to 4 chunks, `on_item` called as each item starts; every item
    must succeed."""
    settings = settings_for(redis_url, worker_concurrency=20, worker_max_chunks=4)
    store = store_for(redis, settings)

    async def brief(params: dict[str, Any], ctx: ItemContext) -> Mapping[str, Any]:
        on_item()
        await asyncio.sleep(0.002)  # the item's work
        return {}

    options = BatchOptions(chunk_size=size)
    batch_ids = [
        await submit(store, "test.brief", [{}] * size, options=options) for _ in range(chunks)
    ]
    async with asyncio.timeout(30):
        await run_burst(settings, [Handler(name="test.brief", run=brief)])
    for batch_id in batch_ids:
        assert (await store.get_batch(batch_id)).counts.succeeded == size


async def test_chunks_sharing_the_slots_start_no_more_consumers_than_slots(
    redis: Redis, redis_url: str
) -> None:
    # Four chunks grow their consumers at once over the worker's 20 slots. A consumer
    # beyond the slots waits in their line, and then every slot freed goes to a waiter
    # while the consumer that freed it waits in turn: a hand-over per item. Only a run's
    # first consumer may wait (its run has no slot yet).
    most_consumers = 0

    def count() -> None:
        nonlocal most_consumers
        most_consumers = max(most_consumers, consumer_tasks())

    await run_brief_chunks(redis, redis_url, 4, 80, count)
    assert most_consumers <= 20 + 4


async def test_a_chunk_out_of_items_hands_its_consumers_on_to_the_next_chunks(
    redis: Redis, redis_url: str
) -> None:
    # Six chunks of 60 items over 20 slots: as each chunk runs out of items, its consumers
    # (and the slots they hold) go on to the next chunk's items rather than end and have
    # each slot they free start a new task: a few dozen consumer tasks, not one per item.
    consumers: set[asyncio.Task[Any]] = set()

    def note() -> None:
        task = asyncio.current_task()
        assert task is not None
        consumers.add(task)

    await run_brief_chunks(redis, redis_url, 6, 60, note)
    assert len(consumers) <= 2 * 20 + 6


async def test_items_that_never_wait_need_no_pool_of_consumers(
    redis: Redis, redis_url: str
) -> None:
    # A 500-slot worker running a chunk of 1,000 handlers that never await: a task per
    # slot would be 500 tasks created for nothing.
    settings = settings_for(redis_url, worker_concurrency=500, worker_max_chunks=1)
    store = store_for(redis, settings)
    most_tasks = 0

    async def instant(params: dict[str, Any], ctx: ItemContext) -> Mapping[str, Any]:
        nonlocal most_tasks
        most_tasks = max(most_tasks, len(asyncio.all_tasks()))
        return {}

    options = BatchOptions(chunk_size=1000)
    batch_id = await submit(store, "test.instant", [{}] * 1000, options=options)
    tasks_before = len(asyncio.all_tasks())
    await run_burst(settings, [Handler(name="test.instant", run=instant)])
    assert (await store.get_batch(batch_id)).counts.succeeded == 1000
    # ARQ's task, the job's, a flusher, a lease watchdog, the worker's four (heartbeat,
    # lease renewer, maintenance, callbacks), its poll loop's two (wake-ups, job marks),
    # and a few consumers.
    assert most_tasks - tasks_before <= 2 + 2 + 4 + 2 + 4


async def test_a_chunk_out_of_items_hands_its_slots_to_another_chunks_items(
    redis: Redis, redis_url: str
) -> None:
    # Chunk A's items end while chunk B's consumers are all busy and B has items waiting:
    # A's slots must go to B's waiting items at once, not when one of B's items ends
    # (here none ends until the test says so).
    settings = settings_for(redis_url, worker_concurrency=4, worker_max_chunks=2)
    store = store_for(redis, settings)
    started: dict[str, asyncio.Event] = {}
    release: dict[str, asyncio.Event] = {}

    def event(events: dict[str, asyncio.Event], name: str) -> asyncio.Event:
        return events.setdefault(name, asyncio.Event())

    async def gated(params: dict[str, Any], ctx: ItemContext) -> Mapping[str, Any]:
        event(started, params["name"]).set()
        await event(release, params["name"]).wait()
        return {}

    async def all_started(*names: str) -> None:
        for name in names:
            await event(started, name).wait()

    a = [{"name": f"a{n}"} for n in range(2)]
    await submit(store, "test.gated", a, options=BatchOptions(chunk_size=2))
    worker = asyncio.create_task(run_burst(settings, [Handler(name="test.gated", run=gated)]))
    async with asyncio.timeout(20):
        await all_started("a0", "a1")
        b = [{"name": f"b{n}"} for n in range(6)]
        batch_b = await submit(store, "test.gated", b, options=BatchOptions(chunk_size=6))
        await all_started("b0", "b1")  # the worker's 4 slots are full
        assert not event(started, "b2").is_set()
        for name in ("a0", "a1"):
            event(release, name).set()
        await all_started("b2", "b3")  # b0 and b1 still run
        assert not event(started, "b4").is_set()
        for n in range(6):
            event(release, f"b{n}").set()
        await worker
    assert (await store.get_batch(batch_b)).counts.succeeded == 6
