"""`record.migrate`: copies one primary-key range of a table to another database.

An item names a source and a destination database (a name from the worker's `databases`
setting, or a URL), a table, its key column and a range of keys, both ends included —
ranges the planning tool (`batchd-migrate-plan`, batchd.worker.handlers.migrate_plan)
cuts from the source by keyset pagination. The item:

1. reads the range's rows from the source, in key order;
2. passes each through the transform hook, if the item names one (it may skip a row);
3. upserts them into the destination in one transaction — ON CONFLICT (key) DO UPDATE
   on PostgreSQL and SQLite, ON DUPLICATE KEY UPDATE on MySQL/MariaDB — so a re-run,
   after a crash or a redrive, rewrites the same rows and duplicates nothing;
4. reads the written rows back inside that transaction and compares checksums
   (batchd.worker.handlers.migrate_checksum): a mismatch rolls the range back and fails
   it with DATA_LOSS, unless the item says `on_mismatch: "report"`.

How failures end the item:

    constraint violation, bad value   fail, FAILED_PRECONDITION / INVALID_ARGUMENT, with
                                      "key=<value>" of the first row that fails — found
                                      by bisecting the rows under savepoints — and the
                                      database's message; nothing of the range is written
    written values read back changed  fail, DATA_LOSS, naming the key and the columns
    connection lost, deadlock, lock   retry, UNAVAILABLE (ABORTED for deadlocks and
    wait, pool exhausted              serialization failures)
    no such table                     fail, NOT_FOUND
    no such column, bad URL, unknown  fail, INVALID_ARGUMENT
    database name, bad transform

Every worker process keeps one AsyncEngine per database URL, made on first use with a
pool of min(concurrency, 16) connections, and disposes them in the shutdown hook. An
item holds one connection at a time: the source's, then the destination's.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from sqlalchemy import Table
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from sqlalchemy.sql.dml import Insert

from batchd.core.domain import BatchOptions, RetryPolicy
from batchd.worker.handler import (
    Code,
    Handler,
    HandlerError,
    ItemContext,
    PermanentError,
    RetryableError,
    WorkerInfo,
)
from batchd.worker.handlers.migrate_checksum import CHECKSUM_MODULUS, canonical, row_digest
from batchd.worker.handlers.migrate_errors import Kind, classify, database_message
from batchd.worker.handlers.migrate_sql import (
    Engines,
    async_url,
    key_kind,
    parse_databases,
    read_keys,
    read_range,
    upsert,
)
from batchd.worker.handlers.migrate_transform import TransformCache, TransformError

__all__ = ["NAME", "PARAMS_SCHEMA", "record_migrate_handler"]

NAME = "record.migrate"

_NAME_OR_URL = {
    "type": "string",
    "minLength": 1,
    "maxLength": 2048,
    "description": "A name from the worker's `databases` setting, or a SQLAlchemy URL.",
}
_TABLE = {"type": "string", "minLength": 1, "maxLength": 256}
_BOUND = {"type": ["integer", "string"]}

PARAMS_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "source": _NAME_OR_URL,
        "destination": _NAME_OR_URL,
        "table": {**_TABLE, "description": 'The source table, "table" or "schema.table".'},
        "destination_table": {**_TABLE, "description": "Default: the same as `table`."},
        "key": {"type": "string", "minLength": 1, "description": "The primary-key column."},
        "range": {
            "type": "object",
            "properties": {"from": _BOUND, "to": _BOUND},
            "required": ["from", "to"],
            "additionalProperties": False,
            "description": "Keys from `from` to `to`, both included.",
        },
        "columns": {
            "type": "array",
            "items": {"type": "string", "minLength": 1},
            "minItems": 1,
            "uniqueItems": True,
            "description": "The columns to copy (the key is always copied); default: all.",
        },
        "transform": {
            "type": "string",
            "pattern": r"^[A-Za-z_][A-Za-z0-9_.]*:[A-Za-z_][A-Za-z0-9_.]*$",
            "description": "module:function of a row transform declared with @row_transform.",
        },
        "on_mismatch": {
            "enum": ["fail", "report"],
            "default": "fail",
            "description": "When the rows read back differ from those written: fail the "
            "item (rolled back) or report match: false.",
        },
    },
    "required": ["source", "destination", "table", "key", "range"],
    "additionalProperties": False,
}

# Rows digested between two pauses that let the event loop run other work.
_ROWS_BETWEEN_PAUSES = 500
# Both kinds of failure a single row can cause, and so the row-by-row search can find.
_ROW_FAILURES = (Kind.CONSTRAINT, Kind.DATA)


@dataclass(frozen=True)
class _Item:
    """An item's params, checked and with their defaults."""

    source: str
    destination: str
    table: str
    destination_table: str
    key: str
    lo: Any
    hi: Any
    columns: tuple[str, ...] | None
    transform: str | None
    on_mismatch: Literal["fail", "report"]

    @classmethod
    def from_params(cls, params: Mapping[str, Any]) -> _Item:
        bounds = params["range"]
        columns = params.get("columns")
        return cls(
            source=str(params["source"]),
            destination=str(params["destination"]),
            table=str(params["table"]),
            destination_table=str(params.get("destination_table") or params["table"]),
            key=str(params["key"]),
            lo=bounds["from"],
            hi=bounds["to"],
            columns=tuple(map(str, columns)) if columns else None,
            transform=params.get("transform") or None,
            on_mismatch="report" if params.get("on_mismatch") == "report" else "fail",
        )


