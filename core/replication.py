"""Replica acknowledgements: a new batch answered for only once replicas hold it.

Redis replicates asynchronously: a primary lost before its replicas received a write
takes the write with it, even when a Sentinel promotes a replica at once. With
`ReplicaAck.replicas` above 0, a commit answers only once that many replicas have
acknowledged everything written before it (Redis `WAIT`), and fails `Unavailable`
otherwise: the batch stands on the primary, and a retry with the same request_id asks
again without creating another. See docs/operations.md, "Redis high availability".
"""

from __future__ import annotations

from dataclasses import dataclass

from redis.asyncio import Redis

from batchd.core.errors import Unavailable
from batchd.core.keys import Keys

__all__ = ["ReplicaAck", "confirm_replicated"]


@dataclass(frozen=True)
class ReplicaAck:
    """Replicas that must acknowledge a commit (0: none, the commit answers at once),
    and seconds to wait for them."""

    replicas: int = 0
    timeout: float = 1.0

    def __post_init__(self) -> None:
        if self.replicas < 0:
            raise ValueError(f"replicas {self.replicas}: 0 or more")
        if self.replicas and self.timeout <= 0:
            # WAIT with a timeout of 0 would block for ever.
            raise ValueError(f"timeout {self.timeout:g}: more than 0 seconds")


async def confirm_replicated(redis: Redis, keys: Keys, batch_id: str, ack: ReplicaAck) -> None:
    """Returns once `ack.replicas` replicas hold every write made before this call
    (batch `batch_id`'s commit among them); Unavailable if they do not within
    `ack.timeout`.

    WAIT counts the replicas that have acknowledged the last write *of its own
    connection*, and the commit's connection is back in the pool: so the same
    round trip first makes a write of its own, a PUBLISH on `keys.committed` (replicated
    like any write, stored nowhere), which the replication stream carries after the
    commit."""
    if ack.replicas <= 0:
        return
    async with redis.pipeline(transaction=False) as pipe:
        pipe.publish(keys.committed, batch_id)
        pipe.wait(ack.replicas, max(1, round(ack.timeout * 1000)))
        _, acknowledged = await pipe.execute()
    if int(acknowledged) < ack.replicas:
        raise Unavailable(
            f"batch {batch_id!r} was written, but {acknowledged} of the {ack.replicas} "
            f"Redis replicas required acknowledged it within {ack.timeout:g}s: it could be "
            "lost if the primary failed now. Retry with the same request_id to confirm it "
            "(without a request_id, a retry submits another batch)"
        )
