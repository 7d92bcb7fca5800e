"""A watch outlives the server's connection age: the stream cut when the grace ends
is resumed by the client on its own."""

from __future__ import annotations

import pytest
from support.in_process_server import running_server

from batchd.client import AsyncClient, BatchState, WatchReconnect
from batchd.core.store import BatchStore


@pytest.mark.slow
async def test_a_watch_outlives_the_connection_age(redis_url: str, store: BatchStore) -> None:
    reconnects: list[WatchReconnect] = []
    async with (
        running_server(
            redis_url, grpc_max_connection_age=0.3, grpc_max_connection_age_grace=0.3
        ) as server,
        AsyncClient(f"127.0.0.1:{server.port}", timeout=10) as client,
    ):
        # No worker serves test.echo here: the batch stays QUEUED while it is watched.
        submitted = await client.submit("test.echo", [{"custom_id": "a", "params": {"n": 1}}])
        batch_id = submitted.batch.batch_id
        snapshots_after = 0
        async for progress in client.watch(
            batch_id, heartbeat_interval=0.1, on_reconnect=reconnects.append
        ):
            assert progress.state == BatchState.QUEUED
            snapshots_after += bool(reconnects)
            if snapshots_after == 2:
                break
        await client.cancel(batch_id)
    assert reconnects[0].error.code.name == "UNAVAILABLE"
