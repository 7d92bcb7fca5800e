"""Streaming an UploadBatch call, and abandoning one so that the service keeps nothing.

The service commits an upload when its request stream ends. A grpc-python server
reads a *cancelled* stream as a plain end of stream for a moment, so cancelling
alone can race the commit and leave a partial batch behind. When the items run
into an error the client therefore first sends `ABANDON` (a second header, which
the service must reject with INVALID_ARGUMENT, dropping what it staged), waits a
little for that answer, and only then cancels.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncIterator, Coroutine, Iterator
from typing import Any

import grpc

from batchd.client._errors import BatchdError, rpc_errors
from batchd.v1 import batch_service_pb2

__all__ = ["ABANDON", "GuardedRequests", "upload_async"]

ABANDON = batch_service_pb2.UploadBatchRequest(header=batch_service_pb2.UploadBatchHeader())
"""Ends an upload in error: only the first message of a stream may be a header."""

ABANDON_WAIT = 5.0
"""Seconds to wait for the service to reject an abandoned upload before cancelling."""

_Call = grpc.aio.StreamUnaryCall[
    batch_service_pb2.UploadBatchRequest, batch_service_pb2.UploadBatchResponse
]


async def upload_async(
    call: _Call, messages: AsyncIterator[batch_service_pb2.UploadBatchRequest]
) -> batch_service_pb2.UploadBatchResponse:
    """Writes `messages` to `call` as they come and returns the response.

    An exception from `messages` abandons the upload and propagates unchanged; a
    failed call raises `BatchdError` with the service's status.
    """
    writer = _Writer(call)
    ended_early = False
    try:
        with rpc_errors():
            async for message in _abandon_on_error(messages, writer):
                if not await writer.write(message):
                    ended_early = True  # the service ended the call: its status says why
                    break
            if not ended_early:
                await writer.done_writing()
            response = await call
    except BaseException:
        call.cancel()
        raise
    if ended_early:
        raise BatchdError(grpc.StatusCode.INTERNAL, "the service ended the upload early")
    return response


class _Writer:
    """Writes to a call, and stops a write under way the moment the call ends.

    A grpc.aio write that fails because the service has ended the call replaces the
    status the service sent with INTERNAL "Internal error from Core" (grpc/grpc#36066),
    and a refusal mid-stream (RESOURCE_EXHAUSTED, say) would reach the caller as that.
    The call's done callbacks run as its status is set, before the failed write resumes:
    cancelling the write there leaves the status alone (grpc cancels nothing on a call
    already done), so awaiting the call then gives the service's code, message and
    details.
    """

    def __init__(self, call: _Call) -> None:
        self._call = call
        self._under_way: asyncio.Future[None] | None = None
        call.add_done_callback(self._ended)

    async def write(self, message: batch_service_pb2.UploadBatchRequest) -> bool:
        """Writes `message`; False when the call ended instead."""
        return await self._run(self._call.write(message))

    async def done_writing(self) -> bool:
        """Half-closes the call; False when it had ended already."""
        return await self._run(self._call.done_writing())

    async def _run(self, step: Coroutine[Any, Any, None]) -> bool:
        if self._call.done():
            step.close()
            return False
        self._under_way = asyncio.ensure_future(step)
        try:
            # wait(), not await: cancelling the step must not cancel this task.
            await asyncio.wait([self._under_way])
        except BaseException:
            self._under_way.cancel()
            raise
        step_done, self._under_way = self._under_way, None
        if step_done.cancelled():
            return False
        error = step_done.exception()
        if error is None:
            return True
        if isinstance(error, grpc.RpcError | asyncio.InvalidStateError) or self._call.done():
            return False  # the call ended: awaiting it gives its status
        raise error

    async def ended(self) -> None:
        """Waits for the call to end."""
        await self._call.code()

    def _ended(self, _: object) -> None:
        if self._under_way is not None:
            self._under_way.cancel()


async def _abandon_on_error(
    messages: AsyncIterator[batch_service_pb2.UploadBatchRequest], writer: _Writer
) -> AsyncIterator[batch_service_pb2.UploadBatchRequest]:
    try:
        async for message in messages:
            yield message
    except Exception:
        with contextlib.suppress(TimeoutError):
            if await writer.write(ABANDON):
                async with asyncio.timeout(ABANDON_WAIT):
                    await writer.ended()
        raise


class GuardedRequests:
    """The request messages of a sync UploadBatch call, kept from raising into grpc.

    grpc would log an exception from the request iterator with its traceback and
    end the call with UNKNOWN. Instead `error` keeps it for the caller, and the
    upload is abandoned: `ABANDON` is sent, and the call cancelled if the service
    has not ended it within `ABANDON_WAIT` seconds.
    """

    def __init__(self, messages: Iterator[batch_service_pb2.UploadBatchRequest]) -> None:
        self._messages = messages
        self._attached = threading.Event()
        self._call: grpc.Future[Any] | None = None
        self.error: Exception | None = None

    def attach(self, call: grpc.Future[Any]) -> None:
        """Hands over the call the messages are for; call it right after starting it."""
        self._call = call
        self._attached.set()

    def __iter__(self) -> Iterator[batch_service_pb2.UploadBatchRequest]:
        try:
            yield from self._messages
        except Exception as exc:
            self.error = exc
            yield ABANDON
            # grpc asks for more only while the call is still open.
            self._attached.wait()
            assert self._call is not None
            ended = threading.Event()
            self._call.add_done_callback(lambda _: ended.set())
            ended.wait(ABANDON_WAIT)
            self._call.cancel()