class _RecordMigrate:
    """The handler's state: the worker process's engines and transforms."""

    def __init__(self) -> None:
        self._engines: Engines | None = None
        self._databases: dict[str, str] = {}
        self._transforms = TransformCache()

    async def startup(self, worker: WorkerInfo) -> None:
        self._databases = parse_databases(worker.settings.databases)
        self._engines = Engines(worker.concurrency)

    async def shutdown(self) -> None:
        if self._engines is not None:
            await self._engines.dispose()
            self._engines = None

    async def run(self, params: dict[str, Any], ctx: ItemContext) -> Mapping[str, Any]:
        if self._engines is None:
            raise RuntimeError("record.migrate used before its startup hook ran")
        try:
            return await self._copy(_Item.from_params(params), self._engines, ctx)
        except BaseException:
            # The fix may be a schema change (a column added, a table created): the
            # next attempt, or the redrive, reflects the tables again.
            self._engines.forget_tables()
            raise

    async def _copy(self, item: _Item, engines: Engines, ctx: ItemContext) -> Mapping[str, Any]:
        source = engines.get(self._url(item.source, "source"))
        destination = engines.get(self._url(item.destination, "destination"))
        with _database_errors("source", item.table, engines):
            table = await engines.table(source, item.table)
        columns = _columns(table, item)
        lo, hi = _bound(item.lo, table, item.key), _bound(item.hi, table, item.key)
        with _database_errors("source", item.table, engines):
            async with source.connect() as conn:
                rows = await read_range(conn, table, item.key, columns, lo, hi)
        source_digests = await _digests(rows, item.key, columns)
        source_checksum = _sum(source_digests)
        written = self._transformed(rows, item)
        out_columns = list(written[0]) if written else list(columns)
        # Without a transform the rows written are the rows read: their digests too.
        expected = (
            source_digests if written is rows else await _digests(written, item.key, out_columns)
        )
        with _database_errors("destination", item.destination_table, engines):
            target = await engines.table(destination, item.destination_table)
        _check_destination(target, item, out_columns)
        with _database_errors("destination", item.destination_table, engines):
            stored = await _write(destination, target, item, out_columns, written, expected)
        output: dict[str, Any] = {
            "rows": len(rows),
            "written": len(written),
            "skipped": len(rows) - len(written),
            "source_checksum": source_checksum,
            "destination_checksum": stored,
            "match": stored == _sum(expected),
        }
        if item.transform:
            output["transformed_checksum"] = _sum(expected)
        ctx.logger.debug("range_copied", rows=len(rows), written=len(written))
        return output

    def _url(self, ref: str, side: str) -> URL:
        text = ref
        if "://" not in ref:
            if ref not in self._databases:
                known = ", ".join(sorted(self._databases)) or "none"
                raise PermanentError(
                    f"{side}: no database named {ref!r} in the worker's databases setting "
                    f"(names: {known})",
                    code=Code.INVALID_ARGUMENT,
                )
            text = self._databases[ref]
        try:
            return async_url(text)
        except ValueError as exc:
            raise PermanentError(f"{side}: {exc}", code=Code.INVALID_ARGUMENT) from None

    def _transformed(self, rows: list[dict[str, Any]], item: _Item) -> list[dict[str, Any]]:
        """The rows to write: the source rows, or what the transform makes of them."""
        if not item.transform:
            return rows
        try:
            transform = self._transforms.get(item.transform)
        except TransformError as exc:
            raise PermanentError(str(exc), code=Code.INVALID_ARGUMENT) from None
        written: list[dict[str, Any]] = []
        for row in rows:
            key = row[item.key]
            try:
                new = transform(row)
            except Exception as exc:
                raise PermanentError(
                    f"transform failed at key={key}: {type(exc).__name__}: {exc}",
                    code=Code.FAILED_PRECONDITION,
                ) from exc
            if new is None:
                continue
            if not isinstance(new, dict):
                raise PermanentError(
                    f"transform returned {type(new).__name__} at key={key}: a dict or None",
                    code=Code.INVALID_ARGUMENT,
                )
            if item.key not in new or canonical(new[item.key]) != canonical(key):
                raise PermanentError(
                    f"transform changed the key at key={key}: it must keep {item.key}",
                    code=Code.INVALID_ARGUMENT,
                )
            if written and new.keys() != written[0].keys():
                raise PermanentError(
                    f"transform returned other columns at key={key} than for the rows "
                    f"before: {sorted(new)} vs {sorted(written[0])}",
                    code=Code.INVALID_ARGUMENT,
                )
            written.append(new)
        return written


