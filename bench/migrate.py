"""`record.migrate`: a MariaDB table copied to PostgreSQL through the service, against a
bare script copying the same ranges.

Makes a database of its own on each server (dropped at the end), fills a MariaDB table
of N rows (int key, varchar, decimal, datetime, nullable text) with MariaDB's sequence
engine, and plans it into ranges of `--rows-per-item` keys. Then, into two empty
PostgreSQL tables:

- bare: one process runs the handler's own copy (the same engines, pool and code)
  on every range, `--concurrency` at a time, without batchd;
- service: the ranges are uploaded as a `record.migrate` batch and watched to the end,
  `--workers` worker processes of `--concurrency` each.

Both tables end with N rows and the same checksum, or the run fails. Beside the
service's rows/s and items/s, Redis commands per item (INFO commandstats delta from the
upload to the terminal snapshot) and memory per pending item (the growth of Redis's
stored bytes, `bench.service.redis_stored_bytes`, over a second upload of the same
ranges while the workers are paused, divided by the items; that batch is then cancelled,
none of its ranges copied). An item is a range of `--rows-per-item` rows: these figures
are per range, not per row.

    .venv/bin/python -m bench.migrate --rows 1000000   # a full run
    .venv/bin/python -m bench.migrate --rows 20000 --rows-per-item 2000   # a small one
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from logging import INFO
from pathlib import Path
from typing import Any

import structlog
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from batchd.client import AsyncClient
from batchd.core.config import Settings
from batchd.worker.handler import ItemContext, WorkerInfo
from batchd.worker.handlers.migrate import record_migrate_handler
from batchd.worker.handlers.migrate.checksum import combine
from batchd.worker.handlers.migrate.plan import custom_id, key_column, plan_ranges
from batchd.worker.handlers.migrate.sql import reflect
from bench.service import (
    Measured,
    Service,
    report,
    running_service,
    upload_and_measure,
    wait_for_handler,
)

COLUMNS = "id BIGINT PRIMARY KEY, name VARCHAR(64) NOT NULL, amount DECIMAL(12,2) NOT NULL, "
MARIADB_TABLE = COLUMNS + "created DATETIME NOT NULL, note TEXT"
POSTGRES_TABLE = COLUMNS.replace("DECIMAL", "NUMERIC") + "created TIMESTAMP NOT NULL, note TEXT"
# Rows from MariaDB's sequence engine: no data crosses the network to fill the table.
FILL = (
    "INSERT INTO people SELECT seq, CONCAT('name-', seq, '-é'), (seq * 7919 % 10000000) / 100, "
    "'2024-01-01' + INTERVAL seq * 37 SECOND, IF(seq % 5 = 0, NULL, CONCAT('note ', seq)) "
    "FROM seq_1_to_{rows}"
)

Item = tuple[str, dict[str, Any]]


@asynccontextmanager
async def scratch_database(admin_url: str, postgres: bool) -> AsyncIterator[str]:
    """A database of a random name on the server of `admin_url`, dropped at the end."""
    name = f"bench_migrate_{secrets.token_hex(4)}"
    engine = create_async_engine(admin_url, isolation_level="AUTOCOMMIT")
    quote = '"' if postgres else "`"
    try:
        async with engine.connect() as conn:
            await conn.execute(text(f"CREATE DATABASE {quote}{name}{quote}"))
        yield make_url(admin_url).set(database=name).render_as_string(hide_password=False)
    finally:
        force = " WITH (FORCE)" if postgres else ""
        async with engine.connect() as conn:
            await conn.execute(text(f"DROP DATABASE IF EXISTS {quote}{name}{quote}{force}"))
        await engine.dispose()


async def prepare(source: AsyncEngine, destination: AsyncEngine, rows: int) -> None:
    async with source.begin() as conn:
        await conn.execute(text(f"CREATE TABLE people ({MARIADB_TABLE})"))
        await conn.execute(text(FILL.format(rows=rows)))
    async with destination.begin() as conn:
        for name in ("people", "people_bare"):
            await conn.execute(text(f"CREATE TABLE {name} ({POSTGRES_TABLE})"))


async def plan(source: AsyncEngine, rows_per_item: int) -> list[Item]:
    items: list[Item] = []
    async with source.connect() as conn:
        table = await reflect(conn, "people")
        key = key_column(table)
        async for part in plan_ranges(conn, table, key, rows_per_item):
            params: dict[str, Any] = {
                "source": "src",
                "destination": "dst",
                "table": "people",
                "key": key,
            }
            params["range"] = {"from": part.lo, "to": part.hi}
            items.append((custom_id("people", part, len(items)), params))
    return items


async def bare_copy(items: Sequence[Item], databases: str, concurrency: int) -> tuple[float, str]:
    """The handler's copy on every range, `concurrency` at a time, in this process:
    seconds taken and the destination checksum."""
    handler = record_migrate_handler()
    assert handler.startup is not None
    assert handler.shutdown is not None
    await handler.startup(WorkerInfo("bench", concurrency, Settings.of(databases=databases)))
    # At the service's level (info): its debug events would print one line per range.
    log = structlog.wrap_logger(None, wrapper_class=structlog.make_filtering_bound_logger(INFO))
    slots = asyncio.Semaphore(concurrency)
    checksums: list[str] = []

    async def one(custom: str, params: dict[str, Any]) -> None:
        async with slots:
            ctx = ItemContext("bench", custom, 1, log)
            output = await handler.run({**params, "destination_table": "people_bare"}, ctx)
            checksums.append(str(output["destination_checksum"]))

    started = time.perf_counter()
    try:
        await asyncio.gather(*(one(c, p) for c, p in items))
    finally:
        await handler.shutdown()
    return time.perf_counter() - started, combine(checksums)


async def service_copy(service: Service, items: Sequence[Item], workers: int) -> Measured:
    async with AsyncClient(service.target) as client:
        await wait_for_handler(client, "record.migrate", workers)
        return await upload_and_measure(
            client, service, "record.migrate", lambda: iter(items), len(items)
        )


async def table_state(destination: AsyncEngine, name: str) -> tuple[int, str]:
    """Row count and an order-independent digest of a PostgreSQL table, in SQL."""
    query = text(f"SELECT count(*), coalesce(sum(hashtext(t::text)::numeric), 0) FROM {name} t")
    async with destination.connect() as conn:
        count, digest = (await conn.execute(query)).one()
    return int(count), str(digest)


async def run(args: argparse.Namespace) -> dict[str, float]:
    async with (
        scratch_database(args.mariadb_admin, postgres=False) as source_url,
        scratch_database(args.postgres_admin, postgres=True) as destination_url,
    ):
        databases = f"src={_plain(source_url)},dst={_plain(destination_url)}"
        source, destination = (create_async_engine(u) for u in (source_url, destination_url))
        try:
            await prepare(source, destination, args.rows)
            items = await plan(source, args.rows_per_item)
            bare_seconds, _ = await bare_copy(items, databases, args.concurrency)
            env = {
                "BATCHD_DATABASES": databases,
                "BATCHD_WORKER_CONCURRENCY": str(args.concurrency),
            }
            with running_service(workers=args.workers, env=env) as service:
                measured = await service_copy(service, items, args.workers)
            bare_state = await table_state(destination, "people_bare")
            service_state = await table_state(destination, "people")
            if not (bare_state == service_state and bare_state[0] == args.rows):
                raise RuntimeError(f"tables differ: bare {bare_state}, service {service_state}")
        finally:
            await source.dispose()
            await destination.dispose()
    seconds = measured.seconds
    return {
        "rows": args.rows,
        "items": len(items),
        "workers": args.workers,
        "concurrency": args.concurrency,
        "rows_per_second": args.rows / seconds,
        "items_per_second": len(items) / seconds,
        "bare_rows_per_second": args.rows / bare_seconds,
        "bare_items_per_second": len(items) / bare_seconds,
        "ratio_to_bare": bare_seconds / seconds,
        **measured.redis_figures(),
    }


def _plain(url: str) -> str:
    """The URL as an item may give it (record.migrate picks the asyncio driver)."""
    return url.replace("+asyncpg", "").replace("+aiomysql", "")


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--rows-per-item", type=int, default=5000)
    parser.add_argument("--workers", type=int, default=1, help="worker processes")
    parser.add_argument("--concurrency", type=int, default=8, help="items in flight per worker")
    parser.add_argument(
        "--mariadb-admin", default="mysql+aiomysql://root@127.0.0.1:3306/test?charset=utf8mb4"
    )
    parser.add_argument(
        "--postgres-admin", default="postgresql+asyncpg://postgres@127.0.0.1/postgres"
    )
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)
    report(asyncio.run(run(args)), args.json)


if __name__ == "__main__":
    main()
