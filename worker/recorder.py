"""Recording a chunk's outcomes: buffered, flushed in blocks, never dropped.

Outcomes are flushed with `record_outcomes` every `outcome_flush_items` outcomes or
`outcome_flush_interval` seconds by a background flusher, and once more when the chunk
ends. Every flush presents the chunk's lease token. While Redis is away a flush is tried
again (capped backoff) until it goes through: an outcome that was computed is recorded,
however late (first writer wins, so a late record never counts twice). Only a batch that
is gone (deleted) drops them.

Each flush answers with the batch state and whether the claim still holds; the chunk
reads `cancelling`, `lost` and `gone` from here to decide whether to start more items.
A flush with `release` ends the claim (only while it holds): items left unrecorded are
handed back to run again at once, or cancelled if the batch is being cancelled.
"""

from __future__ import annotations

import asyncio
from collections import Counter

import structlog

from batchd.core.config import Settings
from batchd.core.domain import BatchState, ClaimedChunk, ItemOutcome, ItemState
from batchd.core.errors import NotFound
from batchd.core.metrics import OutageClock
from batchd.core.store import BatchStore
from batchd.worker.leases import Lease
from batchd.worker.metrics import HandlerTally
from batchd.worker.outages import Backoff, Outage, waited_out

__all__ = ["FlushFailed", "Recorder"]


class FlushFailed(Exception):
    """A flush failed for another reason than Redis being away (a bug, a script error)."""


class Recorder:
    """The outcome buffer and flusher of one chunk run."""

    def __init__(
        self,
        store: BatchStore,
        claimed: ClaimedChunk,
        settings: Settings,
        log: structlog.typing.FilteringBoundLogger,
        lease: Lease | None = None,
        tally: HandlerTally | None = None,
        outages: OutageClock | None = None,
    ) -> None:
        """`tally`: where the flushed outcomes are counted for the worker's metrics;
        `outages`: where Redis outages of the flushes are."""
        self.store = store
        self.tally = tally
        self.claimed = claimed
        self.lease = lease  # its items in flight go with each flush (the store's "running")
        self.flush_items = max(settings.outcome_flush_items, 1)
        self.flush_interval = max(settings.outcome_flush_interval, 0.001)
        self.log = log
        self.buffer: list[ItemOutcome] = []
        self.counts: Counter[ItemState] = Counter()
        self.batch_state: BatchState | None = None
        self.lost = False  # a flush found the claim lost: its records counted, not its release
        self.gone = False  # the batch was deleted: nothing more to record
        # What a chunk run looks at before every start, as one flag: the last flush said
        # cancelling, cancelled or paused, the claim is lost or the batch gone.
        self.stops_starting = False
        self._flush_now = asyncio.Event()
        self._stopping = False
        self._task: asyncio.Task[None] | None = None
        self._outage = Outage(log, "outcome_flush", outages)

    @property
    def cancelling(self) -> bool:
        return self.batch_state in (BatchState.CANCELLING, BatchState.CANCELLED)

    @property
    def paused(self) -> bool:
        """The batch is paused: start nothing more, hand the rest back."""
        return self.batch_state is BatchState.PAUSED

    def start(self) -> None:
        name = f"flush {self.claimed.batch_id}:{self.claimed.chunk}"
        self._task = asyncio.create_task(self._flusher(), name=name)

    def add_one(self, outcome: ItemOutcome, *, last: bool = False) -> None:
        """`last`: the chunk run's last outcome; the release that follows carries the
        buffer, so a full buffer does not cost a flush of its own."""
        self.buffer.append(outcome)
        if len(self.buffer) >= self.flush_items and not last:
            self._flush_now.set()

    async def stop(self, *, release: bool) -> None:
        """Stops the flusher (after its flush in progress, if any), then flushes the rest;
        with `release`, the chunk is released by that last flush."""
        self._stopping = True
        self._flush_now.set()
        if self._task is not None:
            await self._task
        if (self.buffer or release) and not self.gone:
            await self._flush(release=release)

    def count_fields(self) -> dict[str, int]:
        return {
            "succeeded": self.counts[ItemState.SUCCEEDED],
            "failed": self.counts[ItemState.FAILED],
            "cancelled": self.counts[ItemState.CANCELLED],
            "retrying": self.counts[ItemState.PENDING],
        }

    async def _flusher(self) -> None:
        """Flushes every flush_interval seconds, or when told to; never raises."""
        while not self._stopping and not self.gone:
            try:
                async with asyncio.timeout(self.flush_interval):
                    await self._flush_now.wait()
            except TimeoutError:
                pass
            self._flush_now.clear()
            # Nothing to record, but items started since the last report: say so (the
            # store's "running"), at most once per interval.
            report = self.lease is not None and self.lease.in_flight_report() >= 0
            if (self.buffer or report) and not self._stopping:
                try:
                    await self._flush(release=False)
                except FlushFailed:
                    self.log.warning("outcome_flush_failed", exc_info=True)

    async def _flush(self, *, release: bool) -> None:
        # The outcomes stay in the buffer until Redis has them: a flush cut short (the
        # job cancelled while Redis is away) leaves them for the next one.
        outcomes = list(self.buffer)
        backoff = Backoff()
        while True:
            report = -1 if self.lease is None or release else self.lease.in_flight_report()
            try:
                result = await self.store.record_outcomes(
                    self.claimed.batch_id,
                    self.claimed.chunk,
                    outcomes,
                    token=self.claimed.token,
                    release=release,
                    in_flight=report,
                )
            except NotFound:
                self.log.info("batch_gone", dropped=len(self.buffer))
                self.buffer.clear()
                self.gone = self.stops_starting = True
                return
            except Exception as exc:
                if not waited_out(exc):
                    raise FlushFailed(str(exc)) from exc
                self._outage.failed(exc, outcomes=len(outcomes))
                await backoff.wait()
                continue
            del self.buffer[: len(outcomes)]  # what came in meanwhile stays
            if report >= 0 and self.lease is not None:
                self.lease.reported = report
            self.counts.update(outcome.state for outcome in outcomes)  # for the logs
            if self.tally is not None and outcomes:
                self.tally.add(outcomes)
            self._outage.recovered(outcomes=len(outcomes))
            # A record that ended the batch was logged by the store (batch_finished).
            self.batch_state = result.state
            if not result.held and not self.lost:
                self.log.warning("claim_lost_at_flush")
                self.lost = True
            self.stops_starting = self.lost or self.cancelling or self.paused
            return
