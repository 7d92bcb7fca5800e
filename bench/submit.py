"""Items/s the server accepts: SubmitBatch (10,000-item messages) with Struct params and
with params_json, and UploadBatch; the server's peak RSS for the uploads.

Items are built as `batchd.v1.Item` messages before the clock starts, so the figures are
the server's (and the wire's), not the client's conversion. Messages go one at a time;
the worker is paused meanwhile, so that it takes no CPU from the server, and given a
long BATCHD_WORKER_TTL so that the server still sees the `noop` handler as served. The
server's peak RSS (VmHWM) is read before anything is sent and after the uploads, which
come first. Redis: commands per item accepted (INFO commandstats delta over the uploads
and the submits, divided by all their items: with the worker paused, the server's own
work) and memory per pending item (the growth of Redis's stored bytes,
`bench.service.redis_stored_bytes`, over the UploadBatch, whose items no worker takes,
divided by its items).

    .venv/bin/python -m bench.submit --items 1000000 --upload-items 2000000   # a full run
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import Sequence
from pathlib import Path

from google.protobuf import struct_pb2

from batchd.client import AsyncClient
from batchd.v1 import batch_pb2
from bench.service import (
    Service,
    paused,
    peak_rss_mib,
    redis_commands,
    redis_memory_growth,
    report,
    running_service,
    wait_for_handler,
)


def build_items(count: int, struct: bool) -> list[batch_pb2.Item]:
    built = []
    for i in range(count):
        custom_id = f"item-{i}"
        if struct:
            params = struct_pb2.Struct()
            params.update({"n": i, "tag": "bench"})
            built.append(batch_pb2.Item(custom_id=custom_id, params=params))
        else:
            params_json = f'{{"n":{i},"tag":"bench"}}'.encode()
            built.append(batch_pb2.Item(custom_id=custom_id, params_json=params_json))
    return built


async def submit_rate(client: AsyncClient, built: list[batch_pb2.Item], per_message: int) -> float:
    started = time.perf_counter()
    for first in range(0, len(built), per_message):
        await client.submit("noop", built[first : first + per_message])
    return len(built) / (time.perf_counter() - started)


async def upload_rate(client: AsyncClient, built: list[batch_pb2.Item]) -> float:
    started = time.perf_counter()
    await client.upload("noop", built)
    return len(built) / (time.perf_counter() - started)


async def run(args: argparse.Namespace, service: Service) -> dict[str, float]:
    figures: dict[str, float] = {"items": args.items, "upload_items": args.upload_items}
    uploads = build_items(args.upload_items, struct=False)
    as_json = build_items(args.items, struct=False)
    as_struct = build_items(args.items, struct=True)
    pid, url = service.server_pid, service.redis_url
    async with AsyncClient(service.target) as client:
        await wait_for_handler(client, "noop")
        with paused(service.worker_pids):  # only once it has published its handlers
            figures["server_idle_peak_rss_mib"] = peak_rss_mib(pid)
            before = redis_commands(url)
            rate, grown = await redis_memory_growth(url, upload_rate(client, uploads))
            figures["upload_items_per_second"] = rate
            figures["server_peak_rss_mib"] = peak_rss_mib(pid)
            figures["submit_json_items_per_second"] = await submit_rate(
                client, as_json, args.per_message
            )
            figures["submit_struct_items_per_second"] = await submit_rate(
                client, as_struct, args.per_message
            )
            commands = redis_commands(url) - before
    accepted = len(uploads) + len(as_json) + len(as_struct)
    figures["redis_commands_per_item"] = commands / accepted
    figures["redis_bytes_per_pending_item"] = grown / len(uploads)
    return figures


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--items", type=int, default=200_000, help="items per SubmitBatch mode")
    parser.add_argument("--upload-items", type=int, default=200_000)
    parser.add_argument("--per-message", type=int, default=10_000, help="items per SubmitBatch")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)
    with running_service(env={"BATCHD_WORKER_TTL": "3600"}) as service:
        figures = asyncio.run(run(args, service))
    figures["struct_ratio_to_json"] = (
        figures["submit_struct_items_per_second"] / figures["submit_json_items_per_second"]
    )
    figures["upload_ratio_to_submit_json"] = (
        figures["upload_items_per_second"] / figures["submit_json_items_per_second"]
    )
    figures["peak_rss_ratio_to_idle"] = (
        figures["server_peak_rss_mib"] / figures["server_idle_peak_rss_mib"]
    )
    report(figures, args.json)


if __name__ == "__main__":
    main()
