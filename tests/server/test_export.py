"""ExportBatchResults through a real server, client and Redis: every outcome of a finished
batch as JSON Lines, in submission or custom_id order, resumable from any message's
cursor; NOT_FOUND, INVALID_ARGUMENT and FAILED_PRECONDITION where they belong; and
`batchd results` writing the file."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator
from pathlib import Path
from typing import Any, cast

import grpc
import pytest

from batchd.cli.main import main
from batchd.client import AsyncClient, BatchdError, ExportOrder, ResultsPage
from batchd.core import export
from batchd.core.domain import ItemOutcome, ItemState
from batchd.core.errors import FailedPrecondition
from batchd.core.store import BatchStore
from batchd.server.app import BatchdServer

ECHO = "test.echo"  # published by tests/server/conftest.py's store fixture; chunks of 7
COUNT = 40
# Submission order is not custom_id order: 0 -> i-00, 1 -> i-17, 2 -> i-34, 3 -> i-11, ...
IDS = [f"i-{(n * 17) % COUNT:02d}" for n in range(COUNT)]
BIG = 2**53 + 1  # stays an integer only if the output's JSON goes through untouched


@pytest.fixture
async def client(server: BatchdServer) -> AsyncIterator[AsyncClient]:
    async with AsyncClient(f"127.0.0.1:{server.port}", timeout=10) as client:
        yield client


@pytest.fixture
def small_pages(monkeypatch: pytest.MonkeyPatch) -> None:
    """Pages of a chunk (submission) or five items (custom_id): many messages."""
    monkeypatch.setattr(export, "PAGE_ITEMS", 5)


async def submit(client: AsyncClient, count: int = COUNT) -> str:
    items = [{"custom_id": cid, "params": {"n": n}} for n, cid in enumerate(IDS[:count])]
    return (await client.submit(ECHO, items, batch_id=f"x-{uuid.uuid4().hex[:12]}")).batch.batch_id


async def run_chunks(store: BatchStore, batch_id: str, chunks: range) -> None:
    """Runs chunks as a worker would: every third item FAILED, the others SUCCEEDED."""
    now = time.time()
    for chunk in chunks:
        claimed = await store.claim_chunk(batch_id, chunk, lease_ttl=60)
        assert claimed is not None
        outcomes = [
            ItemOutcome(index, ItemState.SUCCEEDED, 1, now, now + 0.25, _output(index))
            if index % 3
            else ItemOutcome(index, ItemState.FAILED, 2, now, now, None, 14, f"down {index}")
            for index, _, _ in claimed.items
        ]
        await store.record_outcomes(batch_id, chunk, outcomes, token=claimed.token, release=True)


def _output(index: int) -> bytes:
    return json.dumps({"n": index, "big": BIG, "text": "a\nb"}).encode()


async def finished(client: AsyncClient, store: BatchStore, count: int = COUNT) -> str:
    batch_id = await submit(client, count)
    await run_chunks(store, batch_id, range(-(-count // 7)))
    return batch_id


async def pages(client: AsyncClient, batch_id: str, **kwargs: Any) -> list[ResultsPage]:
    return [page async for page in client.export_results(batch_id, **kwargs)]


def lines(pages: list[ResultsPage]) -> list[dict[str, Any]]:
    return [record for page in pages for record in page.records()]


async def test_exports_every_outcome_in_submission_order(
    client: AsyncClient, store: BatchStore
) -> None:
    batch_id = await finished(client, store)
    got = await pages(client, batch_id)
    records = lines(got)
    assert [r["custom_id"] for r in records] == IDS
    assert [r["index"] for r in records] == list(range(COUNT))
    ok, failed = records[1], records[3]
    assert ok["state"] == "SUCCEEDED"
    assert ok["attempts"] == 1
    assert ok["error"] is None
    assert ok["output"] == {"n": 1, "big": BIG, "text": "a\nb"}
    assert ok["start_time"].endswith("Z")
    assert ok["end_time"] > ok["start_time"]
    assert failed["state"] == "FAILED"
    assert failed["output"] is None
    assert failed["error"] == {"code": "UNAVAILABLE", "message": "down 3"}
    assert set(records[0]) == {
        "custom_id", "index", "state", "attempts", "output", "error", "start_time", "end_time"
    }  # fmt: skip
    # A file of lines: each ends with a newline; the last page ends the export.
    assert all(page.lines.endswith(b"\n") for page in got)
    assert sum(page.line_count for page in got) == COUNT
    assert (got[-1].position, got[-1].total_items) == (COUNT, COUNT)


async def test_exports_by_custom_id(client: AsyncClient, store: BatchStore) -> None:
    batch_id = await finished(client, store)
    records = lines(await pages(client, batch_id, order=ExportOrder.CUSTOM_ID))
    assert [r["custom_id"] for r in records] == sorted(IDS)
    assert all(IDS[r["index"]] == r["custom_id"] for r in records)
    # The same outcomes as in submission order.
    by_index = {r["index"]: r for r in lines(await pages(client, batch_id))}
    assert all(by_index[r["index"]] == r for r in records)


@pytest.mark.parametrize("order", ["submission", "id"])
async def test_a_cursor_resumes_with_exactly_the_rest(
    client: AsyncClient, store: BatchStore, small_pages: None, order: str
) -> None:
    batch_id = await finished(client, store)
    whole = await pages(client, batch_id, order=order)
    assert len(whole) > 3
    everything = lines(whole)
    for at, page in enumerate(whole):
        rest = lines(await pages(client, batch_id, order=order, after=page.cursor))
        done = sum(p.line_count for p in whole[: at + 1])
        assert page.position == done
        assert rest == everything[done:]


async def test_an_export_in_custom_id_order_survives_its_index_expiring(
    client: AsyncClient, store: BatchStore, small_pages: None
) -> None:
    batch_id = await finished(client, store)
    exporting = client.export_results(batch_id, order="id")
    first = await anext(exporting)
    await store.redis.delete(store.keys.ids_by_name(batch_id))
    rest = [page async for page in exporting]
    assert [r["custom_id"] for r in lines([first, *rest])] == sorted(IDS)


async def test_the_index_goes_with_its_batch(client: AsyncClient, store: BatchStore) -> None:
    batch_id = await finished(client, store)
    await pages(client, batch_id, order="id")
    index = store.keys.ids_by_name(batch_id)
    assert 0 < await store.redis.pttl(index) <= 3_600_000
    await client.delete(batch_id)
    assert not await store.redis.exists(index)


async def test_a_cancelled_batch_exports_its_cancelled_items(
    client: AsyncClient, store: BatchStore
) -> None:
    batch_id = await submit(client)
    await run_chunks(store, batch_id, range(1))
    await client.cancel(batch_id)
    records = lines(await pages(client, batch_id))
    assert [r["state"] for r in records[:7]] == ["FAILED", "SUCCEEDED", "SUCCEEDED"] * 2 + [
        "FAILED"
    ]
    assert {r["state"] for r in records[7:]} == {"CANCELLED"}
    assert records[7]["attempts"] == 0
    assert records[7]["start_time"] is None


async def test_an_unfinished_batch_is_failed_precondition(
    client: AsyncClient, store: BatchStore
) -> None:
    batch_id = await submit(client)
    await run_chunks(store, batch_id, range(2))  # RUNNING, some outcomes in
    for order in ("submission", "id"):
        with pytest.raises(BatchdError) as caught:
            await pages(client, batch_id, order=order)
        assert caught.value.code == grpc.StatusCode.FAILED_PRECONDITION
        assert "RUNNING" in caught.value.message
    assert not await store.redis.exists(store.keys.ids_by_name(batch_id))


async def test_a_batch_retried_during_its_export_ends_it(
    client: AsyncClient, store: BatchStore, small_pages: None
) -> None:
    # Through the store: a stream's messages may all be in flight before the retry.
    batch_id = await finished(client, store)
    exporting = store.export_results(batch_id, export.ExportOrder.SUBMISSION, "")
    first = await anext(exporting)
    await client.retry(batch_id)
    with pytest.raises(FailedPrecondition, match="RUNNING"):
        async for _ in exporting:
            pass
    assert len(first.rows) == 7


async def test_a_missing_batch_is_not_found(client: AsyncClient) -> None:
    for order in ("submission", "id"):
        with pytest.raises(BatchdError) as caught:
            await pages(client, "no-such-batch", order=order)
        assert caught.value.code == grpc.StatusCode.NOT_FOUND
        assert caught.value.message == "batch 'no-such-batch' not found"


@pytest.mark.parametrize(
    ("order", "after", "why"),
    [
        ("submission", "not a cursor!", "not a cursor of an export"),
        ("submission", "czo5OTk", "beyond the batch's last item"),  # s:999
        ("submission", "bjppLTAx", "a cursor of an export in the other order"),  # n:i-01
        ("id", "czox", "a cursor of an export in the other order"),  # s:1
        ("id", "eDox", "not a cursor of an export"),  # x:1
    ],
)
async def test_a_bad_cursor_is_invalid_argument(
    client: AsyncClient, store: BatchStore, order: str, after: str, why: str
) -> None:
    batch_id = await finished(client, store, count=7)
    with pytest.raises(BatchdError) as caught:
        await pages(client, batch_id, order=order, after=after)
    assert caught.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert [(v.field, v.description) for v in caught.value.field_violations] == [("after", why)]


async def test_a_reader_that_stops_ends_the_call(client: AsyncClient, store: BatchStore) -> None:
    batch_id = await finished(client, store)
    exporting = client.export_results(batch_id)
    assert (await anext(exporting)).line_count
    await cast(AsyncGenerator[ResultsPage, None], exporting).aclose()
    # The server is no worse for it.
    assert len(lines(await pages(client, batch_id))) == COUNT


async def test_batchd_results_writes_the_file(
    server: BatchdServer,
    client: AsyncClient,
    store: BatchStore,
    small_pages: None,
    tmp_path: Path,
) -> None:
    batch_id = await finished(client, store)
    path = tmp_path / "out.jsonl"
    target = f"127.0.0.1:{server.port}"

    def export_to_file(*args: str) -> int:
        with path.open("a") as out, contextlib.redirect_stdout(out):
            return main(["--target", target, "results", batch_id, *args])

    assert await asyncio.to_thread(export_to_file, "--order", "id") == 0
    records = [json.loads(line) for line in path.read_text().splitlines()]
    assert [r["custom_id"] for r in records] == sorted(IDS)
    # A file broken off after two messages, resumed from the second one's cursor.
    whole = await pages(client, batch_id)
    path.write_bytes(whole[0].lines + whole[1].lines)
    assert await asyncio.to_thread(export_to_file, "--after", whole[1].cursor) == 0
    assert path.read_bytes() == b"".join(page.lines for page in whole)


async def test_large_outputs_split_a_page_into_messages_that_resume(
    client: AsyncClient, store: BatchStore
) -> None:
    batch_id = await submit(client, count=7)
    claimed = await store.claim_chunk(batch_id, 0, lease_ttl=60)
    assert claimed is not None
    now = time.time()
    big = json.dumps({"blob": "x" * 400_000}).encode()  # three lines pass 1 MiB
    outcomes = [
        ItemOutcome(index, ItemState.SUCCEEDED, 1, now, now, big) for index, _, _ in claimed.items
    ]
    await store.record_outcomes(batch_id, 0, outcomes, token=claimed.token, release=True)
    for order in ("submission", "id"):
        got = await pages(client, batch_id, order=order)
        assert [page.line_count for page in got] == [2, 2, 2, 1]
        assert [page.position for page in got] == [2, 4, 6, 7]
        assert all(len(page.lines) < 1 << 20 for page in got)
        everything = lines(got)
        rest = lines(await pages(client, batch_id, order=order, after=got[1].cursor))
        assert rest == everything[4:]
