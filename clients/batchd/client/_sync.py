"""`Client`: the batchd API over a blocking `grpc.Channel`; the same methods as
`AsyncClient`, returning values and plain iterators."""

from __future__ import annotations

import builtins
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from datetime import datetime, timedelta
from types import TracebackType
from typing import Any, Self

import grpc

from batchd.client._errors import BatchdError, rpc_errors
from batchd.client._events import EventsSession
from batchd.client._items import (
    DEFAULT_ITEMS_PER_MESSAGE,
    DEFAULT_MAX_MESSAGE_BYTES,
    FIRST_EARLY_MESSAGE_ITEMS,
    ItemLike,
    UploadPacker,
    iter_upload_requests,
)
from batchd.client._requests import (
    DEFAULT_TARGET,
    DEFAULT_TIMEOUT,
    OptionsLike,
    announced_count,
    bearer_metadata,
    export_request,
    list_batches_request,
    list_items_request,
    retry_delay,
    submit_request,
    update_request,
    upload_header,
    watch_request,
)
from batchd.client._requests import channel_options as _channel_options
from batchd.client._tls import TLSLike, channel_credentials
from batchd.client._types import (
    Batch,
    BatchEvent,
    BatchEventType,
    BatchItem,
    BatchProgress,
    BatchState,
    ExportOrder,
    HandlerInfo,
    ItemState,
    Page,
    ResultsPage,
    RetryResult,
    SubmitResult,
)
from batchd.client._upload import GuardedRequests
from batchd.client._watch import CLOSE_GRACE, WatchReconnect, WatchRetry, WatchSession
from batchd.v1 import batch_service_pb2, batch_service_pb2_grpc

__all__ = ["Client"]


