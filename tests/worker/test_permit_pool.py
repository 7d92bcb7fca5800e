"""The process's rate-permit pool (batchd.worker.flow_gate.PermitPool) on a real private Redis:
what it leaves running when the worker closes."""

from __future__ import annotations

import asyncio
import time

from redis.asyncio import Redis
from support.redis_server import RedisServerFactory

from batchd.core.domain import BatchOptions
from batchd.core.keys import Keys
from batchd.core.logs import get_logger
from batchd.core.store import BatchStore
from batchd.core.throttle import buckets_for
from batchd.worker.flow_gate import RENEW_AHEAD, PermitPool
from batchd.worker.outages import RETRY_ON, client_retry

RENEWAL = "renew free period"


async def test_closing_the_pool_ends_a_renewal_waiting_for_redis(
    redis_server_factory: RedisServerFactory,
) -> None:
    # A free period is renewed in the background. A renewal still waiting for Redis when
    # the worker closed its Redis pool got its connection cut, and the worker's client
    # (which retries a broken connection) reconnected: a connection nobody closed.
    server = redis_server_factory()
    admin = Redis.from_url(server.url)
    # Like the worker's: retries a command whose connection breaks.
    redis = Redis.from_url(server.url, retry=client_retry(), retry_on_error=RETRY_ON)
    store = BatchStore(redis, Keys("pp:"))
    pool = PermitPool()
    permits = pool.get(
        store, buckets_for(store.keys, "b-1", BatchOptions()), get_logger("test"), optimistic=True
    )
    await admin.execute_command("CLIENT", "PAUSE", 30_000, "WRITE")  # scripts wait
    try:
        permits.free_until = time.monotonic() + RENEW_AHEAD / 2  # the period ends soon:
        assert permits.take_now()  # the take asks for the next one, in the background
        (renewal,) = [task for task in asyncio.all_tasks() if task.get_name() == RENEWAL]
        await pool.close()
        assert renewal.cancelled()
        await redis.aclose()
    finally:
        await admin.execute_command("CLIENT", "UNPAUSE")
    clients = await admin.client_list()
    await admin.aclose()
    assert len(clients) == 1  # the admin's own
