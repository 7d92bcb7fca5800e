"""The server-wide cap on calls open at once (BATCHD_GRPC_MAX_CONCURRENT_CALLS), through
a real server on a real port: a call past it is RESOURCE_EXHAUSTED naming the setting,
health checks are answered all the same, and a call that ends frees its place."""

from __future__ import annotations

from collections.abc import AsyncGenerator
from typing import cast

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from support.in_process_server import HOST, running_server
from support.polling import poll

from batchd.client import AsyncClient, BatchdError, BatchProgress
from batchd.core.store import BatchStore

ECHO = "test.echo"  # published by tests/server/conftest.py's store fixture


async def test_calls_past_the_cap_are_refused_naming_the_setting(
    redis_url: str, store: BatchStore
) -> None:
    async with (
        running_server(redis_url, grpc_max_concurrent_calls=2) as server,
        AsyncClient(f"{HOST}:{server.port}", timeout=10) as client,
    ):
        submitted = await client.submit(ECHO, [{"custom_id": "a", "params": {"n": 1}}])
        batch_id = submitted.batch.batch_id
        # No worker serves test.echo here: the batch stays QUEUED, its watches open.
        watches = [cast(AsyncGenerator[BatchProgress, None], client.watch(batch_id)) for _ in "ab"]
        try:
            for watch in watches:
                await anext(watch)
            with pytest.raises(BatchdError) as caught:
                await client.get(batch_id)
            error = caught.value
            assert error.code == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "BATCHD_GRPC_MAX_CONCURRENT_CALLS" in error.message
            [violation] = error.quota_violations
            assert violation.subject == "grpc_max_concurrent_calls"
            assert "at most 2 (BATCHD_GRPC_MAX_CONCURRENT_CALLS)" in violation.description
            assert error.retry_after == 1

            # A server at its cap is busy, not sick: health checks are answered.
            async with grpc.aio.insecure_channel(f"{HOST}:{server.port}") as channel:
                health = health_pb2_grpc.HealthStub(channel)
                request = health_pb2.HealthCheckRequest(service="")
                answer = await health.Check(request, timeout=10)  # type: ignore[attr-defined]
                # So is the Watch stream a balancing client holds on each connection.
                updates = health.Watch(request, timeout=10)  # type: ignore[attr-defined]
                watched = await updates.read()
                updates.cancel()
            assert answer.status == health_pb2.HealthCheckResponse.SERVING
            assert watched.status == health_pb2.HealthCheckResponse.SERVING

            # A call that ends frees its place.
            await watches[0].aclose()

            async def answered() -> bool | None:
                try:
                    await client.get(batch_id)
                except BatchdError as exc:
                    if exc.code != grpc.StatusCode.RESOURCE_EXHAUSTED:
                        raise
                    return None
                return True

            await poll(answered)
        finally:
            for watch in watches:
                await watch.aclose()
