"""UploadBatch streams that send items and never commit: what they cost the server and
Valkey, and what is left once they end.

Starts a private Valkey (AOF on, as the embedded default), `batchd-server` and one idle
`batchd-worker` as subprocesses, and opens `--streams` UploadBatch calls at once through
a raw stub, four times over, one phase after another:

- `bytes`: items of `--params-kib` KiB of params each, sent until the server refuses the
  stream (RESOURCE_EXHAUSTED: BATCHD_MAX_UPLOAD_BYTES = `--upload-mib` for one upload,
  BATCHD_MAX_STAGED_BYTES = `--staged-mib` for all of them together);
- `items`: items of `{}` under 64-character custom ids, sent until refused
  (RESOURCE_EXHAUSTED: the same byte caps, which count each item's params, twice its id
  and a fixed overhead, or BATCHD_MAX_BATCH_ITEMS = `--batch-items`);
- `idle`: items as in `bytes` up to half the byte cap, then silence until the server
  ends the stream (DEADLINE_EXCEEDED, BATCHD_UPLOAD_IDLE_TIMEOUT = `--idle-seconds`);
- `cancelled`: as `idle`, then the client cancels the calls once all it sent is staged.

For each phase: the server's RSS (psutil) and Valkey's `used_memory` before, at their
peak (sampled every 20 ms while the streams are open) and after (once the staging index
is empty and Valkey has freed what it deletes lazily), how each stream ended, and the
keys the uploads left behind (none expected), and which quota refused the streams.
Derived: Valkey's growth at the peak per byte the caps let the streams stage at once
(`bytes`, `items`). docs/performance.md has the figures.

    .venv/bin/python -m bench.open_uploads --upload-mib 64 --staged-mib 128 --batch-items 1000000
"""

from __future__ import annotations

import argparse
import asyncio
import threading
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import psutil
from redis.asyncio import Redis

from batchd.client import AsyncClient, BatchdError
from batchd.core.keys import Keys
from batchd.v1 import batch_pb2, batch_service_pb2, batch_service_pb2_grpc
from bench.service import Service, peak_rss_mib, report, running_service, wait_for_handler

MIB = 1024 * 1024
SAMPLE_SECONDS = 0.02
LONGEST_ID = 64  # characters a custom_id may have
KEYS = Keys()
PHASES = ("bytes", "items", "idle", "cancelled")


@dataclass(frozen=True)
class Shape:
    """What each stream sends: items of `params` under `id_width`-character ids,
    `per_message` to a message, `chunk_size` to a staged chunk; `stop_after` items, then
    silence (None: until the server ends the call); `cancel`: the client cancels the call
    once all it sent is staged."""

    params: bytes
    id_width: int
    per_message: int
    chunk_size: int
    stop_after: int | None = None
    cancel: bool = False


@dataclass
class Stream:
    """One UploadBatch call: its batch id, the items it sent, how it ended."""

    batch_id: str
    sent: int = 0
    code: str = ""
    quota: str = ""  # the QuotaFailure's subject, for RESOURCE_EXHAUSTED
    quiet: threading.Event = field(default_factory=threading.Event)  # it sends no more


def padded_params(size: int) -> bytes:
    """A JSON object of exactly `size` bytes."""
    return b'{"pad":"' + b"x" * (size - 10) + b'"}'


def requests(
    stream: Stream, shape: Shape, over: threading.Event
) -> Iterator[batch_service_pb2.UploadBatchRequest]:
    """The header, then item messages without end, or up to `shape.stop_after` items and
    then silence until `over`. Never the end message: nothing is ever committed."""
    options = batch_pb2.BatchOptions(chunk_size=shape.chunk_size)
    header = batch_service_pb2.UploadBatchHeader(
        handler="noop", batch_id=stream.batch_id, options=options
    )
    yield batch_service_pb2.UploadBatchRequest(header=header)
    first = 0
    while shape.stop_after is None or first < shape.stop_after:
        items = [
            batch_pb2.Item(custom_id=f"{i:0{shape.id_width}d}", params_json=shape.params)
            for i in range(first, first + shape.per_message)
        ]
        yield batch_service_pb2.UploadBatchRequest(
            items=batch_service_pb2.UploadBatchItems(items=items)
        )
        first += shape.per_message
        stream.sent = first
    stream.quiet.set()
    over.wait()


