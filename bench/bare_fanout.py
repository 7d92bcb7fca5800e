"""The baseline of `bench.watchers`: grpc.aio alone, with no batchd, fanning one message
out to K streams at once.

A server process with one streaming method: each call gets a first message at once,
then, once `Release` is called, a last one and OK. The messages are a serialized
WatchProgressResponse (the same bytes to every stream), so the wire carries what batchd
sends; the server has batchd's channel arguments. The delay from the release to the
last stream's last message is what grpc.aio itself needs to reach K streams.
"""

from __future__ import annotations

import asyncio
import time
from multiprocessing.connection import Connection
from typing import Any

import grpc

from batchd.core.config import Settings
from batchd.server.app import server_options
from batchd.v1 import batch_pb2, batch_service_pb2

__all__ = ["release", "serve", "watch"]

SERVICE = "bench.BareFanout"
WATCH = f"/{SERVICE}/Watch"
RELEASE = f"/{SERVICE}/Release"


def _message() -> bytes:
    now = time.time()
    progress = batch_pb2.BatchProgress(
        batch_id="b-0123456789abcdef",
        state=batch_pb2.BATCH_STATE_COMPLETED,
        total_items=200_000,
        counts=batch_pb2.ItemCounts(succeeded=200_000),
        items_per_second=150_000.0,
    )
    for stamp in (progress.create_time, progress.start_time, progress.end_time):
        stamp.FromNanoseconds(int(now * 1e9))
    progress.observe_time.FromNanoseconds(int(now * 1e9))
    return batch_service_pb2.WatchProgressResponse(progress=progress).SerializeToString()


def serve(pipe: Connection) -> None:
    """Runs the server (in its own process) and sends its port down `pipe`."""
    asyncio.run(_serve(pipe))


async def _serve(pipe: Connection) -> None:
    released = asyncio.get_running_loop().create_future()
    message = _message()

    async def watch(request: bytes, context: Any) -> Any:
        yield message
        await released
        yield message

    async def release(request: bytes, context: Any) -> bytes:
        if not released.done():
            released.set_result(None)
        return b""

    server = grpc.aio.server(options=server_options(Settings()))
    server.add_generic_rpc_handlers(
        (
            grpc.method_handlers_generic_handler(
                SERVICE,
                {
                    "Watch": grpc.unary_stream_rpc_method_handler(watch),
                    "Release": grpc.unary_unary_rpc_method_handler(release),
                },
            ),
        )
    )
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    pipe.send(port)
    await server.wait_for_termination()


async def watch(channel: grpc.aio.Channel, seen: Any) -> None:
    """One stream: counts its first message in `seen` (a bench.watchers.Watchers), then
    notes when its last one came."""
    method: Any = channel.unary_stream(WATCH)  # bytes in and out: no (de)serializers
    call = method(b"")
    first = True
    try:
        await call.read()
        first = False
        seen.firsts += 1
        if seen.settled():
            seen.first.set()
        await call.read()
        seen.terminal.append(time.time())
    except grpc.RpcError as exc:
        seen.failed[exc.code().name] += 1
    if first and seen.settled():
        seen.first.set()


async def release(target: str) -> None:
    async with grpc.aio.insecure_channel(target) as channel:
        method: Any = channel.unary_unary(RELEASE)
        await method(b"")
