"""`AsyncClient`: the batchd API over a `grpc.aio` channel."""

from __future__ import annotations

import asyncio
import builtins
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterable, Mapping, Sequence
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
    aiter_upload_requests,
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
from batchd.client._upload import upload_async
from batchd.client._watch import CLOSE_GRACE, WatchReconnect, WatchRetry, WatchSession
from batchd.v1 import batch_service_pb2, batch_service_pb2_grpc

__all__ = ["AsyncClient"]


class AsyncClient:
    """An asyncio client of batchd.v1.BatchService.

    Opens a channel to `target`, or uses `channel`, which it then leaves open on
    `close()`. The channel it opens is plaintext unless given `tls` (True: the
    system's root CAs; a `TLS` for a CA file and, for mTLS, a client certificate)
    or ready-made `credentials`. Unary calls have a deadline
    of `timeout` seconds (None: none). Every failed call raises `BatchdError`. With
    `token` (an API key or a JWT), every call carries `authorization: Bearer <token>`.

        async with AsyncClient("localhost:50051") as client:
            result = await client.upload("http.request", items)
            async for progress in client.watch(result.batch.batch_id):
                ...
    """

    def __init__(
        self,
        target: str = DEFAULT_TARGET,
        *,
        channel: grpc.aio.Channel | None = None,
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
                channel = grpc.aio.insecure_channel(target, options=options)
            else:
                channel = grpc.aio.secure_channel(target, credentials, options=options)
        self._channel = channel
        self._stub = batch_service_pb2_grpc.BatchServiceStub(channel)
        self._timeout = timeout

    async def close(self) -> None:
        """Closes the channel, if the client opened it."""
        if self._owns_channel:
            await self._channel.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def submit(
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
        """Submits a batch in one message (SubmitBatch): up to 10,000 items and 4 MiB.
        Use `upload()` for anything larger or for items you would rather stream.
        With a `start_time` (an aware datetime, at most 30 days ahead) the batch is
        accepted now and waits QUEUED until then.

        With a `request_id`, a call that fails UNAVAILABLE (its server lost mid-call) is
        sent again, up to 3 times: the service answers a repeat with the batch the first
        call created (`replayed`), so nothing is submitted twice. Without one it is not."""
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
                    response = await self._stub.SubmitBatch(
                        request, timeout=self._timeout, metadata=self._metadata
                    )
                return SubmitResult(Batch.from_proto(response.batch), response.replayed)
            except BatchdError as exc:
                failures += 1
                await asyncio.sleep(retry_delay(exc, request.request_id, failures))

    async def upload(
        self,
        handler: str,
        items: Iterable[ItemLike] | AsyncIterable[ItemLike],
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
        timeout: float | None = None,  # noqa: ASYNC109 (a gRPC deadline reaches the server)
    ) -> SubmitResult:
        """Submits a batch of any size as a stream (UploadBatch): a header, then
        messages of up to `items_per_message` items (and `max_message_bytes`).

        Items are pulled from `items` only as messages are sent, so the iterable is
        never held in memory whole. If it raises (or an item is invalid), the
        upload is abandoned, so the service keeps nothing, and the exception
        propagates unchanged. A sync iterable is iterated on the event loop: keep
        it non-blocking.

        `start_early`: items start as their messages arrive, not once the last one
        has (`item_count` of them, or `len(items)`). Then an upload that fails
        part-way leaves its batch CANCELLED, with the items that ran kept.
        """
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
        call = self._stub.UploadBatch(timeout=timeout, metadata=self._metadata)
        response = await upload_async(call, aiter_upload_requests(header, items, packer))
        return SubmitResult(Batch.from_proto(response.batch), response.replayed)

    async def get(self, batch_id: str) -> Batch:
        """Returns one batch."""
        request = batch_service_pb2.GetBatchRequest(batch_id=batch_id)
        with rpc_errors():
            response = await self._stub.GetBatch(
                request, timeout=self._timeout, metadata=self._metadata
            )
        return Batch.from_proto(response.batch)

    async def list_page(
        self,
        *,
        states: Iterable[BatchState] | None = None,
        page_size: int = 0,
        page_token: str = "",
    ) -> Page[Batch]:
        """Returns one page of batches, newest first (`page_size` 0: the service's 100)."""
        request = list_batches_request(states, page_size, page_token)
        with rpc_errors():
            response = await self._stub.ListBatches(
                request, timeout=self._timeout, metadata=self._metadata
            )
        return Page(tuple(map(Batch.from_proto, response.batches)), response.next_page_token)

    async def list(
        self, *, states: Iterable[BatchState] | None = None, page_size: int = 0
    ) -> AsyncIterator[Batch]:
        """Yields every batch (in one of `states`, if given), newest first, page by page."""
        states = builtins.list(states or ())
        token = ""
        while True:
            page = await self.list_page(states=states, page_size=page_size, page_token=token)
            for batch in page.items:
                yield batch
            if not page.next_page_token:
                return
            token = page.next_page_token

    async def cancel(self, batch_id: str) -> Batch:
        """Cancels a batch; returns it as it stands after the request. Idempotent."""
        request = batch_service_pb2.CancelBatchRequest(batch_id=batch_id)
        with rpc_errors():
            response = await self._stub.CancelBatch(
                request, timeout=self._timeout, metadata=self._metadata
            )
        return Batch.from_proto(response.batch)

    async def pause(self, batch_id: str) -> Batch:
        """Pauses a QUEUED or RUNNING batch: no new item starts, running ones finish.
        Idempotent. FAILED_PRECONDITION when the batch is finished or cancelling."""
        request = batch_service_pb2.PauseBatchRequest(batch_id=batch_id)
        with rpc_errors():
            response = await self._stub.PauseBatch(
                request, timeout=self._timeout, metadata=self._metadata
            )
        return Batch.from_proto(response.batch)

    async def resume(self, batch_id: str) -> Batch:
        """Resumes a PAUSED batch. Idempotent. FAILED_PRECONDITION when the batch is
        finished or cancelling."""
        request = batch_service_pb2.ResumeBatchRequest(batch_id=batch_id)
        with rpc_errors():
            response = await self._stub.ResumeBatch(
                request, timeout=self._timeout, metadata=self._metadata
            )
        return Batch.from_proto(response.batch)

    async def update(
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
            response = await self._stub.UpdateBatch(
                request, timeout=self._timeout, metadata=self._metadata
            )
        return Batch.from_proto(response.batch)

    async def retry(
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
            response = await self._stub.RetryBatchItems(
                request, timeout=self._timeout, metadata=self._metadata
            )
        return RetryResult(Batch.from_proto(response.batch), response.requeued, response.replayed)

    async def delete(self, batch_id: str) -> None:
        """Deletes a finished batch and all its item outcomes. FAILED_PRECONDITION
        while the batch is queued or running: cancel it first."""
        request = batch_service_pb2.DeleteBatchRequest(batch_id=batch_id)
        with rpc_errors():
            await self._stub.DeleteBatch(request, timeout=self._timeout, metadata=self._metadata)

    async def items_page(
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
            response = await self._stub.ListBatchItems(
                request, timeout=self._timeout, metadata=self._metadata
            )
        return Page(tuple(map(BatchItem.from_proto, response.items)), response.next_page_token)

    async def items(
        self,
        batch_id: str,
        *,
        states: Iterable[ItemState] | None = None,
        page_size: int = 0,
    ) -> AsyncIterator[BatchItem]:
        """Yields the outcome of every item (in one of `states`, if given), page by page."""
        states = builtins.list(states or ())
        token = ""
        while True:
            page = await self.items_page(
                batch_id, states=states, page_size=page_size, page_token=token
            )
            for item in page.items:
                yield item
            if not page.next_page_token:
                return
            token = page.next_page_token

    async def export_results(
        self,
        batch_id: str,
        *,
        order: ExportOrder | str = ExportOrder.SUBMISSION,
        after: str = "",
        timeout: float | None = None,  # noqa: ASYNC109 (a gRPC deadline reaches the server)
    ) -> AsyncIterator[ResultsPage]:
        """Yields a finished batch's results as pages of JSON Lines, one line per item,
        in submission order or by custom_id (`order`: an `ExportOrder`, "submission",
        "custom_id" or "id"), from the line after the page whose `cursor` is `after`.

        FAILED_PRECONDITION while the batch is unfinished; an export that breaks off
        carries on with `after=` the last page's cursor.
        """
        request = export_request(batch_id, order, after)
        call = self._stub.ExportBatchResults(request, timeout=timeout, metadata=self._metadata)
        try:
            with rpc_errors():
                async for response in call:
                    yield ResultsPage.from_proto(response)
        finally:
            call.cancel()

    async def handlers(self) -> builtins.list[HandlerInfo]:
        """Returns the handlers that workers have published."""
        with rpc_errors():
            response = await self._stub.ListHandlers(
                batch_service_pb2.ListHandlersRequest(),
                timeout=self._timeout,
                metadata=self._metadata,
            )
        return [HandlerInfo.from_proto(h) for h in response.handlers]

    async def watch(
        self,
        batch_id: str,
        *,
        min_interval: float | timedelta | None = 0.25,
        heartbeat_interval: float | timedelta | None = None,
        retry: WatchRetry | None = None,
        on_reconnect: Callable[[WatchReconnect], None] | None = None,
    ) -> AsyncIterator[BatchProgress]:
        """Yields progress snapshots of a batch until, and including, the terminal one.

        The first snapshot comes at once, then one per change (at most one per
        `min_interval` seconds) and a heartbeat (`heartbeat=True`) when nothing
        changes. A lost stream (UNAVAILABLE, a connection gone, a server closing
        it early) is reopened with backoff per `retry`; the next snapshot simply
        carries on. `on_reconnect`, if given, is called at once each time the
        stream is lost (with the error, the attempt and the delay before it), so a
        display can say so. Other errors, and running out of retries, raise
        `BatchdError`.
        """
        session = WatchSession(batch_id, retry or WatchRetry(), on_reconnect)
        request = watch_request(batch_id, min_interval, heartbeat_interval)
        while True:
            call = self._stub.WatchProgress(request, metadata=self._metadata)
            terminal = False
            try:
                async for response in call:
                    progress = session.snapshot(response)
                    terminal = progress.state.is_terminal
                    yield progress
                    if terminal:
                        return
                error = session.ended_early()
            except grpc.RpcError as exc:
                error = session.failed(exc)
            finally:
                await _hang_up(call, terminal)
            await asyncio.sleep(session.backoff(error))

    async def watch_batches(
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
    ) -> AsyncIterator[BatchEvent]:
        """Yields the events of the caller's tenant's batches as they happen, for ever.

        Only events passing every filter given: the batch's state after the event in
        `states`, its metadata holding every `labels` pair, its `handler`, the event's
        type in `types`. From after `cursor` (an event's `cursor`), else from the
        oldest event retained with `from_oldest`, else from now. A lost stream
        (UNAVAILABLE: a server stopping, a connection gone) is resumed from the last
        cursor received, with backoff per `retry`: no event lost, none repeated.
        `heartbeats=True` yields heartbeats too (`heartbeat=True`, only a cursor), so
        a consumer of a rare filter can save a recent cursor. A cursor whose events
        were trimmed raises `BatchdError` FAILED_PRECONDITION, as do other errors and
        running out of retries.
        """
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
                async for response in call:
                    event = session.received(response)
                    if heartbeats or not event.heartbeat:
                        yield event
                error = session.ended_early()
            except grpc.RpcError as exc:
                error = session.failed(exc)
            finally:
                call.cancel()
            await asyncio.sleep(session.backoff(error))


async def _hang_up(call: Any, terminal: bool) -> None:
    """Ends a watch's stream: after the terminal snapshot the service's own end of it,
    awaited up to CLOSE_GRACE seconds, else a cancel."""
    try:
        if terminal and not call.done():
            async with asyncio.timeout(CLOSE_GRACE):
                await call.code()
    except TimeoutError:
        pass
    finally:
        call.cancel()  # nothing to cancel once the call is done
