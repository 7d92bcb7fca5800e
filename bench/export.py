"""ExportBatchResults of a finished batch of N `noop` items, end to end through the client:
outcomes per second written to a file, in submission order and by custom_id, beside the
way there was before it: ListBatchItems page by page (the baseline, on the first M items).

Starts a private Valkey, `batchd-server` and `batchd-worker` as subprocesses, uploads N
`noop` items and lets the worker run them (real outcome records, as a worker writes them;
noop's output is `{}`), then times, each on its own:

- `submission`: `batchd results`' path (the blocking client, `export_to`) to a file;
- `custom_id_first`: the same by custom_id, building the custom-id index first;
- `custom_id`: again by custom_id, the index in place;
- `list_items`: `Client.items()` (1,000 per page) over the first M items, each item
  written as a JSON line as `batchd items --json` does.

Reports outcomes/s of each, the ratio of the export's to the listing's, the server's CPU
microseconds and Redis commands per exported item (submission order), the file's bytes
per item, and the custom-id index's Redis memory per item.

    .venv/bin/python -m bench.export --items 1000000  # full
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from redis import Redis as SyncRedis

from batchd.cli._output import print_json
from batchd.cli._results import export_to
from batchd.client import AsyncClient, BatchState, Client, ExportOrder
from batchd.core.keys import Keys
from bench.service import (
    Service,
    cpu_seconds,
    redis_commands,
    report,
    running_service,
    wait_for_handler,
)
from bench.upload_noop import items


async def prepare(service: Service, count: int, chunk_size: int) -> str:
    """A COMPLETED batch of `count` noop items: its id."""
    async with AsyncClient(service.target) as client:
        await wait_for_handler(client, "noop")
        result = await client.upload("noop", items(count), options={"chunk_size": chunk_size})
        async for progress in client.watch(result.batch.batch_id, min_interval=0.5):
            last = progress
    if last.state != BatchState.COMPLETED or last.counts.succeeded != count:
        raise RuntimeError(f"the batch did not complete cleanly: {last}")
    return result.batch.batch_id


def index_bytes(service: Service, batch_id: str) -> int:
    """What the custom-id index takes in Redis (MEMORY USAGE, every member counted)."""
    redis = SyncRedis.from_url(service.redis_url)
    try:
        used: int | None = redis.memory_usage(  # type: ignore[assignment]
            Keys().ids_by_name(batch_id), samples=0
        )
    finally:
        redis.close()
    return used or 0


def timed(run: Callable[[], int]) -> tuple[int, float]:
    started = time.perf_counter()
    done = run()
    return done, time.perf_counter() - started


def measure(service: Service, batch_id: str, count: int, baseline: int) -> dict[str, float]:
    figures: dict[str, float] = {"items": count}
    with Client(service.target, timeout=None) as client, tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "results.jsonl"

        def export(order: ExportOrder) -> int:
            with path.open("wb") as out, open("/dev/null", "w") as err:
                return export_to(client, batch_id, out, err, order=order)

        def listing() -> int:
            done = 0
            with path.open("w") as out:
                for item in client.items(batch_id, page_size=1000):
                    print_json(item, out)
                    done += 1
                    if done == baseline:
                        break
            return done

        commands, cpu = redis_commands(service.redis_url), cpu_seconds(service.server_pid)
        done, seconds = timed(lambda: export(ExportOrder.SUBMISSION))
        figures["server_cpu_us_per_item"] = (cpu_seconds(service.server_pid) - cpu) / done * 1e6
        figures["redis_commands_per_item"] = (redis_commands(service.redis_url) - commands) / done
        figures["file_bytes_per_item"] = path.stat().st_size / done
        if done != count:
            raise RuntimeError(f"the export wrote {done} lines, not {count}")
        figures["submission_items_per_second"] = done / seconds
        for name in ("custom_id_first", "custom_id"):
            done, seconds = timed(lambda: export(ExportOrder.CUSTOM_ID))
            if done != count:
                raise RuntimeError(f"the export wrote {done} lines, not {count}")
            figures[f"{name}_items_per_second"] = done / seconds
        figures["custom_id_index_bytes_per_item"] = index_bytes(service, batch_id) / count
        done, seconds = timed(listing)
        figures["list_items_items_per_second"] = done / seconds
    figures["ratio_export_to_list_items"] = (
        figures["submission_items_per_second"] / figures["list_items_items_per_second"]
    )
    return figures


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=1_000_000)
    parser.add_argument("--chunk-size", type=int, default=1000)
    parser.add_argument(
        "--baseline-items", type=int, default=100_000, help="items the listing baseline reads"
    )
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)
    with running_service() as service:
        started = time.perf_counter()
        batch_id = asyncio.run(prepare(service, args.items, args.chunk_size))
        prepare_seconds = time.perf_counter() - started
        figures = measure(service, batch_id, args.items, min(args.baseline_items, args.items))
        figures["prepare_seconds"] = prepare_seconds
    report(figures, args.json)


if __name__ == "__main__":
    main()
