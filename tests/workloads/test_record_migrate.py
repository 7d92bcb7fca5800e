"""record.migrate against real databases: the planner, the handler in this process, and
the whole service moving MariaDB to PostgreSQL while a worker is killed, then a redrive.

Each test makes its own databases (random names) on the local PostgreSQL and MariaDB,
or SQLite files in its tmp_path, and drops them at the end.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import socket
import subprocess
import sys
import time
import uuid
from collections import Counter
from decimal import Decimal
from pathlib import Path
from typing import Any

import fastjsonschema
import grpc
import pytest
from redis.asyncio import Redis
from sqlalchemy import Column, Integer, MetaData, String, Table, text, update
from sqlalchemy import exc as sa_exc
from support.redis_server import RedisServerFactory
from workloads.migrate_fixtures import (
    PEOPLE_COLUMNS,
    engine_for,
    fill_people,
    insert_rows,
    mariadb_database,
    migrate_service,
    opened_handler,
    people_rows,
    people_table,
    postgres_database,
    run_item,
    table_checksum,
)

from batchd.client import AsyncClient, BatchdError, BatchState, ItemState
from batchd.core.config import SettingError
from batchd.core.credentials import CredentialStore
from batchd.core.logs import get_logger
from batchd.worker.handler import Code, ItemContext, PermanentError, RetryableError
from batchd.worker.handlers.migrate.checksum import EMPTY_CHECKSUM, canonical, checksum, combine
from batchd.worker.handlers.migrate.plan import KeyRange, PlanError, key_column, plan_ranges
from batchd.worker.handlers.migrate.sql import Engines, async_url, item_url, reflect
from batchd.worker.handlers.migrate.transform import TransformError

TESTS_DIR = Path(__file__).resolve().parents[1]

# -- the planner ------------------------------------------------------------------------


async def _plan(url: str, name: str, rows_per_item: int) -> list[KeyRange]:
    engine = engine_for(url)
    try:
        async with engine.connect() as conn:
            table = await reflect(conn, name)
            key = key_column(table)
            return [r async for r in plan_ranges(conn, table, key, rows_per_item)]
    finally:
        await engine.dispose()


def _assert_covers(ranges: list[KeyRange], keys: list[Any], rows_per_item: int) -> None:
    """Every key in exactly one range; full ranges but the last."""
    keys = sorted(keys)
    found: list[Any] = []
    for part in ranges:
        inside = [k for k in keys if part.lo <= k <= part.hi]
        assert inside[0] == part.lo
        assert inside[-1] == part.hi
        assert len(inside) == part.rows
        found.extend(inside)
    assert found == keys  # each once, in order
    assert all(r.rows == rows_per_item for r in ranges[:-1])
    assert 0 < ranges[-1].rows < rows_per_item


async def test_planner_sqlite_covers_every_key_once(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'plan.db'}"
    engine = engine_for(url)
    table = people_table()
    ids = [i * 3 + (i % 7) for i in range(1, 1004)]  # gaps of varying width
    async with engine.begin() as conn:
        await conn.run_sync(table.metadata.create_all)
    await insert_rows(engine, table, people_rows(ids))
    await engine.dispose()
    ranges = await _plan(url, "people", 100)
    assert len(ranges) == 11
    _assert_covers(ranges, ids, 100)


async def test_planner_string_keys_and_refusals(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'plan.db'}"
    engine = engine_for(url)
    metadata = MetaData()
    Table("codes", metadata, Column("code", String(16), primary_key=True), Column("v", Integer))
    Table(
        "pairs",
        metadata,
        Column("a", Integer, primary_key=True),
        Column("b", Integer, primary_key=True),
    )
    Table("loose", metadata, Column("v", Integer))
    async with engine.begin() as conn:
        await conn.run_sync(metadata.create_all)
        codes = [f"c{i:05d}" for i in range(250)]
        await conn.execute(metadata.tables["codes"].insert(), [{"code": c} for c in codes])
    await engine.dispose()
    ranges = await _plan(url, "codes", 60)
    _assert_covers(ranges, codes, 60)
    with pytest.raises(PlanError, match=r"composite primary key \(a, b\)"):
        await _plan(url, "pairs", 10)
    with pytest.raises(PlanError, match="no primary key"):
        await _plan(url, "loose", 10)


async def test_planner_postgres() -> None:
    async with postgres_database() as url:
        engine = engine_for(url)
        table = people_table()
        ids = list(range(10, 25_010, 5))
        async with engine.begin() as conn:
            await conn.run_sync(table.metadata.create_all)
        await insert_rows(engine, table, people_rows(ids))
        await engine.dispose()
        ranges = await _plan(url, "people", 1500)
        _assert_covers(ranges, ids, 1500)


@pytest.mark.slow
def test_planner_command_writes_items(tmp_path: Path) -> None:
    source = f"sqlite:///{tmp_path / 'src.db'}"

    async def setup() -> None:
        engine = engine_for(source)
        await _people(engine, range(1, 26))
        await engine.dispose()

    asyncio.run(setup())
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "batchd.worker.handlers.migrate.plan",
            source,
            "people",
            "--destination",
            "warehouse",
            "--rows-per-item",
            "10",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    items = [json.loads(line) for line in done.stdout.splitlines()]
    assert [i["custom_id"] for i in items] == ["people.1-10", "people.11-20", "people.21-25"]
    assert items[2]["params"] == {
        "source": source,
        "destination": "warehouse",
        "table": "people",
        "key": "id",
        "range": {"from": 21, "to": 25},
    }
    assert "25 rows in 3 items" in done.stderr


# -- the handler, SQLite to SQLite ------------------------------------------------------


async def _people(engine: Any, ids: Any, *, check_amount: bool = False) -> Table:
    table = people_table(check_amount=check_amount)
    async with engine.begin() as conn:
        await conn.run_sync(table.metadata.create_all)
    if isinstance(ids, range) and ids.start == 1 and ids.step == 1 and len(ids):
        await fill_people(engine, table, len(ids))
        return table
    rows = people_rows(ids)
    if rows:
        await insert_rows(engine, table, rows)
    return table


@pytest.fixture
async def sqlite_pair(tmp_path: Path) -> Any:
    """Source and destination SQLite files: 100 people in the source, none in the
    destination, whose table refuses negative amounts."""
    source, destination = (f"sqlite:///{tmp_path / n}" for n in ("src.db", "dst.db"))
    engines = [engine_for(source), engine_for(destination)]
    await _people(engines[0], range(1, 101))
    await _people(engines[1], [], check_amount=True)
    yield source, destination, engines
    for engine in engines:
        await engine.dispose()


def _params(source: str, destination: str, lo: Any, hi: Any, **more: Any) -> dict[str, Any]:
    return {
        "source": source,
        "destination": destination,
        "table": "people",
        "key": "id",
        "range": {"from": lo, "to": hi},
        **more,
    }


async def test_copies_a_range_and_reruns_idempotently(sqlite_pair: Any) -> None:
    source, destination, engines = sqlite_pair
    databases = f"src={source},dst={destination}"
    async with opened_handler(databases) as handler:
        first = await run_item(handler, _params("src", "dst", 11, 40))
        again = await run_item(handler, _params("src", "dst", 11, 40))
    assert first["rows"] == first["written"] == 30
    assert first["match"] is True
    assert first["source_checksum"] == first["destination_checksum"] != EMPTY_CHECKSUM
    assert again == first  # the upsert rewrote the same rows: nothing doubled
    count, _ = await table_checksum(engines[1], "people")
    assert count == 30
    expected = checksum(people_rows(range(11, 41)), ["id", "name", "amount", "created", "note"])
    assert first["source_checksum"] == expected


async def test_upsert_overwrites_changed_rows(sqlite_pair: Any) -> None:
    source, destination, engines = sqlite_pair
    async with opened_handler(f"src={source},dst={destination}") as handler:
        await run_item(handler, _params("src", "dst", 1, 20))
        async with engines[0].begin() as conn:
            await conn.execute(text("UPDATE people SET name = 'renamed' WHERE id = 7"))
        output = await run_item(handler, _params("src", "dst", 1, 20))
    assert output["match"] is True
    async with engines[1].connect() as conn:
        assert await conn.scalar(text("SELECT name FROM people WHERE id = 7")) == "renamed"
        assert await conn.scalar(text("SELECT count(*) FROM people")) == 20


async def test_transform_hook(sqlite_pair: Any) -> None:
    source, destination, engines = sqlite_pair
    shout = "workloads.migrate_fixtures:shout"
    databases = f"src={source},dst={destination}"
    async with opened_handler(databases, migrate_transforms=shout) as handler:
        assert handler.params_schema["properties"]["transform"]["enum"] == [shout]
        output = await run_item(handler, _params("src", "dst", 1, 10, transform=shout))
    assert (output["rows"], output["written"], output["skipped"]) == (10, 5, 5)
    assert output["match"] is True
    assert output["destination_checksum"] == output["transformed_checksum"]
    assert output["transformed_checksum"] != output["source_checksum"]
    async with engines[1].connect() as conn:
        names = (await conn.execute(text("SELECT id, name FROM people ORDER BY id"))).all()
    assert names == [(i, f"NAME-{i}-É") for i in (2, 4, 6, 8, 10)]


PROBE = """
import pathlib
pathlib.Path({marker!r}).write_text("imported")

