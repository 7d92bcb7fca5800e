"""Dead letters and redrive: failed items keep their error; once the cause is fixed,
RetryBatchItems runs them again and the batch completes."""

from __future__ import annotations

import uuid

import grpc

from batchd.client import AsyncClient, BatchProgress, BatchState, ItemState

from .conftest import BROKEN


async def final(client: AsyncClient, batch_id: str) -> BatchProgress:
    last = None
    async for progress in client.watch(batch_id, min_interval=0.05):
        last = progress
    assert last is not None
    return last


async def test_failed_items_are_redriven_after_a_fix(client: AsyncClient, http_base: str) -> None:
    BROKEN.update({"3", "7", "11"})
    items = [(f"r{i}", {"url": f"{http_base}/broken/{i}"}) for i in range(20)]
    submitted = await client.submit("http.request", items)
    batch_id = submitted.batch.batch_id
    done = await final(client, batch_id)
    assert done.state == BatchState.COMPLETED
    assert done.counts.failed == 3
    failed = [item async for item in client.items(batch_id, states=[ItemState.FAILED])]
    assert {f.custom_id for f in failed} == {"r3", "r7", "r11"}
    for item in failed:
        assert item.attempts == 1  # a 4xx is permanent: no retry
        assert item.error is not None
        assert item.error.code == grpc.StatusCode.FAILED_PRECONDITION
        assert "422" in item.error.message
        assert item.end_time is not None

    BROKEN.clear()  # the downstream is fixed
    request_id = uuid.uuid4().hex
    redriven = await client.retry(batch_id, request_id=request_id)
    assert redriven.requeued == 3
    assert redriven.batch.state == BatchState.RUNNING
    assert redriven.batch.counts.failed == 0
    again = await client.retry(batch_id, request_id=request_id)
    assert again.replayed
    assert again.requeued == 3
    done = await final(client, batch_id)
    assert done.state == BatchState.COMPLETED
    assert done.counts.succeeded == 20


async def test_redrive_by_custom_id(client: AsyncClient, http_base: str) -> None:
    BROKEN.update({"1", "2"})
    items = [(f"i{i}", {"url": f"{http_base}/broken/{i}"}) for i in range(4)]
    batch_id = (await client.submit("http.request", items)).batch.batch_id
    await final(client, batch_id)
    BROKEN.clear()
    redriven = await client.retry(batch_id, ["i2"])
    assert redriven.requeued == 1
    done = await final(client, batch_id)
    assert (done.counts.succeeded, done.counts.failed) == (3, 1)
    await client.delete(batch_id)
    states = [b.state async for b in client.list(states=[BatchState.COMPLETED])]
    assert states  # other batches remain; the deleted one is gone
    assert batch_id not in {b.batch_id async for b in client.list()}
