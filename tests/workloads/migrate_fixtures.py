"""Real databases and a real service for the record.migrate tests.

- `postgres_database()`, `mariadb_database()`: a database of its own (random name) on
  the local PostgreSQL / MariaDB, dropped at the end; yields its plain URL.
- `people_table`, `people_rows`, `insert_rows`, `table_checksum`: a table of mixed
  column types (int key, varchar, decimal, datetime, nullable text) and its data.
- `opened_handler`, `run_item`: the handler in this process, hooks and all.
- `migrate_service`: a gRPC server in this process and worker subprocesses serving
  record.migrate, on a private Redis.
- `shout`: a transform for the tests (importable as workloads.migrate_fixtures:shout).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import secrets
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import fastjsonschema
from redis.asyncio import Redis
from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    Column,
    DateTime,
    MetaData,
    Numeric,
    String,
    Table,
    Text,
    select,
    text,
)
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from support.faults import wait_for_handler
from support.in_process_server import TEST_WATCH_FLOORS
from support.processes import ServiceProcess, WorkerPool

from batchd.client import AsyncClient
from batchd.core.config import Settings
from batchd.core.credentials import CredentialStore
from batchd.core.logs import get_logger
from batchd.server.app import start_server
from batchd.worker.handler import Handler, ItemContext, WorkerInfo
from batchd.worker.handlers.migrate import record_migrate_handler
from batchd.worker.handlers.migrate.checksum import checksum
from batchd.worker.handlers.migrate.sql import async_url, reflect
from batchd.worker.handlers.migrate.transform import row_transform

PG_HOST = "postgres@127.0.0.1:5432"
MARIADB_HOST = "root@127.0.0.1:3306"
# Short leases and sweeps: a killed worker's chunk is picked up within seconds. Not as
# short as the fault tests' 2 s: items here are CPU-heavy, on two shared cores.
FAST_RECOVERY = {"BATCHD_LEASE_TTL": "4", "BATCHD_MAINTENANCE_INTERVAL": "0.5"}
PEOPLE_COLUMNS = ("id", "name", "amount", "created", "note")


def unique_name(prefix: str = "migrate") -> str:
    return f"{prefix}_{secrets.token_hex(5)}"


@contextlib.asynccontextmanager
async def postgres_database() -> AsyncIterator[str]:
    name = unique_name()
    admin = create_async_engine(
        f"postgresql+asyncpg://{PG_HOST}/postgres", isolation_level="AUTOCOMMIT"
    )
    try:
        async with admin.connect() as conn:
            await conn.execute(text(f'CREATE DATABASE "{name}"'))
        yield f"postgresql://{PG_HOST}/{name}"
    finally:
        async with admin.connect() as conn:
            await conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        await admin.dispose()


@contextlib.asynccontextmanager
async def mariadb_database() -> AsyncIterator[str]:
    name = unique_name()
    admin = create_async_engine(f"mysql+aiomysql://{MARIADB_HOST}/test")
    try:
        async with admin.begin() as conn:
            await conn.execute(text(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4"))
        yield f"mysql://{MARIADB_HOST}/{name}"
    finally:
        async with admin.begin() as conn:
            await conn.execute(text(f"DROP DATABASE IF EXISTS `{name}`"))
        await admin.dispose()


def engine_for(url: str) -> AsyncEngine:
    return create_async_engine(async_url(url))


def people_table(name: str = "people", *, check_amount: bool = False) -> Table:
    """id (big int key), name (varchar), amount (decimal), created (datetime), note
    (nullable text); with `check_amount`, a CHECK that amount is not negative."""
    constraints = [CheckConstraint("amount >= 0", name=f"{name}_amount_ok")] if check_amount else []
    return Table(
        name,
        MetaData(),
        Column("id", BigInteger, primary_key=True, autoincrement=False),
        Column("name", String(64), nullable=False),
        Column("amount", Numeric(12, 2), nullable=False),
        Column("created", DateTime, nullable=False),
        Column("note", Text, nullable=True),
        *constraints,
    )


def people_rows(ids: Iterable[int]) -> list[dict[str, Any]]:
    """Deterministic rows: accents in names, two-decimal amounts, whole-second times,
    every fifth note NULL."""
    start = dt.datetime(2024, 1, 1)
    return [
        {
            "id": i,
            "name": f"name-{i}-é",
            "amount": Decimal(i * 7919 % 10_000_000) / 100,
            "created": start + dt.timedelta(seconds=i * 37),
            "note": None if i % 5 == 0 else f"note {i}",
        }
        for i in ids
    ]


async def create_table(engine: AsyncEngine, table: Table) -> None:
    async with engine.begin() as conn:
        await conn.run_sync(table.metadata.create_all)


async def insert_rows(
    engine: AsyncEngine, table: Table, rows: Sequence[Mapping[str, Any]], per_statement: int = 5000
) -> None:
    async with engine.begin() as conn:
        for start in range(0, len(rows), per_statement):
            await conn.execute(table.insert(), list(rows[start : start + per_statement]))


# people_rows(range(1, n + 1)) made by MariaDB's sequence engine, without a round trip
# per row: filling 100,000 rows takes a second, not ten.
_MARIADB_FILL = (
    "INSERT INTO {table} SELECT seq, CONCAT('name-', seq, '-é'), (seq * 7919 % 10000000) / 100, "
    "'2024-01-01' + INTERVAL seq * 37 SECOND, IF(seq % 5 = 0, NULL, CONCAT('note ', seq)) "
    "FROM seq_1_to_{count}"
)


async def fill_people(engine: AsyncEngine, table: Table, count: int) -> None:
    """Rows people_rows(range(1, count + 1)) into the table."""
    if engine.dialect.name in ("mysql", "mariadb"):
        async with engine.begin() as conn:
            await conn.execute(text(_MARIADB_FILL.format(table=table.name, count=count)))
    else:
        await insert_rows(engine, table, people_rows(range(1, count + 1)))


async def table_checksum(
    engine: AsyncEngine, name: str, columns: Sequence[str] = PEOPLE_COLUMNS
) -> tuple[int, str]:
    """(row count, checksum) of a whole table, as record.migrate computes a range's."""
    async with engine.connect() as conn:
        table = await reflect(conn, name)
        result = await conn.execute(select(*(table.c[c] for c in columns)))
        rows = [dict(r) for r in result.mappings()]
    return len(rows), checksum(rows, columns)