def run(row):
    return row
"""


async def test_an_unregistered_transform_is_refused_and_never_imported(
    sqlite_pair: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source, destination, _ = sqlite_pair
    marker = tmp_path / "imported"
    module = f"migrate_probe_{uuid.uuid4().hex}"
    (tmp_path / f"{module}.py").write_text(PROBE.format(marker=str(marker)))
    monkeypatch.syspath_prepend(str(tmp_path))
    shout = "workloads.migrate_fixtures:shout"
    databases = f"src={source},dst={destination}"
    async with opened_handler(databases, migrate_transforms=shout) as handler:
        for path in (f"{module}:run", "workloads.migrate_fixtures:not_a_transform"):
            params = _params("src", "dst", 1, 10, transform=path)
            with pytest.raises(fastjsonschema.JsonSchemaException, match="must be one of"):
                await run_item(handler, params)
            # The worker's own check, for a schema another worker published:
            with pytest.raises(PermanentError, match="not registered") as caught:
                await handler.run(params, _context())
            assert caught.value.code == Code.INVALID_ARGUMENT
    assert not marker.exists()
    assert module not in sys.modules


async def test_a_registered_transform_must_be_declared() -> None:
    with pytest.raises(TransformError, match="not declared a transform"):
        async with opened_handler(migrate_transforms="workloads.migrate_fixtures:not_a_transform"):
            pass


def _context(batch_id: str = "test-batch") -> ItemContext:
    return ItemContext(batch_id, "item", 1, get_logger("tests"))


async def test_tenants_name_only_the_databases_granted_to_them(
    sqlite_pair: Any, tmp_path: Path
) -> None:
    source, destination, _ = sqlite_pair
    prod = f"sqlite:///{tmp_path / 'prod.db'}"
    databases = f"src={source},dst={destination},prod={prod}"
    grants = "acme=src,acme=dst,ops=*"
    async with opened_handler(databases, migrate_tenant_databases=grants) as handler:
        copied = await handler.run(_params("src", "dst", 1, 10), _context("acme~b1"))
        assert copied["rows"] == 10
        # A name granted to nobody and a name that does not exist: the same answer.
        for ref, tenant in [("prod", "acme"), ("nope", "acme"), ("src", "globex")]:
            with pytest.raises(PermanentError) as caught:
                await handler.run(_params(ref, "dst", 1, 10), _context(f"{tenant}~b1"))
            assert caught.value.code == Code.PERMISSION_DENIED
            assert "BATCHD_MIGRATE_TENANT_DATABASES" in caught.value.message
            assert "prod" not in caught.value.message.replace(repr(ref), "")
        with pytest.raises(PermanentError, match="granted: none"):
            await handler.run(_params("src", "dst", 1, 10), _context("globex~b1"))
        with pytest.raises(PermanentError, match=r"granted: dst, src"):
            await handler.run(_params("src", "prod", 1, 10), _context("acme~b1"))
        # `*` grants every name; the default tenant (no tenancy) names every database.
        for batch_id in ("ops~b1", "b1"):
            with pytest.raises(PermanentError) as caught:  # prod has no people table
                await handler.run(_params("prod", "dst", 1, 10), _context(batch_id))
            assert caught.value.code == Code.NOT_FOUND


@pytest.mark.parametrize(
    ("grants", "message"),
    [
        ("acme=prod", "no database named 'prod'"),
        ("Acme=src", "'Acme' is not a tenant name"),
        ("acme", "expected tenant=name"),
    ],
)
async def test_grants_of_unknown_databases_or_tenants_stop_the_start(
    grants: str, message: str
) -> None:
    with pytest.raises(SettingError, match=message):
        async with opened_handler("src=sqlite://", migrate_tenant_databases=grants):
            pass


async def test_constraint_violation_names_the_key(sqlite_pair: Any) -> None:
    source, destination, engines = sqlite_pair
    async with engines[0].begin() as conn:
        await conn.execute(text("UPDATE people SET amount = -5 WHERE id IN (37, 52)"))
    async with opened_handler(f"src={source},dst={destination}") as handler:
        with pytest.raises(PermanentError) as caught:
            await run_item(handler, _params("src", "dst", 21, 60))
    error = caught.value
    assert error.code == Code.FAILED_PRECONDITION
    assert "key=37" in error.message  # the first failing row of the range
    assert "CHECK constraint failed" in error.message
    count, _ = await table_checksum(engines[1], "people")
    assert count == 0  # nothing of the range was written


async def test_unknown_table_and_column(sqlite_pair: Any) -> None:
    source, destination, _ = sqlite_pair
    async with opened_handler(f"src={source},dst={destination}") as handler:
        with pytest.raises(PermanentError) as caught:
            await run_item(handler, {**_params("src", "dst", 1, 5), "table": "nobody"})
        assert caught.value.code == Code.NOT_FOUND
        with pytest.raises(PermanentError) as caught:
            await run_item(handler, _params("src", "dst", 1, 5, columns=["id", "age"]))
        assert caught.value.code == Code.INVALID_ARGUMENT
        assert "age" in caught.value.message
        with pytest.raises(PermanentError) as caught:
            await run_item(handler, _params("nowhere", "dst", 1, 5))
        assert caught.value.code == Code.INVALID_ARGUMENT


def test_plain_urls_get_async_drivers() -> None:
    assert async_url("postgresql://u@h/db").drivername == "postgresql+asyncpg"
    mysql = async_url("mysql://u@h/db")
    assert (mysql.drivername, mysql.query["charset"]) == ("mysql+aiomysql", "utf8mb4")
    assert async_url("sqlite:///x.db").drivername == "sqlite+aiosqlite"
    with pytest.raises(ValueError, match="in-memory"):
        async_url("sqlite://")
    configured = async_url("mysql://u@h/db?local_infile=1&client_flag=130")
    assert "local_infile" not in configured.query
    assert configured.query["client_flag"] == "2"  # LOCAL_FILES (128) cleared


def test_urls_from_items_lose_their_driver_and_options() -> None:
    url = item_url("mysql+pymysql://u:p@h:3307/db?local_infile=1&charset=latin1")
    assert url.drivername == "mysql+aiomysql"
    assert dict(url.query) == {"charset": "utf8mb4"}
    assert (url.host, url.port, url.database, url.password) == ("h", 3307, "db", "p")
    assert dict(item_url("postgres://u@h/db?sslmode=disable").query) == {}
    for text_ in ("sqlite:////tmp/x.db", "sqlite+aiosqlite:///x.db", "oracle://u@h/db"):
        with pytest.raises(ValueError, match="postgresql:// or mysql://"):
            item_url(text_)


async def test_urls_in_items_only_when_allowed(sqlite_pair: Any) -> None:
    source, destination, _ = sqlite_pair
    async with opened_handler(f"src={source},dst={destination}") as handler:
        for ref in ("postgresql://postgres@127.0.0.1:5432/postgres", source, "a:b", "x/y"):
            params = _params(ref, "dst", 1, 5)
            with pytest.raises(fastjsonschema.JsonSchemaException, match="must match pattern"):
                await run_item(handler, params)
            with pytest.raises(PermanentError, match="URLs are not accepted") as caught:
                await handler.run(params, _context())
            assert caught.value.code == Code.INVALID_ARGUMENT
    async with opened_handler(f"dst={destination}", migrate_allow_urls=True) as handler:
        with pytest.raises(fastjsonschema.JsonSchemaException, match="must match pattern"):
            await run_item(handler, _params(source, "dst", 1, 5))
        with pytest.raises(PermanentError, match="postgresql:// or mysql://") as caught:
            await handler.run(_params(source, "dst", 1, 5), _context())
        assert caught.value.code == Code.INVALID_ARGUMENT


async def test_a_refused_connection_does_not_say_why(sqlite_pair: Any) -> None:
    _, destination, _ = sqlite_pair
    with socket.socket() as closed:  # a port bound and not listening: refused at once
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
        async with opened_handler(f"dst={destination}", migrate_allow_urls=True) as handler:
            for url in (f"postgresql://u@127.0.0.1:{port}/x", f"mysql://u@127.0.0.1:{port}/x"):
                with pytest.raises(RetryableError) as caught:
                    await run_item(handler, _params(url, "dst", 1, 5))
                assert caught.value.message == "source: cannot connect to the database"
                assert caught.value.code == Code.UNAVAILABLE


async def test_urls_allowed_lose_their_options_and_never_load_local_files() -> None:
    async with mariadb_database() as source_url, postgres_database() as destination_url:
        source, destination = engine_for(source_url), engine_for(destination_url)
        try:
            await _people(source, range(1, 21))
            await _people(destination, [])
            asked = f"{source_url}?local_infile=1&client_flag=128&charset=latin1"
            params = _params(asked, "dst", 1, 20)
            databases = f"dst={destination_url}"
            async with opened_handler(databases, migrate_allow_urls=True) as handler:
                output = await run_item(handler, params)
            assert (output["rows"], output["match"]) == (20, True)
            # The engine the handler makes for that URL: no option of the item's, and a
            # server asking for a local file is refused.
            engines = Engines(1)
            try:
                engine = engines.get(item_url(asked))
                assert dict(engine.url.query) == {"charset": "utf8mb4"}
                async with engine.connect() as conn:
                    with pytest.raises(sa_exc.DBAPIError) as refused:
                        await conn.execute(
                            text("LOAD DATA LOCAL INFILE '/etc/hostname' INTO TABLE people")
                        )
                assert refused.value.orig is not None
                assert refused.value.orig.args[0] in (1148, 4166)  # not allowed
            finally:
                await engines.dispose()
            # A configured URL asking for local_infile does not get it either.
            engines = Engines(1)
            try:
                engine = engines.get(async_url(f"{source_url}?local_infile=1"))
                async with engine.connect() as conn:
                    with pytest.raises(sa_exc.DBAPIError) as refused:
                        await conn.execute(
                            text("LOAD DATA LOCAL INFILE '/etc/hostname' INTO TABLE people")
                        )
                assert refused.value.orig is not None
                assert refused.value.orig.args[0] in (1148, 4166)
            finally:
                await engines.dispose()
        finally:
            await source.dispose()
            await destination.dispose()


def test_canonical_values_agree_across_drivers() -> None:
    assert canonical(True) == canonical(1) == canonical(Decimal("1.00"))
    assert canonical(Decimal("3.10")) == canonical(Decimal("3.1000")) == canonical(3.1)
    assert canonical(Decimal("-0.00")) == canonical(0)
    naive = dt.datetime(2024, 5, 1, 12, 0)
    assert canonical(naive.replace(tzinfo=dt.UTC)) == canonical(naive)
    assert canonical(dt.timedelta(hours=1, seconds=5)) == canonical(dt.time(1, 0, 5))
    assert canonical(uuid.UUID(int=5)) == canonical(str(uuid.UUID(int=5)))
    assert canonical(None) != canonical("") != canonical("N")
    rows = people_rows(range(1, 50))
    columns = ["id", "name", "amount"]
    whole = checksum(rows, columns)
    assert whole == checksum(reversed(rows), columns)  # order does not matter
    assert whole == combine([checksum(rows[:20], columns), checksum(rows[20:], columns)])


@pytest.mark.slow
async def test_the_server_refuses_urls_and_unregistered_transforms_at_submit(
    sqlite_pair: Any, redis_server_factory: RedisServerFactory, tmp_path: Path
) -> None:
    source, destination, engines = sqlite_pair
    redis = redis_server_factory()
    tests_dir = TESTS_DIR
    env = {
        "BATCHD_MIGRATE_TRANSFORMS": "workloads.migrate_fixtures:shout",
        "PYTHONPATH": os.pathsep.join([str(tests_dir / "support"), str(tests_dir)]),
    }
    databases = f"src={source},dst={destination}"
    async with migrate_service(redis.url, tmp_path, databases, workers=1, env=env) as service:
        client = service.client
        refused = [
            ({"source": "postgresql://postgres@127.0.0.1:5432/postgres"}, "source"),
            ({"destination": source}, "destination"),
            ({"transform": "subprocess:run"}, "transform"),
            ({"transform": "workloads.migrate_fixtures:not_a_transform"}, "transform"),
        ]
        for change, field_name in refused:
            with pytest.raises(BatchdError) as caught:
                await client.submit(
                    "record.migrate", [("a", {**_params("src", "dst", 1, 10), **change})]
                )
            assert caught.value.code == grpc.StatusCode.INVALID_ARGUMENT
            fields = [v.field for v in caught.value.field_violations]
            assert fields == [f"items[0].params.{field_name}"]
        item = _params("src", "dst", 1, 10, transform="workloads.migrate_fixtures:shout")
        batch_id = (await client.submit("record.migrate", [("a", item)])).batch.batch_id
        last = [p async for p in client.watch(batch_id, min_interval=0.05)][-1]
        assert last.state == BatchState.COMPLETED
        (outcome,) = [o async for o in client.items(batch_id)]
    assert outcome.output is not None
    assert (outcome.output["rows"], outcome.output["written"]) == (10, 5)
    assert await _count(engines[1], "people") == 5


@pytest.mark.slow
async def test_a_tenants_batch_reaches_only_its_granted_databases_through_the_service(
    sqlite_pair: Any, redis_server_factory: RedisServerFactory, tmp_path: Path
) -> None:
    source, destination, engines = sqlite_pair
    redis = redis_server_factory()
    databases = f"src={source},dst={destination},prod={source}"
    env = {"BATCHD_MIGRATE_TENANT_DATABASES": "acme=src,acme=dst"}
    async with migrate_service(
        redis.url, tmp_path, databases, workers=1, env=env, auth="tokens"
    ) as service:
        store = CredentialStore(Redis.from_url(redis.url))
        key, _ = await store.create("acme", "operator", "acme's migration")
        await store.redis.aclose()
        async with AsyncClient(f"127.0.0.1:{service.port}", token=key) as acme:
            items = [
                ("granted", _params("src", "dst", 1, 10)),
                ("ungranted", _params("prod", "dst", 11, 20)),
            ]
            batch_id = (await acme.submit("record.migrate", items)).batch.batch_id
            last = [p async for p in acme.watch(batch_id)][-1]
            assert (last.counts.succeeded, last.counts.failed) == (1, 1)
            outcomes = {o.custom_id: o async for o in acme.items(batch_id)}
    error = outcomes["ungranted"].error
    assert error is not None
    assert error.code.name == "PERMISSION_DENIED"
    assert "tenant 'acme' may not use database 'prod'" in error.message
    assert await _count(engines[1], "people") == 10


# -- the whole service: MariaDB to PostgreSQL --------------------------------------------


async def _count(engine: Any, name: str) -> int:
    async with engine.connect() as conn:
        return int(await conn.scalar(text(f"SELECT count(*) FROM {name}")) or 0)


ROWS = 100_000
ROWS_PER_ITEM = 2500


async def _plan_items(
    source_url: str, databases: str, rows_per_item: int
) -> list[tuple[str, dict[str, Any]]]:
    """Items from the planning command, as `batchd submit` would read them."""
    done = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "batchd.worker.handlers.migrate.plan", "src", "people",
        "--destination", "dst", "--rows-per-item", str(rows_per_item),
        env={"BATCHD_DATABASES": databases, "PATH": ""},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await done.communicate()
    assert done.returncode == 0, err.decode()
    lines = [json.loads(line) for line in out.decode().splitlines()]
    return [(item["custom_id"], item["params"]) for item in lines]


# A deadline for a hang, not a speed target: two cores shared with other test runs
# take several times longer than an idle machine.
@pytest.mark.timeout(300)
@pytest.mark.chaos
@pytest.mark.slow
async def test_service_migrates_mariadb_to_postgres_through_a_worker_crash(
    redis_server_factory: RedisServerFactory, tmp_path: Path
) -> None:
    redis = redis_server_factory()
    async with mariadb_database() as source_url, postgres_database() as destination_url:
        source, destination = engine_for(source_url), engine_for(destination_url)
        try:
            began = time.monotonic()
            await _people(source, range(1, ROWS + 1))
            await _people(destination, [])
            databases = f"src={source_url},dst={destination_url}"
            items = await _plan_items(source_url, databases, ROWS_PER_ITEM)
            assert len(items) == ROWS // ROWS_PER_ITEM
            started = time.monotonic()
            setup = started - began
            async with migrate_service(redis.url, tmp_path, databases, workers=2) as service:
                client = service.client
                submitted = await client.upload("record.migrate", items, options={"chunk_size": 2})
                batch_id = submitted.batch.batch_id
                victim = service.workers[0]
                killed_at = -1
                last = None
                async for progress in client.watch(batch_id, min_interval=0.05):
                    done = progress.counts.succeeded
                    if (
                        victim.process is not None
                        and victim.process.poll() is None
                        and (0 < done < len(items) // 2)
                    ):
                        victim.kill()  # mid-run: some items done, most not
                        killed_at = done
                        service.start_worker()
                    last = progress
                assert last is not None
                assert last.state == BatchState.COMPLETED
                assert victim.process is not None
                assert victim.process.returncode == -9
                outcomes = [o async for o in client.items(batch_id, page_size=1000)]
            elapsed = time.monotonic() - started
            checked = time.monotonic()
            assert Counter(o.state for o in outcomes) == {ItemState.SUCCEEDED: len(items)}
            outputs = [o.output for o in outcomes if o.output is not None]
            assert all(out["match"] for out in outputs)
            assert sum(out["rows"] for out in outputs) == ROWS
            # The source holds the rows generated above: their checksum is the source's
            # (the items' source checksums add up to it), which spares re-reading it.
            source_sum = checksum(people_rows(range(1, ROWS + 1)), PEOPLE_COLUMNS)
            assert combine(out["source_checksum"] for out in outputs) == source_sum
            assert await _count(source, "people") == ROWS
            assert await table_checksum(destination, "people") == (ROWS, source_sum)
            assert combine(out["destination_checksum"] for out in outputs) == source_sum
            print(
                f"\nrecord.migrate: {ROWS} rows in {len(items)} items MariaDB -> PostgreSQL, "
                f"a worker killed at {killed_at} items done: setup {setup:.1f}s, migration "
                f"{elapsed:.1f}s, check {time.monotonic() - checked:.1f}s"
            )
        finally:
            await source.dispose()
            await destination.dispose()


@pytest.mark.slow
async def test_redrive_after_fixing_a_rejected_row(
    redis_server_factory: RedisServerFactory, tmp_path: Path
) -> None:
    redis = redis_server_factory()
    async with mariadb_database() as source_url, postgres_database() as destination_url:
        source, destination = engine_for(source_url), engine_for(destination_url)
        try:
            table = await _people(source, range(1, 5001))
            async with source.begin() as conn:
                await conn.execute(update(table).where(table.c.id == 3210).values(amount=-1))
            await _people(destination, [], check_amount=True)  # refuses amount < 0
            databases = f"src={source_url},dst={destination_url}"
            items = await _plan_items(source_url, databases, 1000)
            async with migrate_service(redis.url, tmp_path, databases, workers=1) as service:
                client = service.client
                batch_id = (await client.upload("record.migrate", items)).batch.batch_id
                last = [p async for p in client.watch(batch_id, min_interval=0.05)][-1]
                assert (last.counts.succeeded, last.counts.failed) == (4, 1)
                failed = [o async for o in client.items(batch_id, states=[ItemState.FAILED])]
                assert [o.custom_id for o in failed] == ["people.3001-4000"]
                error = failed[0].error
                assert error is not None
                assert error.code.name == "FAILED_PRECONDITION"
                assert "key=3210" in error.message
                assert "amount_ok" in error.message
                assert (await table_checksum(destination, "people"))[0] == 4000

                async with source.begin() as conn:  # fix the row at its source
                    await conn.execute(update(table).where(table.c.id == 3210).values(amount=1))
                await client.retry(batch_id)
                last = [p async for p in client.watch(batch_id, min_interval=0.05)][-1]
            assert last.state == BatchState.COMPLETED
            assert (last.counts.succeeded, last.counts.failed) == (5, 0)
            assert await table_checksum(source, "people") == await table_checksum(
                destination, "people"
            )
        finally:
            await source.dispose()
            await destination.dispose()


@pytest.mark.slow
async def test_postgres_to_mariadb_upserts_and_names_a_clashing_key() -> None:
    async with postgres_database() as source_url, mariadb_database() as destination_url:
        source, destination = engine_for(source_url), engine_for(destination_url)
        try:
            table = await _people(source, range(1, 301))
            async with source.begin() as conn:  # longer names than the destination takes
                await conn.execute(text("ALTER TABLE people ALTER name TYPE varchar(200)"))
            await _people(destination, [])
            async with destination.begin() as conn:  # names must be unique there
                await conn.execute(text("CREATE UNIQUE INDEX people_name ON people (name)"))
            params = _params("src", "dst", 101, 200)
            async with opened_handler(f"src={source_url},dst={destination_url}") as handler:
                first = await run_item(handler, params)
                again = await run_item(handler, params)
                assert first == again
                assert first["match"] is True
                assert first["rows"] == 100
                # Two rows of one range clash with each other: the later one is named.
                async with source.begin() as conn:
                    name_of_110 = update(table).where(table.c.id == 120).values(name="name-110-é")
                    await conn.execute(name_of_110)
                    await conn.execute(text("UPDATE people SET name = 'x' WHERE id = 150"))
                with pytest.raises(PermanentError) as caught:
                    await run_item(handler, _params("src", "dst", 101, 200))
                assert caught.value.code == Code.FAILED_PRECONDITION
                assert "key=120" in caught.value.message
                assert "Duplicate entry" in caught.value.message
                # A value too long for the destination column: INVALID_ARGUMENT, by key.
                async with source.begin() as conn:
                    await conn.execute(text("UPDATE people SET name = 'n-110' WHERE id = 120"))
                    await conn.execute(
                        text("UPDATE people SET name = repeat('z', 100) WHERE id = 160")
                    )
                with pytest.raises(PermanentError) as caught:
                    await run_item(handler, _params("src", "dst", 101, 200))
                assert caught.value.code == Code.INVALID_ARGUMENT
                assert "key=160" in caught.value.message
            async with destination.connect() as conn:  # the failed runs wrote nothing
                assert await conn.scalar(text("SELECT name FROM people WHERE id = 150")) == (
                    "name-150-é"
                )
        finally:
            await source.dispose()
            await destination.dispose()


@pytest.mark.slow
async def test_a_destination_that_rounds_fails_or_reports_the_mismatch() -> None:
    async with postgres_database() as url:
        engine = engine_for(url)
        try:
            await _people(engine, range(1, 51))
            async with engine.begin() as conn:  # one decimal place: 0.79 is stored as 0.8
                await conn.execute(text("CREATE TABLE rounded (LIKE people)"))
                await conn.execute(text("ALTER TABLE rounded ADD PRIMARY KEY (id)"))
                await conn.execute(text("ALTER TABLE rounded ALTER amount TYPE numeric(12, 1)"))
            params = _params("db", "db", 1, 50, destination_table="rounded")
            async with opened_handler(f"db={url}") as handler:
                with pytest.raises(PermanentError) as caught:
                    await run_item(handler, params)
                assert caught.value.code == Code.DATA_LOSS
                assert "key=1:" in caught.value.message
                assert "column(s) amount" in caught.value.message
                assert await _count(engine, "rounded") == 0  # rolled back
                output = await run_item(handler, {**params, "on_mismatch": "report"})
            assert output["match"] is False
            assert output["destination_checksum"] != output["source_checksum"]
            assert await _count(engine, "rounded") == 50
        finally:
            await engine.dispose()