def upload(
    target: str, stream: Stream, shape: Shape, release: threading.Event, over: threading.Event
) -> None:
    """One stream to its end (in a thread); with `shape.cancel`, cancelled on `release`.

    The synchronous API, because it reports the status the server sent: grpc.aio reports
    INTERNAL ("Internal error from Core") instead whenever a write was under way as the
    server ended the call (grpc/grpc#36066), which is most of the time here."""
    with grpc.insecure_channel(target) as channel:
        stub = batch_service_pb2_grpc.BatchServiceStub(channel)
        call = stub.UploadBatch.future(requests(stream, shape, over))
        if shape.cancel:
            release.wait()
            call.cancel()
        try:
            call.result()
            stream.code = "OK"  # never expected: no stream sends the end message
        except grpc.FutureCancelledError:
            stream.code = grpc.StatusCode.CANCELLED.name
        except grpc.RpcError as error:
            stream.code = error.code().name
            quotas = BatchdError.from_rpc_error(error).quota_violations
            stream.quota = quotas[0].subject if quotas else ""
    stream.quiet.set()


class Sampler:
    """The server's RSS and Valkey's used_memory, and the highest of each seen."""

    def __init__(self, redis: Redis, server_pid: int) -> None:
        self._redis = redis
        self._server = psutil.Process(server_pid)
        self.peak_rss = 0
        self.peak_used = 0

    async def read(self) -> tuple[int, int]:
        used = int((await self._redis.info("memory"))["used_memory"])
        rss = int(self._server.memory_info().rss)
        self.peak_rss, self.peak_used = max(self.peak_rss, rss), max(self.peak_used, used)
        return rss, used

    async def run(self) -> None:
        while True:
            await self.read()
            await asyncio.sleep(SAMPLE_SECONDS)


async def poll(condition: Callable[[], Awaitable[bool]], within: float = 120) -> None:
    """Until `condition()` holds, looking every SAMPLE_SECONDS."""
    async with asyncio.timeout(within):
        while not await condition():  # noqa: ASYNC110 (nothing to subscribe to)
            await asyncio.sleep(SAMPLE_SECONDS)


async def staged_items(redis: Redis) -> int:
    """Items the open uploads have staged, as the server's staging index counts them."""
    counts = await redis.hvals(KEYS.staging_items)  # type: ignore[misc]
    return sum(int(count) for count in counts)


async def stored_bytes(redis: Redis) -> int:
    """used_memory less the clients' and the AOF buffers (`bench.service.redis_stored_bytes`):
    what the data takes, without what comes and goes with the traffic."""
    memory = await redis.info("memory")
    buffers = int(memory.get("mem_clients_normal", 0)) + int(memory.get("mem_aof_buffer", 0))
    return int(memory["used_memory"]) - buffers


async def settled(redis: Redis) -> bool:
    """The staging index is empty and Valkey has freed what it deletes lazily."""
    memory = await redis.info("memory")
    empty = not await redis.exists(KEYS.staging, KEYS.staging_items, KEYS.staging_bytes)
    return empty and int(memory.get("lazyfree_pending_objects", 0)) == 0


async def leftover_keys(redis: Redis, streams: list[Stream]) -> int:
    """Keys of the streams' batches still in Valkey, and the staging index if any."""
    found = await redis.exists(KEYS.staging, KEYS.staging_items, KEYS.staging_bytes)
    for stream in streams:
        found += len([key async for key in redis.scan_iter(match=f"*{stream.batch_id}*")])
    return int(found)


