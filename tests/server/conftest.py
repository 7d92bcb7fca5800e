"""A real batchd gRPC server on a free port, against the session's private Redis; and
one with API keys (`secured`) with the store its keys are made in (`credentials`)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

import grpc
import pytest
from redis.asyncio import Redis
from support.in_process_server import running_server

from batchd.core.config import Settings
from batchd.core.credentials import CredentialStore
from batchd.core.domain import BatchOptions, HandlerSpec, RetryPolicy
from batchd.core.store import BatchStore
from batchd.server.app import BatchdServer, start_server
from batchd.v1 import batch_service_pb2_grpc

if TYPE_CHECKING:
    from batchd.v1.batch_service_pb2_grpc import BatchServiceAsyncStub

# A handler published by a stand-in worker: the server validates against the catalog
# alone, so these tests need no worker process.
ECHO = HandlerSpec(
    name="test.echo",
    description="Echoes its params.",
    params_schema={
        "type": "object",
        "properties": {"n": {"type": "integer", "minimum": 0}, "s": {"type": "string"}},
        "required": ["n"],
        "additionalProperties": False,
    },
    default_options=BatchOptions(chunk_size=7, retry_policy=RetryPolicy(max_attempts=3)),
)


@pytest.fixture(scope="session")
async def store(redis_url: str) -> AsyncIterator[BatchStore]:
    redis = Redis.from_url(redis_url)
    store = BatchStore(redis)
    await store.publish_worker(f"test-{uuid.uuid4().hex}", [ECHO], ttl=3600)
    yield store
    await redis.aclose()


@pytest.fixture(scope="session")
async def server(redis_url: str, store: BatchStore) -> AsyncIterator[BatchdServer]:
    settings = Settings(
        redis_url=redis_url, host="127.0.0.1", watch_min_interval=0.01, watch_min_heartbeat=0.01
    )
    running = await start_server(settings, port=0, metrics_port=0)
    yield running
    await running.stop(grace=0)


@pytest.fixture(scope="session")
async def channel(server: BatchdServer) -> AsyncIterator[grpc.aio.Channel]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        yield channel


@pytest.fixture(scope="session")
def stub(channel: grpc.aio.Channel) -> BatchServiceAsyncStub:
    return batch_service_pb2_grpc.BatchServiceStub(channel)


@pytest.fixture(scope="module")
async def credentials(redis_url: str) -> AsyncIterator[CredentialStore]:
    """The API keys of the session's Redis: make keys of any tenant and role."""
    redis = Redis.from_url(redis_url)
    yield CredentialStore(redis)
    await redis.aclose()


@pytest.fixture(scope="module")
async def secured(redis_url: str, store: BatchStore) -> AsyncIterator[BatchdServer]:
    """A server taking API keys (--auth tokens), caching a verified key for a second."""
    async with running_server(redis_url, auth="tokens", auth_cache_seconds=1.0) as server:
        yield server