def record_migrate_handler() -> Handler:
    """A fresh `record.migrate` handler, with its own (not yet opened) engines."""
    state = _RecordMigrate()
    return Handler(
        name=NAME,
        description=(
            "Copies the rows of one primary-key range of a table from a source database to "
            "a destination (PostgreSQL, MySQL/MariaDB, SQLite) by upsert in one "
            "transaction, optionally through a transform; returns rows, checksums of both "
            "sides and match. Plan the ranges with batchd-migrate-plan."
        ),
        params_schema=PARAMS_SCHEMA,
        default_options=BatchOptions(
            chunk_size=4,
            retry_policy=RetryPolicy(
                max_attempts=5, min_backoff=1.0, max_backoff=60.0, max_doublings=4
            ),
            item_timeout=900.0,
        ),
        run=state.run,
        startup=state.startup,
        shutdown=state.shutdown,
    )


def _columns(table: Table, item: _Item) -> list[str]:
    """The columns to copy, the key first."""
    if item.key not in table.c:
        raise PermanentError(
            f"source table {item.table} has no column {item.key!r}", code=Code.INVALID_ARGUMENT
        )
    wanted = list(item.columns) if item.columns else [c.name for c in table.columns]
    unknown = [c for c in wanted if c not in table.c]
    if unknown:
        raise PermanentError(
            f"source table {item.table} has no column(s) {', '.join(unknown)}",
            code=Code.INVALID_ARGUMENT,
        )
    return [item.key, *(c for c in wanted if c != item.key)]


def _bound(value: Any, table: Table, key: str) -> Any:
    """A range end as the key column's type: an int (JSON may give 5.0) or a string."""
    try:
        kind = key_kind(table, key)
    except ValueError as exc:
        raise PermanentError(str(exc), code=Code.INVALID_ARGUMENT) from None
    if kind is int and isinstance(value, float) and value.is_integer():
        value = int(value)
    if not isinstance(value, kind) or isinstance(value, bool):
        raise PermanentError(
            f"range bound {value!r}: key {key} is a {kind.__name__} column",
            code=Code.INVALID_ARGUMENT,
        )
    return value


def _check_destination(target: Table, item: _Item, columns: Sequence[str]) -> None:
    missing = [c for c in columns if c not in target.c]
    if missing:
        raise PermanentError(
            f"destination table {item.destination_table} has no column(s) {', '.join(missing)}",
            code=Code.INVALID_ARGUMENT,
        )


async def _write(
    engine: AsyncEngine,
    target: Table,
    item: _Item,
    columns: Sequence[str],
    rows: list[dict[str, Any]],
    expected: Mapping[str, int],
) -> str:
    """Upserts the rows in one transaction and reads them back before committing;
    returns the checksum of the rows read back (`expected`: the digests of the rows,
    by canonical key)."""
    expected_sum = _sum(expected)
    if not rows:
        return expected_sum
    statement = upsert(target, item.key, columns, engine.dialect.name)
    async with engine.connect() as conn:
        try:
            async with conn.begin():
                await conn.execute(statement, rows)
                keys = [r[item.key] for r in rows]
                stored = await read_keys(conn, target, item.key, columns, keys)
                found = await _digests(stored, item.key, columns)
                stored_sum = _sum(found)
                if stored_sum != expected_sum and item.on_mismatch == "fail":
                    raise _mismatch(rows, stored, item.key, columns, expected, found)
        except sa_exc.DBAPIError as exc:
            if classify(exc) not in _ROW_FAILURES:
                raise
            culprit = await _first_failing_row(conn, statement, rows, item.key)
            raise _row_failure(exc, culprit, item) from exc
    return stored_sum


async def _digests(
    rows: Sequence[Mapping[str, Any]], key: str, columns: Sequence[str]
) -> dict[str, int]:
    """Each row's digest by its canonical key. Pauses every few hundred rows: the
    worker's other items and its lease renewals share this event loop."""
    digests: dict[str, int] = {}
    for start in range(0, len(rows), _ROWS_BETWEEN_PAUSES):
        if start:
            await asyncio.sleep(0)
        for row in rows[start : start + _ROWS_BETWEEN_PAUSES]:
            digests[canonical(row[key])] = row_digest(row[c] for c in columns)
    return digests