async def phase(
    service: Service, redis: Redis, name: str, shape: Shape, count: int
) -> dict[str, float]:
    """`count` streams of `shape` at once, to their end; the figures, named `name_…`."""
    sampler = Sampler(redis, service.server_pid)
    rss_before, used_before = await sampler.read()
    stored_before = await stored_bytes(redis)
    streams = [Stream(f"{name}-{uuid.uuid4().hex[:12]}") for _ in range(count)]
    release, over = threading.Event(), threading.Event()
    sampling = asyncio.create_task(sampler.run())
    calls = [
        asyncio.create_task(asyncio.to_thread(upload, service.target, stream, shape, release, over))
        for stream in streams
    ]
    try:
        if shape.cancel:
            await poll(lambda: _true(all(s.quiet.is_set() for s in streams)))
            sent = sum(s.sent for s in streams)
            await poll(lambda: _at_least(staged_items(redis), sent))
            await sampler.read()
            release.set()
        await asyncio.gather(*calls)
    finally:
        release.set()
        over.set()
    await poll(lambda: settled(redis))
    sampling.cancel()
    rss_after, used_after = await sampler.read()
    stored_after = await stored_bytes(redis)
    figures: dict[str, float] = {
        f"{name}_items_sent": sum(s.sent for s in streams),
        f"{name}_server_rss_mib_before": rss_before / MIB,
        f"{name}_server_rss_mib_peak": sampler.peak_rss / MIB,
        f"{name}_server_rss_mib_after": rss_after / MIB,
        f"{name}_valkey_used_mib_before": used_before / MIB,
        f"{name}_valkey_used_mib_peak": sampler.peak_used / MIB,
        f"{name}_valkey_used_mib_after": used_after / MIB,
        f"{name}_valkey_stored_mib_before": stored_before / MIB,
        f"{name}_valkey_stored_mib_after": stored_after / MIB,
        f"{name}_leftover_keys": await leftover_keys(redis, streams),
    }
    for code, streams_ended in sorted(Counter(s.code for s in streams).items()):
        figures[f"{name}_ended_{code.lower()}"] = streams_ended
    for quota, refused in sorted(Counter(s.quota for s in streams if s.quota).items()):
        figures[f"{name}_refused_{quota}"] = refused
    ends = (f"{s.batch_id} {s.code} {s.quota}".rstrip() for s in streams)
    print(f"{name}: " + ", ".join(ends), flush=True)
    return figures


async def _at_least(count: Awaitable[int], wanted: int) -> bool:
    return await count >= wanted


async def _true(value: bool) -> bool:
    return value


def shapes(args: argparse.Namespace) -> dict[str, Shape]:
    params = padded_params(args.params_kib * 1024)
    per_message = max(1, MIB // len(params))  # about 1 MiB messages
    half = (args.upload_mib * MIB // 2) // len(params) // per_message * per_message
    big = Shape(params, 8, per_message, chunk_size=per_message)
    return {
        "bytes": big,
        "items": Shape(b"{}", LONGEST_ID, per_message=1000, chunk_size=1000),
        "idle": Shape(params, 8, per_message, per_message, stop_after=half),
        "cancelled": Shape(params, 8, per_message, per_message, stop_after=half, cancel=True),
    }


async def measure(service: Service, args: argparse.Namespace) -> dict[str, float]:
    async with AsyncClient(service.target) as client:
        await wait_for_handler(client, "noop")
    redis = Redis.from_url(service.redis_url)
    try:
        figures: dict[str, float] = {}
        for name, shape in shapes(args).items():
            if name in args.phases:
                figures.update(await phase(service, redis, name, shape, args.streams))
    finally:
        await redis.aclose()
    # What the byte caps let the streams stage at once.
    caps = args.streams * args.upload_mib * MIB
    if args.staged_mib > 0:
        caps = min(caps, args.staged_mib * MIB)
    for name in ("bytes", "items"):
        if name in args.phases:
            grown = (
                figures[f"{name}_valkey_used_mib_peak"] - figures[f"{name}_valkey_used_mib_before"]
            )
            figures[f"{name}_valkey_growth_per_capped_byte"] = grown * MIB / caps
    return figures


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--streams", type=int, default=3)
    parser.add_argument("--upload-mib", type=int, default=64, help="BATCHD_MAX_UPLOAD_BYTES")
    parser.add_argument(
        "--staged-mib", type=int, default=128, help="BATCHD_MAX_STAGED_BYTES (0: no limit)"
    )
    parser.add_argument("--batch-items", type=int, default=1_000_000)
    parser.add_argument("--params-kib", type=int, default=64)
    parser.add_argument("--idle-seconds", type=float, default=2.0)
    parser.add_argument("--phases", nargs="+", choices=PHASES, default=PHASES)
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)
    env = {
        "BATCHD_MAX_UPLOAD_BYTES": str(args.upload_mib * MIB),
        "BATCHD_MAX_STAGED_BYTES": str(args.staged_mib * MIB),
        "BATCHD_MAX_BATCH_ITEMS": str(args.batch_items),
        "BATCHD_UPLOAD_IDLE_TIMEOUT": str(args.idle_seconds),
    }
    with running_service(env=env) as service:
        figures = asyncio.run(measure(service, args))
        figures["server_peak_rss_mib"] = peak_rss_mib(service.server_pid)
    report(figures, args.json)


if __name__ == "__main__":
    main()
