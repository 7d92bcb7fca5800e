"""Upload limits through the real clients, a real server on a free port and the session's
private Valkey: what the caller hears when an upload is refused mid-stream, and the bytes
all uploads not yet committed may stage together."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import grpc
import pytest
from redis.asyncio import Redis
from support.polling import poll

from batchd.client import AsyncClient, BatchdError, BatchOptions, Client
from batchd.core.config import Settings
from batchd.core.domain import NewItem
from batchd.core.keys import Keys
from batchd.core.store import BatchStore
from batchd.core.upload import staged_bytes
from batchd.server.app import BatchdServer, start_server

from .conftest import ECHO

KIB = 1024
MIB = 1024 * KIB
PARAMS = {"n": 1, "s": "x" * (64 * KIB)}  # 64 KiB items: the server refuses mid-write
PARAMS_JSON = b'{"n":1,"s":"' + b"x" * (64 * KIB) + b'"}'  # as the client sends them


@pytest.fixture
async def prefix(redis_url: str) -> AsyncIterator[str]:
    """A key prefix of this test's own: the staging index it sees is its uploads' alone."""
    prefix = f"limits-{uuid.uuid4().hex[:8]}:"
    redis = Redis.from_url(redis_url)
    await BatchStore(redis, Keys(prefix)).publish_worker("test", [ECHO], ttl=3600)
    yield prefix
    await redis.aclose()


async def serve(redis_url: str, prefix: str, **limits: Any) -> BatchdServer:
    settings = Settings(redis_url=redis_url, host="127.0.0.1", key_prefix=prefix, **limits)
    return await start_server(settings, port=0, metrics_port=0)


def endless() -> Iterator[tuple[str, dict[str, object]]]:
    n = 0
    while True:
        yield f"item-{n}", PARAMS
        n += 1


async def test_async_upload_refused_mid_stream_reports_the_quota(
    redis_url: str, prefix: str
) -> None:
    server = await serve(redis_url, prefix, max_upload_bytes=MIB)
    try:
        async with AsyncClient(f"127.0.0.1:{server.port}") as client:
            for _ in range(6):
                with pytest.raises(BatchdError) as caught:
                    await client.upload("test.echo", endless(), options=BatchOptions(chunk_size=4))
                error = caught.value
                assert error.code == grpc.StatusCode.RESOURCE_EXHAUSTED, error
                assert [v.subject for v in error.quota_violations] == ["max_upload_bytes"]
                assert error.retry_after is not None
                assert error.retry_after > 0
    finally:
        await server.stop(grace=0)


async def test_sync_upload_refused_mid_stream_reports_the_quota(
    redis_url: str, prefix: str
) -> None:
    server = await serve(redis_url, prefix, max_upload_bytes=MIB)

    def upload_thrice() -> list[BatchdError]:
        errors = []
        with Client(f"127.0.0.1:{server.port}") as client:
            for _ in range(3):
                with pytest.raises(BatchdError) as caught:
                    client.upload("test.echo", endless(), options=BatchOptions(chunk_size=4))
                errors.append(caught.value)
        return errors

    try:
        for error in await asyncio.to_thread(upload_thrice):
            assert error.code == grpc.StatusCode.RESOURCE_EXHAUSTED, error
            assert [v.subject for v in error.quota_violations] == ["max_upload_bytes"]
    finally:
        await server.stop(grace=0)


@pytest.mark.parametrize("ending", ["commit", "abort"])
async def test_uploads_together_stage_at_most_max_staged_bytes(
    redis_url: str, prefix: str, ending: str
) -> None:
    # Ten items of 64 KiB staged by the first upload, open; the second fits five more
    # under the cap (1 MiB), not ten. Once the first ends, its bytes are free again.
    server = await serve(redis_url, prefix, max_staged_bytes=MIB)
    redis = Redis.from_url(redis_url)
    first_staged = sum(staged_bytes(NewItem(f"item-{n}", PARAMS_JSON)) for n in range(10))
    finish = asyncio.Event()

    async def first_items() -> AsyncIterator[tuple[str, dict[str, object]]]:
        for n in range(10):
            yield f"item-{n}", PARAMS
        await finish.wait()
        if ending == "abort":
            raise RuntimeError("the items run dry")

    async def staged() -> int | None:
        sizes = await redis.hvals(Keys(prefix).staging_bytes)
        total = sum(int(size) for size in sizes)
        return total if total >= first_staged else None

    options = BatchOptions(chunk_size=5)
    try:
        async with AsyncClient(f"127.0.0.1:{server.port}") as client:
            first = asyncio.create_task(
                client.upload("test.echo", first_items(), options=options, items_per_message=5)
            )
            assert await poll(staged) == first_staged
            with pytest.raises(BatchdError) as caught:
                await client.upload("test.echo", endless(), options=options, batch_id="second")
            error = caught.value
            assert error.code == grpc.StatusCode.RESOURCE_EXHAUSTED, error
            assert [v.subject for v in error.quota_violations] == ["max_staged_bytes"]
            assert error.retry_after is not None
            assert error.retry_after > 0
            assert [key async for key in redis.scan_iter(match=f"{prefix}*second*")] == []
            assert await staged() == first_staged  # the second left nothing counted

            finish.set()
            if ending == "commit":
                assert (await first).batch.total_items == 10
            else:
                with pytest.raises(RuntimeError):
                    await first
            assert await redis.hlen(Keys(prefix).staging_bytes) == 0
            items = [(f"item-{n}", PARAMS) for n in range(15)]
            third = await client.upload("test.echo", items, options=options)
            assert third.batch.total_items == 15
    finally:
        await redis.aclose()
        await server.stop(grace=0)
