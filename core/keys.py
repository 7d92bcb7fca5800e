"""Every Redis key batchd uses, built in one place.

Per-batch keys carry the batch id as a hash tag (`{id}`) so that all of a batch's keys
live in one Redis Cluster slot and its Lua scripts stay valid there. The Lua scripts
get `batch_prefix` and derive the per-chunk keys from it (`c:<n>`, `o:<n>`, `w:<n>`,
as `chunk`, `outcomes` and `waiting` build them here; tests/core/test_keys.py holds
the two together), and build ARQ job ids `<batch_id>:<chunk>:<tag><ms>` (tag `t`: a
retry timer or a hand-back, `l`: a reaped lease, `r`: a redrive, `p`: a parked chunk at
resume) and `<batch_id>:<chunk>:q` (a dispatched chunk): docs/design.md, "Keys".
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

    def tenant_batches(self, tenant: str) -> str:
        """ZSET batch_id -> create time (ms) of the batches of one tenant (a subset of
        `batches`, which an admin lists)."""
        return f"{self.prefix}batches:{tenant}"

    @property
    def tenant_clock(self) -> str:
        """HASH tenant -> its dispatch clock (ms): the time its next chunk job is stamped
        with, for fair shares across tenants (_batch.lua `tenant_time`)."""
        return f"{self.prefix}tenant_clock"

    def request(self, request_id: str) -> str:
        """STRING batch_id: the batch a request_id created."""
        return f"{self.prefix}request:{request_id}"

    @property
    def committed(self) -> str:
        """Pub/sub channel: a batch id published after its commit, the write a replica
        acknowledgement waits on (batchd.core.replication). Nothing subscribes."""
        return f"{self.prefix}committed"

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
    def queue_prefix(self) -> str:
        """The ARQ queues' common prefix: a handler's queue is it plus the handler name."""
        return f"{self.prefix}queue:"

    @property
    def legacy_queue(self) -> str:
        """The single ARQ queue of earlier versions: maintenance moves what it still holds
        to the handlers' queues."""
        return f"{self.prefix}queue"

    def queue(self, handler: str) -> str:
        """The ARQ queue (ZSET job_id -> score) of the chunk jobs of `handler`'s batches:
        only workers that serve the handler read it."""
        return f"{self.queue_prefix}{handler}"

    def handler_workers(self, handler: str) -> str:
        """ZSET worker_id -> last heartbeat (ms) of the workers serving `handler`."""
        return f"{self.prefix}handler_workers:{handler}"

    @property
    def leases(self) -> str:
        """ZSET `<batch_id>/<chunk>` -> lease expiry (ms) of every claimed chunk."""
        return f"{self.prefix}leases"

    @property
    def deadlines(self) -> str:
        """ZSET batch_id -> end of the completion window (ms) of every unfinished batch
        (+inf: no window, never due)."""
        return f"{self.prefix}deadlines"

    @property
    def scheduled(self) -> str:
        """ZSET batch_id -> start time (ms) of every batch submitted with a start_time
        that has not started yet: the maintenance sweep dispatches those due."""
        return f"{self.prefix}scheduled"

    @property
    def pending(self) -> str:
        """STRING: items of every batch not yet terminal (admission control). The scripts
        that move items to or from a terminal state keep it in step."""
        return f"{self.prefix}pending"

    @property
    def staging(self) -> str:
        """ZSET `<tenant> <batch_id>` -> when its staging expires (ms): uploads not yet
        committed, whose items count toward the admission limits."""
        return f"{self.prefix}staging"

    @property
    def uploading(self) -> str:
        """ZSET batch_id -> when its upload's lease ends (ms): batches whose upload starts
        early and has not ended. The maintenance sweep cancels those whose upload died
        (its lock expired)."""
        return f"{self.prefix}uploading"

    @property
    def staging_items(self) -> str:
        """HASH `<tenant> <batch_id>` -> items that upload has staged so far."""
        return f"{self.prefix}staging:items"

    @property
    def staging_bytes(self) -> str:
        """HASH `<tenant> <batch_id>` -> bytes that upload has staged so far, as
        `upload.staged_bytes` counts them (what they take in Redis)."""
        return f"{self.prefix}staging:bytes"

    def tenant_pending(self, tenant: str) -> str:
        """STRING: the tenant's items not yet terminal (its share of `pending`)."""
        return f"{self.pending}:{tenant}"

    def tenant_open(self, tenant: str) -> str:
        """STRING: the tenant's unfinished batches."""
        return f"{self.pending}:{tenant}:open"

    def tenant_submits(self, tenant: str) -> str:
        """HASH: the token bucket of the tenant's submitted items per second."""
        return f"{self.pending}:{tenant}:submits"

    def redrive(self, request_id: str) -> str:
        """STRING `<requeued>:<batch_id>`: what a RetryBatchItems request_id did."""
        return f"{self.prefix}redrive:{request_id}"

    def rate_key(self, name: str) -> str:
        """HASH: the token bucket of a rate-limit key shared across batches (a
        BatchOptions.rate_limit_key, or a handler's key such as `host:api.example:443`);
        see core/lua/_flow.lua. The name is its own hash tag."""
        return f"{self.prefix}rate:{{{name}}}"

    @property
    def wake(self) -> str:
        """Pub/sub channel: a queue's key, published when a job due at once is added to it
        (a batch committed), so that idle workers look at once rather than at their next
        poll."""
        return f"{self.prefix}wake"

    @property
    def ended(self) -> str:
        """Pub/sub channel: the id of each batch as the script that ends it runs, so that
        the servers' progress feeds of it read the end at once (batchd.core.wakeups)."""
        return f"{self.prefix}ended"

    @property
    def watch_servers(self) -> str:
        """ZSET server id -> when its liveness lapses (ms): the servers whose WatchProgress
        streams count toward the tenants' limits. Shares a hash tag with `tenant_watchers`,
        as the scripts touch both."""
        return f"{self.prefix}{{watchers}}:servers"

    def tenant_watchers(self, tenant: str) -> str:
        """HASH server id -> the WatchProgress streams that server has open for the tenant
        (batchd.core.watchers)."""
        return f"{self.prefix}{{watchers}}:tenant:{tenant}"

    @property
    def callbacks(self) -> str:
        """ZSET event id -> when it is next due (ms): the completion callbacks to deliver
        (batchd.core.callbacks). A claim moves its event's due time past its lease."""
        return f"{self.prefix}callbacks"

    @property
    def callback_events(self) -> str:
        """HASH event id -> JSON record of the batch's end, written by the script that
        ended it (core/lua/_callbacks.lua builds the name on `callbacks`)."""
        return f"{self.callbacks}:events"

    @property
    def callback_tries(self) -> str:
        """HASH event id -> delivery attempts claimed so far (the name as
        `callback_events` is built)."""
        return f"{self.callbacks}:tries"

    @property
    def events_prefix(self) -> str:
        """What every tenant's event stream key starts with."""
        return f"{self.prefix}events:"

    def events(self, tenant: str) -> str:
        """STREAM of the tenant's batch events (WatchBatches; batchd.core.events): one
        entry per transition, written by the script (or commit) that makes it, capped
        at Settings.events_retain entries."""
        return f"{self.events_prefix}{tenant}"

    @staticmethod
    def lease_member(batch_id: str, chunk: int) -> str:
        """A chunk's member in `leases`."""
        return f"{batch_id}/{chunk}"

    # -- per batch ----------------------------------------------------------------
    def _batch(self, batch_id: str) -> str:
        return f"{self.prefix}b:{{{batch_id}}}"

    def batch_prefix(self, batch_id: str) -> str:
        """What every key of the batch starts with (the scripts build chunk keys on it)."""
        return f"{self._batch(batch_id)}:"

    def meta(self, batch_id: str) -> str:
        """HASH: the batch's fields and counters (see docs/design.md)."""
        return f"{self._batch(batch_id)}:meta"

    def upload_lock(self, batch_id: str) -> str:
        """STRING held while an upload stages the batch's chunks (expires)."""
        return f"{self._batch(batch_id)}:lock"

    def ids(self, batch_id: str) -> str:
        """HASH custom_id -> global item index."""
        return f"{self._batch(batch_id)}:ids"

    def ids_by_name(self, batch_id: str) -> str:
        """ZSET of `<custom_id> <global index>`, all of score 0: the items by custom_id,
        for an export in that order (batchd.core.export builds it, and it expires)."""
        return f"{self._batch(batch_id)}:byname"

    def chunk(self, batch_id: str, chunk: int) -> str:
        """STRING msgpack [[custom_id, params_json], ...]: a chunk's items."""
        return f"{self._batch(batch_id)}:c:{chunk}"

    def outcomes(self, batch_id: str, chunk: int) -> str:
        """HASH local index -> msgpack outcome: a chunk's terminal item outcomes."""
        return f"{self._batch(batch_id)}:o:{chunk}"

    def waiting(self, batch_id: str, chunk: int) -> str:
        """ZSET local index -> due time (ms): a chunk's items waiting for another attempt."""
        return f"{self._batch(batch_id)}:w:{chunk}"

    def chunk_states(self, batch_id: str) -> str:
        """HASH chunk number -> "r:<token>" (claimed), "d" (done), "c" (cancelled) or "x"
        (expired); absent: queued."""
        return f"{self._batch(batch_id)}:chunks"

    def parked(self, batch_id: str) -> str:
        """SET of chunk numbers whose job was taken while the batch was paused."""
        return f"{self._batch(batch_id)}:parked"

    def running(self, batch_id: str) -> str:
        """HASH chunk number -> items of the chunk counted in `n_run`."""
        return f"{self._batch(batch_id)}:running"

    def started(self, batch_id: str) -> str:
        """HASH chunk number -> items of the chunk its holder has in flight, as it last
        reported them (with an outcome flush or a lease renewal)."""
        return f"{self._batch(batch_id)}:started"

    def attempts(self, batch_id: str) -> str:
        """HASH global index -> msgpack [attempts, error_code, error_message, due_ms]: the
        last failed attempt of an item waiting for another."""
        return f"{self._batch(batch_id)}:attempts"

    def failed(self, batch_id: str) -> str:
        """ZSET of the global indexes of FAILED items, for filtered listings."""
        return f"{self._batch(batch_id)}:failed"

    def expired(self, batch_id: str) -> str:
        """ZSET of the global indexes of EXPIRED items that have an outcome record (the
        items of an `x` chunk without one are EXPIRED too)."""
        return f"{self._batch(batch_id)}:expired"

    def rate(self, batch_id: str) -> str:
        """HASH: the batch's own token bucket (max_per_second, adaptive back-off)."""
        return f"{self._batch(batch_id)}:rate"

    def slots(self, batch_id: str) -> str:
        """HASH chunk number -> `<token>:<count>`: max_concurrent slots held by the
        holders of the batch's claimed chunks (live only with the chunk's lease)."""
        return f"{self._batch(batch_id)}:slots"

    def chunk_job_id(self, batch_id: str, chunk: int) -> str:
        """The ARQ job id of a chunk: unique, so a chunk is never queued twice."""
        return f"{batch_id}:{chunk}"

    # -- credentials (batchd.core.credentials) ---------------------------------------
    @property
    def api_keys(self) -> str:
        """HASH key id -> SHA-256 hex digest of the key: every API key there is."""
        return f"{self.prefix}apikeys"

    def api_key(self, digest: str) -> str:
        """HASH id, tenant, role, name, created (Unix s) of the API key whose SHA-256 hex
        digest is `digest`: a call's key is looked up by its digest, never stored."""
        return f"{self.prefix}apikey:{digest}"

    @property
    def api_keys_used(self) -> str:
        """HASH key id -> when a server last looked the key up (Unix s; as often as its
        cache lets it, so within Settings.auth_cache_seconds of the last use)."""
        return f"{self.prefix}apikeys:used"

    # -- dashboard sessions (batchd.core.sessions) -----------------------------------
    def dashboard_session(self, handle: str) -> str:
        """STRING, with the session's idle TTL: a dashboard session's sealed credential,
        under a handle derived from the session id its browser holds (never the id)."""
        return f"{self.prefix}dashboard:session:{handle}"

    @property
    def dashboard_secret(self) -> str:
        """STRING: 32 random bytes every server shares, that the dashboard's CSRF tokens
        are signed with; made by the first server that needs it."""
        return f"{self.prefix}dashboard:secret"
