"""Upload limits through the real clients, a real server on a free port and the session's
private Valkey: what the caller hears when an upload is refused mid-stream."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import grpc
import pytest
from redis.asyncio import Redis

from batchd.client import AsyncClient, BatchdError, BatchOptions, Client
from batchd.core.config import Settings
from batchd.core.keys import Keys
from batchd.core.store import BatchStore
from batchd.server.app import BatchdServer, start_server

from .conftest import ECHO

KIB = 1024
MIB = 1024 * KIB
PARAMS = {"n": 1, "s": "x" * (64 * KIB)}  # 64 KiB items: the server refuses mid-write


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
    return await start_server(settings, port=0)


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
