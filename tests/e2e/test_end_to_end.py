"""Batches through the real client, server, Redis and worker, watched to completion."""

from __future__ import annotations

import json
import uuid

import grpc
import pytest

from batchd.client import AsyncClient, BatchProgress, BatchState, ItemState


async def watch_to_end(client: AsyncClient, batch_id: str) -> list[BatchProgress]:
    snapshots = []
    async for progress in client.watch(batch_id, min_interval=0.05):
        c = progress.counts
        # The invariant a progress bar relies on, at every snapshot.
        assert c.pending + c.claimed + c.running + c.finished == progress.total_items
        snapshots.append(progress)
    return snapshots


@pytest.mark.slow
async def test_10000_noop_items(client: AsyncClient) -> None:
    items = [{"custom_id": f"n{i}", "params": {}} for i in range(10_000)]
    submitted = await client.submit("noop", items, options={"chunk_size": 500})
    assert submitted.batch.chunk_count == 20
    snapshots = await watch_to_end(client, submitted.batch.batch_id)
    final = snapshots[-1]
    assert final.state == BatchState.COMPLETED
    assert final.counts.succeeded == 10_000
    assert final.end_time is not None
    finished = [p.counts.finished for p in snapshots]
    assert finished == sorted(finished)  # progress never goes backwards
    outcomes = [item async for item in client.items(submitted.batch.batch_id, page_size=1000)]
    assert [o.custom_id for o in outcomes] == [f"n{i}" for i in range(10_000)]
    assert {(o.state, o.attempts) for o in outcomes} == {(ItemState.SUCCEEDED, 1)}


async def test_300_http_requests_some_404(client: AsyncClient, http_base: str) -> None:
    def url(i: int) -> str:
        return f"{http_base}/{'missing' if i % 7 == 0 else 'ok'}/{i}"

    items = [(f"h{i}", {"url": url(i), "method": "POST", "json": {"i": i}}) for i in range(300)]
    submitted = await client.upload("http.request", items, items_per_message=64)
    batch_id = submitted.batch.batch_id
    final = (await watch_to_end(client, batch_id))[-1]
    missing = {f"h{i}" for i in range(300) if i % 7 == 0}
    assert final.state == BatchState.COMPLETED
    assert (final.counts.succeeded, final.counts.failed) == (300 - len(missing), len(missing))
    failed = [item async for item in client.items(batch_id, states=[ItemState.FAILED])]
    assert {f.custom_id for f in failed} == missing
    assert all(f.error is not None and f.error.code == grpc.StatusCode.NOT_FOUND for f in failed)
    succeeded = [item async for item in client.items(batch_id, states=[ItemState.SUCCEEDED])]
    sample = succeeded[0]
    assert sample.output is not None
    assert sample.output["status"] == 200
    assert json.loads(sample.output["body"]) == {"n": sample.custom_id[1:], "method": "POST"}


@pytest.mark.slow
async def test_upload_runs_to_completion(client: AsyncClient) -> None:
    def generate() -> object:
        for i in range(50_000):
            yield {"custom_id": f"u{i}", "params": {}}

    submitted = await client.upload("noop", generate(), options={"chunk_size": 1000})  # type: ignore[arg-type]
    assert submitted.batch.total_items == 50_000
    final = (await watch_to_end(client, submitted.batch.batch_id))[-1]
    assert final.counts.succeeded == 50_000


async def test_cancel_mid_run(client: AsyncClient) -> None:
    items = [(f"s{i}", {"seconds": 0.01}) for i in range(3000)]
    submitted = await client.submit("sleep", items, options={"chunk_size": 20})
    batch_id = submitted.batch.batch_id
    async for progress in client.watch(batch_id, min_interval=0.02):
        if progress.counts.succeeded >= 100:
            break
    cancelled = await client.cancel(batch_id)
    assert cancelled.state in (BatchState.CANCELLING, BatchState.CANCELLED)
    again = await client.cancel(batch_id)  # idempotent
    assert again.state in (BatchState.CANCELLING, BatchState.CANCELLED)
    final = (await watch_to_end(client, batch_id))[-1]
    assert final.state == BatchState.CANCELLED
    assert final.counts.cancelled > 0
    assert final.counts.pending == final.counts.running == final.counts.claimed == 0
    states = {item.state async for item in client.items(batch_id, page_size=1000)}
    assert states <= {ItemState.SUCCEEDED, ItemState.CANCELLED}


async def test_request_id_replay_through_the_client(client: AsyncClient) -> None:
    request_id = uuid.uuid4().hex
    items: list[tuple[str, dict[str, object]]] = [(f"r{i}", {}) for i in range(10)]
    first = await client.submit("noop", items, request_id=request_id)
    again = await client.submit("noop", items, request_id=request_id)
    assert again.replayed
    assert again.batch.batch_id == first.batch.batch_id


async def test_list_batches_newest_first(client: AsyncClient) -> None:
    ids = [(await client.submit("noop", [("x", {})])).batch.batch_id for _ in range(3)]
    page = await client.list_page(page_size=3)
    assert {b.batch_id for b in page.items} == set(ids)
    created = [b.create_time for b in page.items]
    assert created == sorted(created, reverse=True)  # type: ignore[type-var]
    assert page.next_page_token


async def test_handlers_are_listed_with_live_workers(client: AsyncClient) -> None:
    handlers = {h.name: h for h in await client.handlers()}
    assert {"noop", "sleep", "http.request"} <= set(handlers)
    assert handlers["http.request"].live_workers >= 1
    assert handlers["http.request"].params_schema["properties"]["url"]
