"""The client and the CLI against the real service: an in-process gRPC server on a free
port and an in-process worker, over the session's private Valkey."""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from support.in_process_server import client_of, running_server

from batchd.cli.main import main
from batchd.client import (
    MAX_ITEM_BYTES,
    MAX_REQUEST_BYTES,
    AsyncClient,
    BatchdError,
    BatchState,
    ItemState,
)
from batchd.core.config import Settings
from batchd.server.app import MAX_MESSAGE_BYTES
from batchd.worker import Handler, ItemContext
from batchd.worker.app import build_worker

OUTPUT = {"n": 5000, "x": 1.5, "nested": {"status": 200, "rows": [1, 2.0]}, "big": 2**60 + 1}


async def _typed(params: dict[str, Any], ctx: ItemContext) -> dict[str, Any]:
    return OUTPUT


TYPED = Handler(
    name="test.typed",
    description="Returns the same output of integers and floats for every item.",
    params_schema={"type": "object"},
    run=_typed,
)


class Service:
    def __init__(self, client: AsyncClient, target: str) -> None:
        self.client = client
        self.target = target

    async def cli(self, *args: str) -> int:
        return await asyncio.to_thread(main, ["--target", self.target, *args])

    async def finished(self, batch_id: str) -> None:
        async for progress in self.client.watch(batch_id, min_interval=0.02):
            if progress.state.is_terminal:
                assert progress.state == BatchState.COMPLETED
                return


@pytest.fixture
async def service(redis_url: str) -> AsyncIterator[Service]:
    # A key prefix of its own: this worker takes no other test's jobs.
    prefix = f"client-{uuid.uuid4().hex[:8]}:"
    settings = Settings(redis_url=redis_url, host="127.0.0.1", key_prefix=prefix)
    # Items as large as the client sends: the service's own params limit (256 KiB by
    # default) raised to the transport's, whose edge these tests probe.
    async with running_server(
        redis_url, key_prefix=prefix, max_params_bytes=MAX_ITEM_BYTES
    ) as server:
        worker = build_worker(settings, handlers={TYPED.name: TYPED}, poll_delay=0.02)
        task = asyncio.create_task(worker.async_run())
        await worker.started.wait()
        try:
            async with client_of(server) as client:
                yield Service(client, f"127.0.0.1:{server.port}")
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            await worker.close()


async def test_outputs_keep_their_integers(
    service: Service, capsys: pytest.CaptureFixture[str]
) -> None:
    submitted = await service.client.submit("test.typed", [("a", {}), ("b", {})])
    batch_id = submitted.batch.batch_id
    await service.finished(batch_id)
    items = [item async for item in service.client.items(batch_id)]
    assert [i.state for i in items] == [ItemState.SUCCEEDED] * 2
    output = items[0].output
    assert output == OUTPUT
    assert output is not None
    assert type(output["n"]) is int
    assert type(output["x"]) is float
    assert type(output["nested"]["status"]) is int
    assert output["big"] == 2**60 + 1  # a double would have lost the last bit

    capsys.readouterr()
    assert await service.cli("items", batch_id, "--json") == 0
    lines = capsys.readouterr().out.splitlines()
    assert '"n": 5000,' in lines[0]
    assert json.loads(lines[0])["output"] == OUTPUT
    assert await service.cli("items", batch_id) == 0
    table = capsys.readouterr().out
    assert '{"n":5000,"x":1.5,"nested":{"status":200,"rows":[1,2.0]}' in table


async def test_the_client_size_limit_is_what_the_service_reads(service: Service) -> None:
    assert MAX_REQUEST_BYTES == MAX_MESSAGE_BYTES
    # The largest item the client sends, alone in a SubmitBatch and in an upload: both
    # reach the service and are stored.
    params = b'{"blob":"' + b"x" * (MAX_ITEM_BYTES - 22) + b'"}'
    submitted = await service.client.submit("test.typed", [("edge", params)])
    assert submitted.batch.total_items == 1
    uploaded = await service.client.upload("test.typed", [("a", {}), ("edge", params)])
    assert uploaded.batch.total_items == 2
    # One byte more is refused by the client, naming the item and the limit.
    for send in (service.client.submit, service.client.upload):
        with pytest.raises(BatchdError) as caught:
            await send("test.typed", [("a", {}), ("over", params + b" ")])
        error = caught.value
        assert error.code == grpc.StatusCode.INVALID_ARGUMENT
        assert error.field_violations[0].field == "items[1]"
        assert "'over'" in error.field_violations[0].description
        assert f"limit of {MAX_ITEM_BYTES:,} bytes" in error.field_violations[0].description
