"""What API-key authentication costs: SubmitBatch and UploadBatch items/s against a
service with `--auth tokens` beside one with `--auth none`, in the same run.

Both services run at once (each its own Valkey, server and paused worker); rounds
alternate between them, so that a slow moment of the machine hits both, and each
figure is the median of its rounds. Small messages make the per-call check count:
SubmitBatch sends `--per-message` items a call, so the ratio is that of calls too.

    .venv/bin/python -m bench.auth --items 200000 --per-message 100 --rounds 5   # full
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import statistics
from collections.abc import Sequence
from pathlib import Path

from redis.asyncio import Redis

from batchd.client import AsyncClient
from batchd.core.credentials import CredentialStore
from bench.service import Service, paused, report, running_service, wait_for_handler
from bench.submit import build_items, submit_rate, upload_rate

WORKER_ENV = {"BATCHD_WORKER_TTL": "3600"}


async def new_key(service: Service) -> str:
    redis = Redis.from_url(service.redis_url)
    try:
        key, _ = await CredentialStore(redis).create("bench", "submitter", "bench.auth")
    finally:
        await redis.aclose()
    return key


async def run(args: argparse.Namespace, off: Service, on: Service) -> dict[str, float]:
    built = build_items(args.items, struct=False)
    key = await new_key(on)
    rates: dict[str, list[float]] = {
        f"{call}_{mode}": [] for call in ("submit", "upload") for mode in ("off", "on")
    }
    async with (
        AsyncClient(off.target) as plain,
        AsyncClient(on.target, token=key) as keyed,
    ):
        for client in (plain, keyed):
            await wait_for_handler(client, "noop")
        with paused(off.worker_pids + on.worker_pids):
            for _ in range(args.rounds):
                for mode, client in (("off", plain), ("on", keyed)):
                    rates[f"submit_{mode}"].append(
                        await submit_rate(client, built, args.per_message)
                    )
                    rates[f"upload_{mode}"].append(await upload_rate(client, built))
    figures: dict[str, float] = {"items": args.items, "per_message": args.per_message}
    for name, values in rates.items():
        figures[f"{name}_items_per_second"] = statistics.median(values)
    for call in ("submit", "upload"):
        figures[f"{call}_ratio_on_to_off"] = (
            figures[f"{call}_on_items_per_second"] / figures[f"{call}_off_items_per_second"]
        )
    return figures


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--items", type=int, default=50_000, help="items per round and call")
    parser.add_argument("--per-message", type=int, default=100, help="items per SubmitBatch")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)
    with contextlib.ExitStack() as stack:
        off = stack.enter_context(running_service(env={**WORKER_ENV, "BATCHD_AUTH": "none"}))
        on = stack.enter_context(running_service(env={**WORKER_ENV, "BATCHD_AUTH": "tokens"}))
        figures = asyncio.run(run(args, off, on))
    report(figures, args.json)


if __name__ == "__main__":
    main()
