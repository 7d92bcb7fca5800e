"""Chunk jobs: the one place that knows how ARQ stores a job, for the server and the
workers alike (which enqueue: the store's commit and Lua scripts) without importing arq.

A chunk job carries references only, `(batch_id, chunk)`, and every job and result goes
through msgpack: nothing is ever pickled. The store enqueues jobs inside its own
MULTI/EXEC (a commit) or Lua scripts (retries, hand-backs, reaped leases, redrives), so
`chunk_job` here and `make_enqueue` in core/lua/_jobs.lua write exactly the key, bytes,
score and expiry that `arq.connections.ArqRedis.enqueue_job` would; tests/core/test_jobs.py
holds all three to the same bytes, and fails naming the arq constant that moved.

Each handler has its own queue (`Keys.queue`): a worker reads only the queues of the
handlers it serves (batchd.worker.arq_worker).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import msgpack

# The name the worker registers its chunk coroutine under.
RUN_CHUNK = "run_chunk"

# How long a job may wait past its score before its key expires (a job whose key is gone
# is dropped unrun). Past the longest completion window (30 days): a batch whose handler
# no live worker serves keeps its jobs until a worker comes or its window closes. (arq's
# own default, `expires_extra_ms`, is a day.)
DEFAULT_JOB_EXPIRY = 31 * 86400.0
# A job's key is this plus its id: arq.constants.job_key_prefix.
JOB_KEY_PREFIX = "arq:job:"


def _default(value: object) -> object:
    # arq stores a failed job's exception as its result; keep its text, not the object.
    if isinstance(value, BaseException):
        return f"{type(value).__name__}: {value}"
    raise TypeError(f"cannot serialize {type(value).__name__}")


def serialize(data: dict[str, Any]) -> bytes:
    """ARQ `job_serializer`: msgpack, str as str and bytes as bin."""
    packed: bytes = msgpack.packb(data, use_bin_type=True, default=_default)
    return packed


def deserialize(raw: bytes) -> dict[str, Any]:
    """ARQ `job_deserializer`, the inverse of `serialize` (tuples come back as lists)."""
    data: dict[str, Any] = msgpack.unpackb(raw, raw=False)
    return data


def job_payload(batch_id: str, chunk: int, enqueue_ms: int) -> bytes:
    """What arq.jobs.serialize_job(RUN_CHUNK, (batch_id, chunk), {}, None, enqueue_ms)
    returns with `serialize`: ARQ's job fields in ARQ's order."""
    return serialize({"t": None, "f": RUN_CHUNK, "a": (batch_id, chunk), "k": {}, "et": enqueue_ms})


@dataclass(frozen=True)
class ChunkJob:
    """One ARQ job as enqueue_job stores it: `SET key payload PX expires_ms` and
    `ZADD queue {job_id: score_ms}`."""

    job_id: str
    key: str
    payload: bytes
    score_ms: int
    expires_ms: int


def chunk_job(
    job_id: str,
    batch_id: str,
    chunk: int,
    *,
    now_ms: int,
    expiry: float = DEFAULT_JOB_EXPIRY,
    defer_until_ms: int | None = None,
) -> ChunkJob:
    """The job that runs `chunk` of `batch_id`, enqueued at `now_ms`.

    Like enqueue_job: the score is the enqueue time, or `defer_until_ms` (its
    `_defer_until`), and the job key expires `expiry` seconds after the score.
    """
    payload = job_payload(batch_id, chunk, now_ms)
    score = now_ms if defer_until_ms is None else defer_until_ms
    return ChunkJob(
        job_id=job_id,
        key=JOB_KEY_PREFIX + job_id,
        payload=payload,
        score_ms=score,
        expires_ms=score - now_ms + int(expiry * 1000),
    )


# A dispatched chunk job's score is now minus this many ms per priority step (plus 1000
# steps, so that every priority is due at once): a higher priority always comes first.
PRIORITY_STEP_MS = 10_000_000
PRIORITY_BASE = 1000


def dispatch_score(now_ms: int, priority: int) -> int:
    """The queue score of a chunk job dispatched now at `priority` (as _batch.lua's
    dispatch_score): due at once, ahead of every job of a lower priority."""
    return now_ms - (priority + PRIORITY_BASE) * PRIORITY_STEP_MS


def dispatched_job(
    job_id: str,
    batch_id: str,
    chunk: int,
    *,
    now_ms: int,
    priority: int,
    expiry: float = DEFAULT_JOB_EXPIRY,
    at_ms: int | None = None,
) -> ChunkJob:
    """A chunk job scored by priority (`dispatch_score`) at `at_ms` (its tenant's
    dispatch time; default now); its key expires `expiry` seconds from now."""
    job = chunk_job(job_id, batch_id, chunk, now_ms=now_ms, expiry=expiry)
    return ChunkJob(
        job_id=job.job_id,
        key=job.key,
        payload=job.payload,
        score_ms=dispatch_score(now_ms if at_ms is None else at_ms, priority),
        expires_ms=int(expiry * 1000),
    )
