"""What operators rely on: reflection for grpcurl, and health that follows Redis."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)

from batchd.core.config import Settings
from batchd.server.app import BatchdServer, start_server
from batchd.v1 import batch_pb2, batch_service_pb2, batch_service_pb2_grpc

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def reflected_services(port: int) -> list[str]:
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        return list(ProtoReflectionDescriptorDatabase(channel).get_services())


async def test_reflection_lists_and_describes_the_service(server: BatchdServer) -> None:
    # The reflection client is synchronous; keep it off the server's event loop.
    services = await asyncio.to_thread(reflected_services, server.port)
    assert "batchd.v1.BatchService" in services
    assert "grpc.health.v1.Health" in services

    def describe() -> list[str]:
        with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            database = ProtoReflectionDescriptorDatabase(channel)
            found = database.FindFileContainingSymbol("batchd.v1.BatchService")
            return [m.name for m in found.service[0].method]

    methods = await asyncio.to_thread(describe)
    assert {"SubmitBatch", "UploadBatch", "WatchProgress", "ListBatchItems"} <= set(methods)


@pytest.mark.slow
async def test_health_follows_redis(redis_server_factory: Callable[..., object]) -> None:
    redis = redis_server_factory()
    settings = Settings(redis_url=redis.url, host="127.0.0.1")  # type: ignore[attr-defined]
    running = await start_server(settings, port=0, metrics_port=0)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            health = health_pb2_grpc.HealthStub(channel)
            request = health_pb2.HealthCheckRequest(service="batchd.v1.BatchService")
            updates = health.Watch(request)  # type: ignore[attr-defined]  # stubs lack Watch
            assert (await updates.read()).status == SERVING
            redis.stop()  # type: ignore[attr-defined]
            assert (await updates.read()).status == NOT_SERVING
            check = await health.Check(  # type: ignore[attr-defined]
                health_pb2.HealthCheckRequest(service="")
            )
            assert check.status == NOT_SERVING
            redis.start()  # type: ignore[attr-defined]
            assert (await updates.read()).status == SERVING
            updates.cancel()
    finally:
        await running.stop(grace=0)


@pytest.mark.slow
async def test_shutdown_ends_watches_with_unavailable(redis_url: str, store: object) -> None:
    settings = Settings(redis_url=redis_url, host="127.0.0.1")
    running = await start_server(settings, port=0, metrics_port=0)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel:
        stub = batch_service_pb2_grpc.BatchServiceStub(channel)
        items = [batch_pb2.Item(custom_id="a", params_json=b'{"n":1}')]
        submitted = await stub.SubmitBatch(
            batch_service_pb2.SubmitBatchRequest(handler="test.echo", items=items)
        )
        call = stub.WatchProgress(
            batch_service_pb2.WatchProgressRequest(batch_id=submitted.batch.batch_id)
        )
        first = await call.read()
        assert isinstance(first, batch_service_pb2.WatchProgressResponse)
        assert first.progress.state == batch_pb2.BATCH_STATE_QUEUED
        stopping = asyncio.create_task(running.stop(grace=5))
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await call.read()
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
        await stopping
