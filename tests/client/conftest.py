"""Fixtures: a scripted real grpc.aio server (client_fakes.py) and clients of it."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest
from client.client_fakes import FAST_RECONNECT, FakeBatchService, FakeServer

from batchd.client import AsyncClient, Client


@pytest.fixture
def service() -> FakeBatchService:
    return FakeBatchService()


@pytest.fixture
async def server(service: FakeBatchService) -> AsyncIterator[FakeServer]:
    running = FakeServer(service)
    await running.start()
    yield running
    await running.stop()


@pytest.fixture
async def aclient(server: FakeServer) -> AsyncIterator[AsyncClient]:
    async with AsyncClient(server.target, channel_options=FAST_RECONNECT, timeout=10) as client:
        yield client


@pytest.fixture
def client(server: FakeServer) -> Iterator[Client]:
    """A blocking client: call it through asyncio.to_thread so the server keeps serving."""
    with Client(server.target, channel_options=FAST_RECONNECT, timeout=10) as client:
        yield client