@row_transform
def shout(row: dict[str, Any]) -> dict[str, Any] | None:
    """Upper-cases names and skips rows with an odd id."""
    if row["id"] % 2:
        return None
    row["name"] = row["name"].upper()
    return row


def not_a_transform(row: dict[str, Any]) -> dict[str, Any]:
    """A function items must not be able to name: it lacks @row_transform."""
    return row


@contextlib.asynccontextmanager
async def opened_handler(
    databases: str = "", concurrency: int = 4, **settings: Any
) -> AsyncIterator[Handler]:
    """record.migrate with its startup hook run, as a worker would, and its shutdown
    hook run at the end; `settings`: its other settings (migrate_allow_urls...)."""
    handler = record_migrate_handler()
    assert handler.startup is not None
    assert handler.shutdown is not None
    worker_settings = Settings.of(databases=databases, **settings)
    await handler.startup(WorkerInfo("test-worker", concurrency, worker_settings))
    try:
        yield handler
    finally:
        await handler.shutdown()


async def run_item(
    handler: Handler, params: Mapping[str, Any], custom_id: str = "item"
) -> dict[str, Any]:
    """One attempt of one item: params checked against the schema, as the server does at
    submit time, and passed as JSON decodes them."""
    fastjsonschema.compile(dict(handler.params_schema))(dict(params))
    ctx = ItemContext(
        batch_id="test-batch",
        custom_id=custom_id,
        attempt=1,
        logger=get_logger("tests").bind(batch_id="test-batch"),
    )
    output = await handler.run(json.loads(json.dumps(params)), ctx)
    stored: dict[str, Any] = json.loads(json.dumps(dict(output)))
    return stored


@dataclass
class MigrateService:
    client: AsyncClient
    pool: WorkerPool
    port: int
    workers: list[ServiceProcess] = field(default_factory=list)

    def start_worker(self) -> ServiceProcess:
        process = self.pool.start()
        self.workers.append(process)
        return process


@contextlib.asynccontextmanager
async def migrate_service(
    redis_url: str,
    log_dir: Path,
    databases: str,
    *,
    workers: int,
    concurrency: int = 3,
    env: Mapping[str, str] | None = None,
    auth: str = "",
) -> AsyncIterator[MigrateService]:
    """A server in this process and `workers` worker subprocesses serving record.migrate
    with the given `databases` setting (and the variables of `env`). With `auth`
    ("tokens"), the service's client holds an admin key."""
    values: dict[str, Any] = {**TEST_WATCH_FLOORS, "lease_ttl": 4, "maintenance_interval": 0.5}
    settings = Settings(redis_url=redis_url, host="127.0.0.1", auth=auth, **values)
    server = await start_server(settings, port=0, metrics_port=0)
    token = None
    if auth:
        redis = Redis.from_url(redis_url)
        token, _ = await CredentialStore(redis).create("default", "admin", "migrate tests")
        await redis.aclose()
    pool = WorkerPool(
        redis_url,
        log_dir,
        {"BATCHD_DATABASES": databases, **FAST_RECOVERY, **(env or {})},
        concurrency=concurrency,
    )
    try:
        async with AsyncClient(f"127.0.0.1:{server.port}", token=token) as client:
            service = MigrateService(client, pool, server.port)
            for _ in range(workers):
                service.start_worker()
            await wait_for_handler(client, "record.migrate")
            yield service
    finally:
        pool.stop()
        await server.stop(grace=0)
