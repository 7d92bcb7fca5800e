"""Every Redis key batchd uses, built in one place.

Per-batch keys carry the batch id as a hash tag (`{id}`) so that all of a batch's keys
live in one Redis Cluster slot and its Lua scripts stay valid there.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Keys:
    prefix: str = "batchd:"

    # -- global -------------------------------------------------------------------
    @property
    def batches(self) -> str:
        """ZSET batch_id -> create time (ms) of every committed batch."""
        return f"{self.prefix}batches"

    def request(self, request_id: str) -> str:
        """STRING batch_id: the batch a request_id created."""
        return f"{self.prefix}request:{request_id}"

    @property
    def handlers(self) -> str:
        """HASH handler name -> JSON HandlerSpec, as last published by a worker."""
        return f"{self.prefix}handlers"

    @property
    def workers(self) -> str:
        """ZSET worker_id -> last heartbeat (ms)."""
        return f"{self.prefix}workers"

    def worker(self, worker_id: str) -> str:
        """STRING JSON list of the handler names a worker serves (expires with liveness)."""
        return f"{self.prefix}worker:{worker_id}"

    @property
    def queue(self) -> str:
        """The ARQ queue (ZSET job_id -> score) that chunk jobs go through."""
        return f"{self.prefix}queue"

    # -- per batch ----------------------------------------------------------------
    def _batch(self, batch_id: str) -> str:
        return f"{self.prefix}b:{{{batch_id}}}"

    def meta(self, batch_id: str) -> str:
        """HASH: the batch's fields and counters (see docs/design.md)."""
        return f"{self._batch(batch_id)}:meta"

    def upload_lock(self, batch_id: str) -> str:
        """STRING held while an upload stages the batch's chunks (expires)."""
        return f"{self._batch(batch_id)}:lock"

    def ids(self, batch_id: str) -> str:
        """HASH custom_id -> global item index."""
        return f"{self._batch(batch_id)}:ids"

    def chunk(self, batch_id: str, chunk: int) -> str:
        """STRING msgpack [[custom_id, params_json], ...]: a chunk's items."""
        return f"{self._batch(batch_id)}:c:{chunk}"

    def outcomes(self, batch_id: str, chunk: int) -> str:
        """HASH local index -> msgpack outcome: a chunk's terminal item outcomes."""
        return f"{self._batch(batch_id)}:o:{chunk}"

    def chunk_states(self, batch_id: str) -> str:
        """HASH chunk number -> "r" (claimed), "d" (done) or "c" (cancelled)."""
        return f"{self._batch(batch_id)}:chunks"

    def failed(self, batch_id: str) -> str:
        """ZSET of the global indexes of FAILED items, for filtered listings."""
        return f"{self._batch(batch_id)}:failed"

    def chunk_job_id(self, batch_id: str, chunk: int) -> str:
        """The ARQ job id of a chunk: unique, so a chunk is never queued twice."""
        return f"{batch_id}:{chunk}"
