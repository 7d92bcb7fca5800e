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
from collections.abc import AsyncIterator, Iterator
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
    ended_early = False
    try:
        with rpc_errors():
            async for message in _abandon_on_error(messages, call):
                try:
                    await call.write(message)
                except grpc.aio.AioRpcError:
                    # The service ended the call (an unknown handler, say). A failed
                    # write reports a generic INTERNAL; the call's own status,
                    # awaited below, says what went wrong.
                    ended_early = True
                    break
            if not ended_early:
                await call.done_writing()
            response = await call
    except BaseException:
        call.cancel()
        raise
    if ended_early:
        raise BatchdError(grpc.StatusCode.INTERNAL, "the service ended the upload early")
    return response


async def _abandon_on_error(
    messages: AsyncIterator[batch_service_pb2.UploadBatchRequest], call: _Call
) -> AsyncIterator[batch_service_pb2.UploadBatchRequest]:
    try:
        async for message in messages:
            yield message
    except Exception:
        if not call.done():
            with contextlib.suppress(grpc.RpcError, asyncio.InvalidStateError, TimeoutError):
                await call.write(ABANDON)
                await asyncio.wait_for(call.code(), ABANDON_WAIT)
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
