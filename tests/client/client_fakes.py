"""A tiny real gRPC server for the client's tests (fixtures in conftest.py).

`FakeBatchService` is a scripted batchd.v1.BatchService on a real `grpc.aio`
server (port 0): tests tell it which rich errors to return, which snapshots a
WatchProgress stream sends and where it breaks, and read back what it received.
The client under test talks to it over a real channel; nothing is mocked.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc
from google.protobuf import duration_pb2
from google.protobuf.message import Message
from google.rpc import status_pb2
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_status import rpc_status

from batchd.v1 import batch_pb2, batch_service_pb2, batch_service_pb2_grpc

pb = batch_service_pb2

# Reconnect at once in tests: the channel's own backoff starts at 1 s otherwise.
FAST_RECONNECT = (
    ("grpc.initial_reconnect_backoff_ms", 50),
    ("grpc.min_reconnect_backoff_ms", 50),
    ("grpc.max_reconnect_backoff_ms", 200),
)


@dataclass(frozen=True)
class Abort:
    """A scripted failure: the RPC ends with this status and rich details."""

    code: grpc.StatusCode
    message: str
    details: Sequence[Message] = ()


HANG = "hang"
"""A watch script step: keep the stream open until the client cancels it."""

CLOSE_SLOWLY = "close slowly"
"""A watch script step: end the stream (OK) only after a moment, as a loaded service
might after a terminal snapshot."""

WatchStep = pb.WatchProgressResponse | Abort | str


def progress(
    state: int,
    *,
    total: int = 10,
    pending: int = 0,
    running: int = 0,
    succeeded: int = 0,
    failed: int = 0,
    cancelled: int = 0,
    expired: int = 0,
    heartbeat: bool = False,
    batch_id: str = "b1",
) -> pb.WatchProgressResponse:
    counts = batch_pb2.ItemCounts(
        pending=pending,
        running=running,
        succeeded=succeeded,
        failed=failed,
        cancelled=cancelled,
        expired=expired,
    )
    eta = duration_pb2.Duration(seconds=7)
    return pb.WatchProgressResponse(
        progress=batch_pb2.BatchProgress(
            batch_id=batch_id,
            state=batch_pb2.BatchState.ValueType(state),
            total_items=total,
            counts=counts,
            items_per_second=2.5,
            eta=eta,
        ),
        heartbeat=heartbeat,
    )


def make_batch(batch_id: str, state: int = batch_pb2.BATCH_STATE_QUEUED, total: int = 3) -> Any:
    batch = batch_pb2.Batch(
        batch_id=batch_id,
        handler="noop",
        state=batch_pb2.BatchState.ValueType(state),
        total_items=total,
        chunk_count=1,
        counts=batch_pb2.ItemCounts(pending=total),
        metadata={"team": "data"},
        options=batch_pb2.BatchOptions(chunk_size=100),
    )
    batch.create_time.FromSeconds(1_700_000_000)
    return batch


@dataclass
class Upload:
    """What one UploadBatch call received."""

    messages: list[pb.UploadBatchRequest] = field(default_factory=list)
    outcome: str = "open"  # "completed", "cancelled", "aborted", "rejected"

    @property
    def header(self) -> pb.UploadBatchHeader:
        return self.messages[0].header

    @property
    def item_messages(self) -> list[pb.UploadBatchRequest]:
        return [m for m in self.messages[1:] if m.WhichOneof("part") == "items"]

    @property
    def items(self) -> list[batch_pb2.Item]:
        return [i for m in self.item_messages for i in m.items.items]


class FakeBatchService(batch_service_pb2_grpc.BatchServiceServicer):
    def __init__(self) -> None:
        self.errors: dict[str, list[Abort]] = {}
        """Method name -> failures to return, one per call, before answering normally."""
        self.calls: dict[str, int] = {}
        self.batches: list[batch_pb2.Batch] = []
        self.items: list[batch_pb2.BatchItem] = []
        self.handlers: list[batch_pb2.HandlerInfo] = []
        self.requests: list[Message] = []
        self.uploads: list[Upload] = []
        self.upload_reject: Abort | None = None
        """Fail every upload right after its header."""
        self.watch_scripts: list[list[WatchStep]] = []
        self.watch_requests: list[pb.WatchProgressRequest] = []
        self.watch_cancelled = asyncio.Event()
        self.watch_finished = asyncio.Event()
        """Set when a WatchProgress stream's script ran to its end (not cancelled)."""
        self.export_script: list[pb.ExportBatchResultsResponse | Abort] = []
        """What ExportBatchResults sends: messages, then perhaps a failure."""
        self.events_scripts: list[list[pb.WatchBatchesResponse | Abort | str]] = []
        """What each WatchBatches call sends, in turn: messages, then perhaps a failure
        (or HANG)."""
        # Set when an upload's first items message arrives, for the async and
        # the sync (threaded) laziness tests.
        self.items_arrived = asyncio.Event()
        self.items_arrived_threadsafe = threading.Event()
        self.upload_finished = asyncio.Event()

    async def _enter(self, name: str, request: Message, context: Any) -> None:
        self.calls[name] = self.calls.get(name, 0) + 1
        self.requests.append(request)
        pending = self.errors.get(name)
        if pending:
            await abort(context, pending.pop(0))

    async def SubmitBatch(self, request: Any, context: Any) -> pb.SubmitBatchResponse:
        await self._enter("SubmitBatch", request, context)
        batch = make_batch(request.batch_id or "b-submitted", total=len(request.items))
        return pb.SubmitBatchResponse(batch=batch, replayed=bool(request.request_id))

    async def UploadBatch(self, request_iterator: Any, context: Any) -> pb.UploadBatchResponse:
        self.calls["UploadBatch"] = self.calls.get("UploadBatch", 0) + 1
        upload = Upload()
        self.uploads.append(upload)
        try:
            async for request in request_iterator:
                upload.messages.append(request)
                part = request.WhichOneof("part")
                if len(upload.messages) > 1 and part not in ("items", "end"):
                    # As batchd does; the client abandons an upload this way.
                    upload.outcome = "rejected"
                    failure = Abort(grpc.StatusCode.INVALID_ARGUMENT, "only one header")
                    await abort(context, failure)
                if len(upload.messages) == 1 and self.upload_reject is not None:
                    upload.outcome = "aborted"
                    await abort(context, self.upload_reject)
                if len(upload.messages) == 2:
                    self.items_arrived.set()
                    self.items_arrived_threadsafe.set()
            if upload.messages[-1].WhichOneof("part") != "end":
                # As batchd does: only the end message commits.
                upload.outcome = "rejected"
                await abort(context, Abort(grpc.StatusCode.INVALID_ARGUMENT, "no end message"))
            upload.outcome = "completed"
            batch = make_batch(upload.header.batch_id or "b-uploaded", total=len(upload.items))
            return pb.UploadBatchResponse(batch=batch)
        except asyncio.CancelledError:
            if upload.outcome == "open":
                upload.outcome = "cancelled"
            raise
        finally:
            self.upload_finished.set()

    async def GetBatch(self, request: Any, context: Any) -> pb.GetBatchResponse:
        await self._enter("GetBatch", request, context)
        return pb.GetBatchResponse(batch=make_batch(request.batch_id))

    async def ListBatches(self, request: Any, context: Any) -> pb.ListBatchesResponse:
        await self._enter("ListBatches", request, context)
        start = int(request.page_token or 0)
        end = start + (request.page_size or 100)
        token = str(end) if end < len(self.batches) else ""
        return pb.ListBatchesResponse(batches=self.batches[start:end], next_page_token=token)

    async def CancelBatch(self, request: Any, context: Any) -> pb.CancelBatchResponse:
        await self._enter("CancelBatch", request, context)
        batch = make_batch(request.batch_id, state=batch_pb2.BATCH_STATE_CANCELLING)
        return pb.CancelBatchResponse(batch=batch)

    async def RetryBatchItems(self, request: Any, context: Any) -> pb.RetryBatchItemsResponse:
        await self._enter("RetryBatchItems", request, context)
        batch = make_batch(request.batch_id, state=batch_pb2.BATCH_STATE_RUNNING)
        requeued = len(request.custom_ids) or 2
        return pb.RetryBatchItemsResponse(
            batch=batch, requeued=requeued, replayed=bool(request.request_id)
        )

    async def DeleteBatch(self, request: Any, context: Any) -> pb.DeleteBatchResponse:
        await self._enter("DeleteBatch", request, context)
        return pb.DeleteBatchResponse()

    async def PauseBatch(self, request: Any, context: Any) -> pb.PauseBatchResponse:
        await self._enter("PauseBatch", request, context)
        return pb.PauseBatchResponse(
            batch=make_batch(request.batch_id, state=batch_pb2.BATCH_STATE_PAUSED)
        )

    async def ResumeBatch(self, request: Any, context: Any) -> pb.ResumeBatchResponse:
        await self._enter("ResumeBatch", request, context)
        return pb.ResumeBatchResponse(
            batch=make_batch(request.batch_id, state=batch_pb2.BATCH_STATE_RUNNING)
        )

    async def UpdateBatch(self, request: Any, context: Any) -> pb.UpdateBatchResponse:
        await self._enter("UpdateBatch", request, context)
        batch = make_batch(request.batch_id, state=batch_pb2.BATCH_STATE_RUNNING)
        for path in request.update_mask.paths:
            setattr(batch.options, path, getattr(request.options, path))
        return pb.UpdateBatchResponse(batch=batch)

    async def ListBatchItems(self, request: Any, context: Any) -> pb.ListBatchItemsResponse:
        await self._enter("ListBatchItems", request, context)
        wanted = set(request.states)
        items = [i for i in self.items if not wanted or i.state in wanted]
        start = int(request.page_token or 0)
        end = start + (request.page_size or 100)
        token = str(end) if end < len(items) else ""
        return pb.ListBatchItemsResponse(items=items[start:end], next_page_token=token)

    async def ListHandlers(self, request: Any, context: Any) -> pb.ListHandlersResponse:
        await self._enter("ListHandlers", request, context)
        return pb.ListHandlersResponse(handlers=self.handlers)

    async def WatchProgress(
        self, request: Any, context: Any
    ) -> AsyncIterator[pb.WatchProgressResponse]:
        self.watch_requests.append(request)
        script = self.watch_scripts.pop(0) if self.watch_scripts else []
        try:
            for step in script:
                if isinstance(step, Abort):
                    await abort(context, step)
                elif step == HANG:
                    await asyncio.Event().wait()
                elif step == CLOSE_SLOWLY:
                    await asyncio.sleep(0.2)
                else:
                    assert isinstance(step, pb.WatchProgressResponse)
                    yield step
        except asyncio.CancelledError:
            self.watch_cancelled.set()
            raise
        self.watch_finished.set()

    async def WatchBatches(
        self, request: Any, context: Any
    ) -> AsyncIterator[pb.WatchBatchesResponse]:
        await self._enter("WatchBatches", request, context)
        for step in self.events_scripts.pop(0) if self.events_scripts else []:
            if isinstance(step, Abort):
                await abort(context, step)
            elif step == HANG:
                await asyncio.Event().wait()
            else:
                assert isinstance(step, pb.WatchBatchesResponse)
                yield step

    async def ExportBatchResults(
        self, request: Any, context: Any
    ) -> AsyncIterator[pb.ExportBatchResultsResponse]:
        await self._enter("ExportBatchResults", request, context)
        for step in self.export_script:
            if isinstance(step, Abort):
                await abort(context, step)
            else:
                yield step


