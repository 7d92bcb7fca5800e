"""Replica acknowledgements: with `replica_ack`, a commit answers once replicas hold the
batch, and otherwise fails Unavailable with the batch kept, for a retry with the same
request_id to confirm."""

from __future__ import annotations

import os
import signal
import uuid
from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis
from support.polling import poll
from support.redis_server import RedisServer, RedisServerFactory

from batchd.core.domain import BatchOptions, BatchRecord, BatchSpec, NewItem
from batchd.core.errors import Unavailable
from batchd.core.keys import Keys
from batchd.core.replication import ReplicaAck
from batchd.core.store import BatchStore

# A deadline for a replica that is there: it answers WAIT at once when idle, but a
# loaded machine can keep it from running for longer than a fraction of a second.
ACK = ReplicaAck(replicas=1, timeout=10)
# For a replica that cannot answer (stopped, or none): the wait always runs out.
NO_ACK_WITHIN = ReplicaAck(replicas=1, timeout=0.2)


async def _submit(store: BatchStore, request_id: str) -> tuple[BatchRecord, bool]:
    spec = BatchSpec(
        batch_id=f"b-{uuid.uuid4().hex[:12]}",
        handler="test.echo",
        options=BatchOptions(chunk_size=2),
        metadata={},
        request_id=request_id,
    )
    session = await store.begin_upload(spec)
    await session.add_items(NewItem(f"item-{i}", b"{}") for i in range(3))
    return await session.commit()


@pytest.fixture
async def primary(redis_server_factory: RedisServerFactory) -> AsyncIterator[Redis]:
    server = redis_server_factory()
    redis = Redis.from_url(server.url)
    yield redis
    await redis.aclose()


async def _replica_of(primary: Redis, factory: RedisServerFactory) -> RedisServer:
    port = primary.connection_pool.connection_kwargs["port"]
    replica = factory(extra_args=["--replicaof", "127.0.0.1", str(port)])

    async def in_sync() -> bool | None:
        info = await primary.info("replication")
        return True if info.get("slave0", {}).get("state") == "online" else None

    await poll(in_sync)
    return replica


async def test_a_commit_waits_for_the_replica_and_answers(
    primary: Redis, redis_server_factory: RedisServerFactory
) -> None:
    await _replica_of(primary, redis_server_factory)
    store = BatchStore(primary, Keys(), replica_ack=ACK)
    batch, replayed = await _submit(store, "r1")
    assert batch.total_items == 3
    assert not replayed


async def test_an_unacknowledged_commit_fails_unavailable_and_its_retry_confirms_it(
    primary: Redis, redis_server_factory: RedisServerFactory
) -> None:
    replica = await _replica_of(primary, redis_server_factory)
    assert replica.pid is not None
    os.kill(replica.pid, signal.SIGSTOP)  # connected, but acknowledging nothing
    try:
        store = BatchStore(primary, Keys(), replica_ack=NO_ACK_WITHIN)
        with pytest.raises(Unavailable, match="0 of the 1 Redis replicas required") as refused:
            await _submit(store, "r2")
        assert "same request_id" in refused.value.message
        # The batch stands on the primary: the same request, retried, is a replay...
        with pytest.raises(Unavailable):
            await _submit(store, "r2")
    finally:
        os.kill(replica.pid, signal.SIGCONT)
    # ...which, once the replica holds it, answers with the batch first written. (The
    # replica, just woken, acknowledges when the machine lets it run: a longer wait.)
    store = BatchStore(primary, Keys(), replica_ack=ACK)
    batch, replayed = await _submit(store, "r2")
    assert replayed
    assert batch.batch_id == (await primary.get(Keys().request("r2"))).decode()


async def test_without_a_replica_a_commit_required_to_wait_fails_unavailable(
    primary: Redis,
) -> None:
    store = BatchStore(primary, Keys(), replica_ack=NO_ACK_WITHIN)
    with pytest.raises(Unavailable):
        await _submit(store, "r3")


async def test_without_replica_ack_a_commit_does_not_wait(primary: Redis) -> None:
    batch, _ = await _submit(BatchStore(primary, Keys()), "r4")
    assert batch.total_items == 3


def test_a_replica_ack_needs_a_timeout() -> None:
    with pytest.raises(ValueError, match="more than 0 seconds"):
        ReplicaAck(replicas=1, timeout=0)
    with pytest.raises(ValueError, match="0 or more"):
        ReplicaAck(replicas=-1)
