"""Watching batch events: the request and the resume bookkeeping shared by both clients.

Every WatchBatches message carries the cursor the stream has read up to (the first
one, a heartbeat, where it starts), so a watch that loses its stream opens a new one
from the last cursor it received: no event is lost and none repeated. The reconnect
policy is `watch()`'s (`WatchRetry`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from datetime import timedelta

import grpc

from batchd.client._errors import BatchdError
from batchd.client._types import BatchEvent, BatchEventType, BatchState
from batchd.client._watch import StreamSession, WatchReconnect, WatchRetry
from batchd.v1 import batch_pb2, batch_service_pb2

__all__ = ["EventsSession"]


class EventsSession(StreamSession):
    """The state of one `watch_batches()` across its streams."""

    def __init__(
        self,
        *,
        states: Iterable[BatchState | int] | None,
        labels: Mapping[str, str] | None,
        handler: str,
        types: Iterable[BatchEventType | int] | None,
        cursor: str,
        from_oldest: bool,
        heartbeat_interval: float | timedelta | None,
        policy: WatchRetry,
        on_reconnect: Callable[[WatchReconnect], None] | None,
    ) -> None:
        super().__init__(policy, on_reconnect)
        self.cursor = cursor
        """The cursor to resume from: the last one received (or the one given)."""
        self._given = cursor
        seconds = heartbeat_interval
        if isinstance(seconds, timedelta):
            seconds = seconds.total_seconds()
        self._request = batch_service_pb2.WatchBatchesRequest(
            states=[batch_pb2.BatchState.ValueType(int(s)) for s in states or ()],
            labels=dict(labels or {}),
            handler=handler,
            types=[batch_service_pb2.BatchEventType.ValueType(int(t)) for t in types or ()],
            from_oldest=from_oldest,
        )
        if seconds is not None:
            self._request.heartbeat_interval.FromTimedelta(timedelta(seconds=seconds))

    def request(self) -> batch_service_pb2.WatchBatchesRequest:
        """The request of the next stream: after the last cursor received (the first
        one as asked, for the service to judge)."""
        request = batch_service_pb2.WatchBatchesRequest()
        request.CopyFrom(self._request)
        if self.cursor != self._given:
            request.cursor = self.cursor
            request.from_oldest = False
        elif self.cursor:
            request.cursor = self.cursor
        return request

    def received(self, response: batch_service_pb2.WatchBatchesResponse) -> BatchEvent:
        """Converts a received message and moves the cursor past it."""
        event = BatchEvent.from_proto(response)
        if event.cursor:
            self.cursor = event.cursor
        self.failures = 0
        return event

    def ended_early(self) -> BatchdError:
        """The stream closed with OK (a server going away): resumed like a lost one."""
        return BatchdError(grpc.StatusCode.UNAVAILABLE, "the event stream ended")

    def _watching(self) -> str:
        return "batch events"

    def _resuming(self) -> str:
        return f" after {self.cursor or 'now'}"