async def abort(context: grpc.aio.ServicerContext[Any, Any], failure: Abort) -> None:
    """Ends the RPC the way batchd does: a google.rpc.Status in the trailers."""
    status = status_pb2.Status(code=failure.code.value[0], message=failure.message)
    for detail in failure.details:
        status.details.add().Pack(detail)
    rich = rpc_status.to_status(status)
    await context.abort(rich.code, rich.details, rich.trailing_metadata)


class FakeServer:
    """A real grpc.aio server around a FakeBatchService; `restart()` keeps the port."""

    def __init__(self, service: FakeBatchService) -> None:
        self.service = service
        self.port = 0
        self._server: grpc.aio.Server | None = None

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def start(self) -> None:
        server = grpc.aio.server()
        batch_service_pb2_grpc.add_BatchServiceServicer_to_server(self.service, server)
        # SERVING, as the real server is: the client's channel watches it to balance.
        checks = health.aio.HealthServicer()
        await checks.set("batchd.v1.BatchService", health_pb2.HealthCheckResponse.SERVING)
        health_pb2_grpc.add_HealthServicer_to_server(checks, server)
        self.port = server.add_insecure_port(f"127.0.0.1:{self.port}")
        await server.start()
        self._server = server

    async def stop(self) -> None:
        if self._server is not None:
            await self._server.stop(None)
            self._server = None

    async def restart(self) -> None:
        await self.stop()
        await self.start()