def _sum(digests: Mapping[str, int]) -> str:
    return f"{sum(digests.values()) % CHECKSUM_MODULUS:064x}"


async def _first_failing_row(
    conn: AsyncConnection, statement: Insert, rows: list[dict[str, Any]], key: str
) -> tuple[Any, BaseException] | None:
    """The key of the first row that fails when the rows are written in order, and its
    error: a bisection under savepoints that keeps each passing prefix applied — so a
    row that clashes with an earlier one of the range is found too — in one
    transaction, rolled back at the end."""
    transaction = await conn.begin()
    try:
        done, end = 0, len(rows)  # rows[:done] are applied; the culprit is in rows[done:end]
        while end - done > 1:
            middle = (done + end) // 2
            if await _applies(conn, statement, rows[done:middle]) is None:
                done = middle
            else:
                end = middle
        error = await _applies(conn, statement, rows[done:end])
        return None if error is None else (rows[done][key], error)
    finally:
        await transaction.rollback()


async def _applies(
    conn: AsyncConnection, statement: Insert, rows: list[dict[str, Any]]
) -> BaseException | None:
    """None if the rows are written (kept, under a released savepoint), else the row
    failure they raise (undone)."""
    try:
        async with conn.begin_nested():
            await conn.execute(statement, rows)
    except sa_exc.DBAPIError as exc:
        if classify(exc) not in _ROW_FAILURES:
            raise
        return exc
    return None


def _row_failure(
    batch_error: BaseException, culprit: tuple[Any, BaseException] | None, item: _Item
) -> PermanentError:
    error = batch_error if culprit is None else culprit[1]
    code = Code.FAILED_PRECONDITION if classify(error) is Kind.CONSTRAINT else Code.INVALID_ARGUMENT
    where = "" if culprit is None else f" at key={culprit[0]}"
    return PermanentError(
        f"destination {item.destination_table} rejected the row{where}: "
        f"{database_message(error)}; nothing of the range was written",
        code=code,
    )


def _mismatch(
    rows: list[dict[str, Any]],
    stored: list[dict[str, Any]],
    key: str,
    columns: Sequence[str],
    expected: Mapping[str, int],
    found: Mapping[str, int],
) -> PermanentError:
    """The failure for rows read back unlike they were written, naming the first."""
    by_key = {canonical(r[key]): r for r in stored}
    for row in rows:
        k = canonical(row[key])
        if found.get(k) == expected[k]:
            continue
        back = by_key.get(k)
        if back is None:
            detail = "the row is missing"
        else:
            changed = [c for c in columns if canonical(row[c]) != canonical(back[c])]
            detail = f"column(s) {', '.join(changed)} read back changed"
        return PermanentError(
            f"destination does not hold the rows as written at key={row[key]}: {detail} "
            "(a column type that rounds, truncates or converts?); the range was rolled back",
            code=Code.DATA_LOSS,
        )
    return PermanentError("destination rows read back differ", code=Code.DATA_LOSS)


@contextlib.contextmanager
def _database_errors(side: str, table: str, engines: Engines) -> Iterator[None]:
    """Database failures as the item's fate (see the module docstring)."""
    try:
        yield
    except HandlerError:
        raise
    except (sa_exc.SQLAlchemyError, OSError, TimeoutError) as exc:
        kind = classify(exc)
        if kind in (Kind.NOT_FOUND, Kind.INVALID):
            engines.forget_tables()  # it may be created or altered before the next try
        raise _failure(kind, f"{side} {table}: {database_message(exc)}") from exc


def _failure(kind: Kind, message: str) -> HandlerError:
    if kind is Kind.NOT_FOUND:
        return PermanentError(message, code=Code.NOT_FOUND)
    if kind is Kind.INVALID:
        return PermanentError(message, code=Code.INVALID_ARGUMENT)
    if kind is Kind.DENIED:
        return PermanentError(message, code=Code.PERMISSION_DENIED)
    if kind is Kind.CONSTRAINT:
        return PermanentError(message, code=Code.FAILED_PRECONDITION)
    if kind is Kind.DATA:
        return PermanentError(message, code=Code.INVALID_ARGUMENT)
    if kind is Kind.TRANSIENT:
        deadlock = any(w in message.lower() for w in ("deadlock", "serializ"))
        return RetryableError(message, code=Code.ABORTED if deadlock else Code.UNAVAILABLE)
    return RetryableError(message, code=Code.UNKNOWN)