class Client:
    """A blocking client of batchd.v1.BatchService; see `AsyncClient` for the details.

    with Client("localhost:50051") as client:
        result = client.upload("http.request", items)
        for progress in client.watch(result.batch.batch_id):
            ...
    """

    def __init__(
        self,
        target: str = DEFAULT_TARGET,
        *,
        channel: grpc.Channel | None = None,
        credentials: grpc.ChannelCredentials | None = None,
        tls: TLSLike = None,
        timeout: float | None = DEFAULT_TIMEOUT,
        channel_options: Sequence[tuple[str, Any]] = (),
        token: str | None = None,
    ) -> None:
        self._metadata = bearer_metadata(token)
        if channel is not None and tls:
            raise ValueError("tls= configures the channel the client opens: not with channel=")
        self._owns_channel = channel is None
        if channel is None:
            credentials, tls_options = channel_credentials(tls, credentials)
            options = _channel_options([*tls_options, *channel_options])
            if credentials is None:
                channel = grpc.insecure_channel(target, options=options)
            else:
                channel = grpc.secure_channel(target, credentials, options=options)
        self._channel = channel
        self._stub = batch_service_pb2_grpc.BatchServiceStub(channel)
        self._timeout = timeout

    def close(self) -> None:
        """Closes the channel, if the client opened it."""
        if self._owns_channel:
            self._channel.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def submit(
        self,
        handler: str,
        items: Iterable[ItemLike],
        *,
        options: OptionsLike | None = None,
        metadata: Mapping[str, str] | None = None,
        request_id: str | None = None,
        batch_id: str | None = None,
        params_struct: bool = False,
        start_time: datetime | None = None,
    ) -> SubmitResult:
        """Submits a batch in one message (SubmitBatch): up to 10,000 items and 4 MiB;
        with a `request_id`, sent again when it fails UNAVAILABLE (see `AsyncClient`)."""
        request = submit_request(
            handler,
            items,
            options=options,
            metadata=metadata,
            request_id=request_id,
            batch_id=batch_id,
            params_struct=params_struct,
            start_time=start_time,
        )
        failures = 0
        while True:
            try:
                with rpc_errors():
                    response = self._stub.SubmitBatch(
                        request, timeout=self._timeout, metadata=self._metadata
                    )
                return SubmitResult(Batch.from_proto(response.batch), response.replayed)
            except BatchdError as exc:
                failures += 1
                time.sleep(retry_delay(exc, request.request_id, failures))

    def upload(
        self,
        handler: str,
        items: Iterable[ItemLike],
        *,
        options: OptionsLike | None = None,
        metadata: Mapping[str, str] | None = None,
        request_id: str | None = None,
        batch_id: str | None = None,
        params_struct: bool = False,
        start_time: datetime | None = None,
        start_early: bool = False,
        item_count: int | None = None,
        items_per_message: int = DEFAULT_ITEMS_PER_MESSAGE,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        timeout: float | None = None,
    ) -> SubmitResult:
        """Submits a batch of any size as a stream (UploadBatch), pulling items only
        as messages are sent. If `items` raises (or an item is invalid), the upload
        is abandoned, so the service keeps nothing, and the exception propagates
        unchanged. `start_early`: as AsyncClient.upload."""
        header = upload_header(
            handler,
            options=options,
            metadata=metadata,
            request_id=request_id,
            batch_id=batch_id,
            start_time=start_time,
            start_early=start_early,
            item_count=announced_count(items, start_early, item_count),
        )
        packer = UploadPacker(
            items_per_message=items_per_message,
            max_message_bytes=max_message_bytes,
            params_struct=params_struct,
            first_message_items=FIRST_EARLY_MESSAGE_ITEMS if start_early else None,
        )
        requests = GuardedRequests(iter_upload_requests(header, items, packer))
        future = self._stub.UploadBatch.future(
            iter(requests), timeout=timeout, metadata=self._metadata
        )
        requests.attach(future)
        try:
            response = future.result()
        except (grpc.RpcError, grpc.FutureCancelledError) as exc:
            if requests.error is not None:
                raise requests.error from None
            if isinstance(exc, grpc.RpcError):
                raise BatchdError.from_rpc_error(exc) from exc
            raise BatchdError(grpc.StatusCode.CANCELLED, "upload cancelled") from exc
        except BaseException:
            future.cancel()
            raise
        return SubmitResult(Batch.from_proto(response.batch), response.replayed)

    def get(self, batch_id: str) -> Batch:
        """Returns one batch."""
        request = batch_service_pb2.GetBatchRequest(batch_id=batch_id)
        with rpc_errors():
            response = self._stub.GetBatch(request, timeout=self._timeout, metadata=self._metadata)
        return Batch.from_proto(response.batch)

    def list_page(
        self,
        *,
        states: Iterable[BatchState] | None = None,
        page_size: int = 0,
        page_token: str = "",
    ) -> Page[Batch]:
        """Returns one page of batches, newest first (`page_size` 0: the service's 100)."""
        request = list_batches_request(states, page_size, page_token)
        with rpc_errors():
            response = self._stub.ListBatches(
                request, timeout=self._timeout, metadata=self._metadata
            )
        return Page(tuple(map(Batch.from_proto, response.batches)), response.next_page_token)

    def list(
        self, *, states: Iterable[BatchState] | None = None, page_size: int = 0
    ) -> Iterator[Batch]:
        """Yields every batch (in one of `states`, if given), newest first, page by page."""
        states = builtins.list(states or ())
        token = ""
        while True:
            page = self.list_page(states=states, page_size=page_size, page_token=token)
            yield from page.items
            if not page.next_page_token:
                return
            token = page.next_page_token

    def cancel(self, batch_id: str) -> Batch:
        """Cancels a batch; returns it as it stands after the request. Idempotent."""
        request = batch_service_pb2.CancelBatchRequest(batch_id=batch_id)
        with rpc_errors():
            response = self._stub.CancelBatch(
                request, timeout=self._timeout, metadata=self._metadata
            )
        return Batch.from_proto(response.batch)

    def pause(self, batch_id: str) -> Batch:
        """Pauses a QUEUED or RUNNING batch: no new item starts, running ones finish.
        Idempotent. FAILED_PRECONDITION when the batch is finished or cancelling."""
        request = batch_service_pb2.PauseBatchRequest(batch_id=batch_id)
        with rpc_errors():
            response = self._stub.PauseBatch(
                request, timeout=self._timeout, metadata=self._metadata
            )
        return Batch.from_proto(response.batch)

    def resume(self, batch_id: str) -> Batch:
        """Resumes a PAUSED batch. Idempotent. FAILED_PRECONDITION when the batch is
        finished or cancelling."""
        request = batch_service_pb2.ResumeBatchRequest(batch_id=batch_id)
        with rpc_errors():
            response = self._stub.ResumeBatch(
                request, timeout=self._timeout, metadata=self._metadata
            )
        return Batch.from_proto(response.batch)

    def update(
        self,
        batch_id: str,
        *,
        priority: int | None = None,
        max_per_second: float | None = None,
        burst: int | None = None,
        max_concurrent: int | None = None,
    ) -> Batch:
        """Changes the options given (the others are kept) of a queued, running or paused
        batch. INVALID_ARGUMENT when none is given or a value is out of range."""
        request = update_request(
            batch_id,
            priority=priority,
            max_per_second=max_per_second,
            burst=burst,
            max_concurrent=max_concurrent,
        )
        with rpc_errors():
            response = self._stub.UpdateBatch(
                request, timeout=self._timeout, metadata=self._metadata
            )
        return Batch.from_proto(response.batch)

    def retry(
        self,
        batch_id: str,
        custom_ids: Iterable[str] | None = None,
        *,
        request_id: str | None = None,
    ) -> RetryResult:
        """Runs FAILED and EXPIRED items again (every one, or those in `custom_ids`)
        with a fresh attempt budget; the batch returns to RUNNING. A `request_id`
        makes it safe to repeat. FAILED_PRECONDITION while the batch is cancelling."""
        request = batch_service_pb2.RetryBatchItemsRequest(
            batch_id=batch_id, custom_ids=custom_ids or (), request_id=request_id or ""
        )
        with rpc_errors():
            response = self._stub.RetryBatchItems(
                request, timeout=self._timeout, metadata=self._metadata
            )
        return RetryResult(Batch.from_proto(response.batch), response.requeued, response.replayed)

    def delete(self, batch_id: str) -> None:
        """Deletes a finished batch and all its item outcomes. FAILED_PRECONDITION
        while the batch is queued or running: cancel it first."""
        request = batch_service_pb2.DeleteBatchRequest(batch_id=batch_id)
        with rpc_errors():
            self._stub.DeleteBatch(request, timeout=self._timeout, metadata=self._metadata)

    def items_page(
        self,
        batch_id: str,
        *,
        states: Iterable[ItemState] | None = None,
        page_size: int = 0,
        page_token: str = "",
    ) -> Page[BatchItem]:
        """Returns one page of a batch's item outcomes, in submission order."""
        request = list_items_request(batch_id, states, page_size, page_token)
        with rpc_errors():
            response = self._stub.ListBatchItems(
                request, timeout=self._timeout, metadata=self._metadata
            )
        return Page(tuple(map(BatchItem.from_proto, response.items)), response.next_page_token)

    def items(
        self,
        batch_id: str,
        *,
        states: Iterable[ItemState] | None = None,
        page_size: int = 0,
    ) -> Iterator[BatchItem]:
        """Yields the outcome of every item (in one of `states`, if given), page by page."""
        states = builtins.list(states or ())
        token = ""
        while True:
            page = self.items_page(batch_id, states=states, page_size=page_size, page_token=token)
            yield from page.items
            if not page.next_page_token:
                return
            token = page.next_page_token

    def export_results(
        self,
        batch_id: str,
        *,
        order: ExportOrder | str = ExportOrder.SUBMISSION,
        after: str = "",
        timeout: float | None = None,
    ) -> Iterator[ResultsPage]:
        """Yields a finished batch's results as pages of JSON Lines; see
        `AsyncClient.export_results`."""
        request = export_request(batch_id, order, after)
        call = self._stub.ExportBatchResults(request, timeout=timeout, metadata=self._metadata)
        try:
            with rpc_errors():
                yield from map(ResultsPage.from_proto, call)
        finally:
            call.cancel()

    def handlers(self) -> builtins.list[HandlerInfo]:
        """Returns the handlers that workers have published."""
        with rpc_errors():
            response = self._stub.ListHandlers(
                batch_service_pb2.ListHandlersRequest(),
                timeout=self._timeout,
                metadata=self._metadata,
            )
        return [HandlerInfo.from_proto(h) for h in response.handlers]

    def watch(
        self,
        batch_id: str,
        *,
        min_interval: float | timedelta | None = 0.25,
        heartbeat_interval: float | timedelta | None = None,
        retry: WatchRetry | None = None,
        on_reconnect: Callable[[WatchReconnect], None] | None = None,
    ) -> Iterator[BatchProgress]:
        """Yields progress snapshots until, and including, the terminal one,
        reconnecting as `AsyncClient.watch` does."""
        session = WatchSession(batch_id, retry or WatchRetry(), on_reconnect)
        request = watch_request(batch_id, min_interval, heartbeat_interval)
        while True:
            call = self._stub.WatchProgress(request, metadata=self._metadata)
            terminal = False
            try:
                for response in call:
                    progress = session.snapshot(response)
                    terminal = progress.state.is_terminal
                    yield progress
                    if terminal:
                        return
                error = session.ended_early()
            except grpc.RpcError as exc:
                # A failed stream raises itself, and its traceback holds a frame that holds
                # it: a cycle that only the collector frees — at interpreter exit, where the
                # call's __del__ waits for a lock that gRPC's stopped threads hold, and the
                # process hangs. Without the traceback it goes once dropped.
                exc.__traceback__ = None
                error = session.failed(exc)
            finally:
                _hang_up(call, terminal)
            time.sleep(session.backoff(error))

    def watch_batches(
        self,
        *,
        states: Iterable[BatchState | int] | None = None,
        labels: Mapping[str, str] | None = None,
        handler: str = "",
        types: Iterable[BatchEventType | int] | None = None,
        cursor: str = "",
        from_oldest: bool = False,
        heartbeat_interval: float | timedelta | None = None,
        heartbeats: bool = False,
        retry: WatchRetry | None = None,
        on_reconnect: Callable[[WatchReconnect], None] | None = None,
    ) -> Iterator[BatchEvent]:
        """Yields the events of the caller's tenant's batches as they happen, for ever,
        resuming a lost stream from the last cursor as `AsyncClient.watch_batches`."""
        session = EventsSession(
            states=states,
            labels=labels,
            handler=handler,
            types=types,
            cursor=cursor,
            from_oldest=from_oldest,
            heartbeat_interval=heartbeat_interval,
            policy=retry or WatchRetry(),
            on_reconnect=on_reconnect,
        )
        while True:
            call = self._stub.WatchBatches(session.request(), metadata=self._metadata)
            try:
                for response in call:
                    event = session.received(response)
                    if heartbeats or not event.heartbeat:
                        yield event
                error = session.ended_early()
            except grpc.RpcError as exc:
                exc.__traceback__ = None  # as in watch(): no cycle through the traceback
                error = session.failed(exc)
            finally:
                call.cancel()
            time.sleep(session.backoff(error))


def _hang_up(call: Any, terminal: bool) -> None:
    """`AsyncClient`'s `_hang_up`: after the terminal snapshot, the service's end of the
    stream awaited up to CLOSE_GRACE seconds, else a cancel."""
    if terminal and not call.done():
        closed = threading.Event()
        call.add_done_callback(lambda _: closed.set())
        closed.wait(CLOSE_GRACE)
    call.cancel()  # nothing to cancel once the call is done
