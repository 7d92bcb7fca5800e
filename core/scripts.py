"""The store's Lua scripts (`core/lua/*.lua`), registered once per Redis client.

Per-batch scripts are atomic updates over one batch's keys (all sharing the batch's hash
tag) plus the global zsets they keep in step (leases, deadlines, the ARQ queue). They
share three preludes, prepended here: `_jobs.lua` (enqueueing ARQ chunk jobs exactly as
`ArqRedis.enqueue_job` does), `_callbacks.lua` (a completion callback filed as its
batch ends) and `_batch.lua` (the batch's keys and the helpers that move items between
states); the two that write an upload's chunks share `_ids.lua` (custom_ids checked and
filed). `BatchScope` builds the KEYS and ARGV every per-batch script starts with;
docs/design.md describes what each script does.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from typing import Any

from redis.asyncio import Redis
from redis.commands.core import AsyncScript

from batchd.core.domain import tenant_of
from batchd.core.events import DEFAULT_EVENTS_RETAIN
from batchd.core.jobs import JOB_KEY_PREFIX, RUN_CHUNK
from batchd.core.keys import Keys

Arg = str | int | bytes


def _source(name: str) -> str:
    return resources.files("batchd.core").joinpath("lua", name).read_text(encoding="utf-8")


class Scripts:
    """`register_script` handles: EVALSHA, falling back to EVAL after a SCRIPT FLUSH."""

    def __init__(self, redis: Redis) -> None:
        jobs = _source("_jobs.lua")
        batch = jobs + _source("_callbacks.lua") + _source("_batch.lua")

        def per_batch(name: str) -> AsyncScript:
            return redis.register_script(batch + _source(name))

        self.claim_chunk = per_batch("claim_chunk.lua")
        self.record_outcomes = per_batch("record_outcomes.lua")
        self.cancel_batch = per_batch("cancel_batch.lua")
        self.expire_batch = per_batch("expire_batch.lua")
        self.retry_items = per_batch("retry_items.lua")
        self.delete_batch = per_batch("delete_batch.lua")
        self.pause_batch = per_batch("pause_batch.lua")
        self.resume_batch = per_batch("resume_batch.lua")
        self.update_batch = per_batch("update_batch.lua")
        self.start_scheduled = per_batch("start_scheduled.lua")
        ids = _source("_ids.lua")
        self.append_chunk = redis.register_script(batch + ids + _source("append_chunk.lua"))
        self.end_upload = per_batch("end_upload.lua")
        self.reap_leases: AsyncScript = redis.register_script(jobs + _source("reap_leases.lua"))
        self.renew_leases: AsyncScript = redis.register_script(_source("renew_leases.lua"))
        self.prune_batches: AsyncScript = redis.register_script(_source("prune_batches.lua"))
        self.move_legacy_jobs: AsyncScript = redis.register_script(_source("move_legacy_jobs.lua"))
        self.stage_chunk: AsyncScript = redis.register_script(ids + _source("stage_chunk.lua"))
        self.list_staged: AsyncScript = redis.register_script(_source("list_staged.lua"))
        self.index_ids: AsyncScript = redis.register_script(_source("index_ids.lua"))
        self.export_by_name: AsyncScript = redis.register_script(_source("export_by_name.lua"))
        self.tenant_time: AsyncScript = redis.register_script(_source("tenant_time.lua"))
        self.take_submits: AsyncScript = redis.register_script(_source("take_submits.lua"))
        # Flow control (batchd.core.throttle): token buckets, and max_concurrent slots.
        flow = _source("_flow.lua")
        self.take_permits: AsyncScript = redis.register_script(flow + _source("take_permits.lua"))
        self.slow_down: AsyncScript = redis.register_script(flow + _source("slow_down.lua"))
        self.hold_slots = per_batch("hold_slots.lua")


def start_job_script(redis: Redis) -> AsyncScript:
    """`start_job.lua` on `redis`: how a worker starts an ARQ job (batchd.worker.arq_worker)."""
    return redis.register_script(_source("start_job.lua"))


@dataclass(frozen=True)
class BatchScope:
    """What every per-batch script is called with (the header of core/lua/_batch.lua).

    `retention_ms`: how long a finished batch's keys live (0: for ever). `job_expiry_ms`:
    how long after its score an ARQ job may wait unstarted. `events_retain`: events a
    tenant's stream keeps (0: the scripts write none).
    """

    keys: Keys
    retention_ms: int
    job_expiry_ms: int
    events_retain: int = DEFAULT_EVENTS_RETAIN

    async def run(
        self,
        script: AsyncScript,
        batch_id: str,
        now_ms: int,
        *,
        keys: Sequence[str] = (),
        args: Sequence[Arg] = (),
        client: Any = None,
    ) -> Any:
        """Runs `script` on `batch_id`; on `client` if given (a pipeline: the call is
        queued, and its result comes with the pipeline's)."""
        k = self.keys
        return await script(
            keys=[
                k.meta(batch_id),
                k.chunk_states(batch_id),
                k.running(batch_id),
                k.failed(batch_id),
                k.expired(batch_id),
                k.attempts(batch_id),
                k.ids(batch_id),
                k.deadlines,
                k.leases,
                k.queue_prefix,
                k.batches,
                *keys,
            ],
            args=[
                batch_id,
                k.batch_prefix(batch_id),
                now_ms,
                self.retention_ms,
                JOB_KEY_PREFIX,
                RUN_CHUNK,
                self.job_expiry_ms,
                k.request(""),
                k.pending,
                k.tenant_clock,
                k.callbacks,
                k.events(tenant_of(batch_id)),
                self.events_retain,
                k.ended,
                *args,
            ],
            client=client,
        )

    def job_args(self) -> list[Arg]:
        """ARQ job key prefix, job function, job expiry: the tail of reap_leases' ARGV."""
        return [JOB_KEY_PREFIX, RUN_CHUNK, self.job_expiry_ms]
