"""The write half of a `record.migrate` item: upsert a range, read it back, compare.

The rows go to the destination in one transaction — one executemany of the dialect's
upsert — and are read back by key inside it, so that a checksum mismatch or a rejected
row leaves nothing of the range behind. When the database rejects the batch for a row
(a constraint, a value the column cannot hold), a bisection under savepoints finds the
first row that fails, for an error that names its key.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy import Table
from sqlalchemy import exc as sa_exc
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from sqlalchemy.sql.dml import Insert

from batchd.worker.handler import Code, PermanentError
from batchd.worker.handlers.migrate.checksum import CHECKSUM_MODULUS, canonical, row_digest
from batchd.worker.handlers.migrate.errors import Kind, classify, database_message
from batchd.worker.handlers.migrate.sql import read_keys, upsert

__all__ = ["digests", "sum_digests", "write_range"]

# Rows digested between two pauses that let the event loop run other work.
_ROWS_BETWEEN_PAUSES = 500
# Both kinds of failure a single row can cause, and so the row-by-row search can find.
_ROW_FAILURES = (Kind.CONSTRAINT, Kind.DATA)


async def write_range(
    engine: AsyncEngine,
    target: Table,
    key: str,
    columns: Sequence[str],
    rows: list[dict[str, Any]],
    expected: Mapping[str, int],
    *,
    on_mismatch: str = "fail",
) -> str:
    """Upserts the rows in one transaction and reads them back before committing;
    returns the checksum of the rows read back. `expected`: the rows' digests by
    canonical key (`digests`). Raises PermanentError for a row the destination rejects
    (naming its key) and, unless `on_mismatch` is "report", for rows read back changed."""
    expected_sum = sum_digests(expected)
    if not rows:
        return expected_sum
    statement = upsert(target, key, columns, engine.dialect.name)
    async with engine.connect() as conn:
        try:
            async with conn.begin():
                await conn.execute(statement, rows)
                keys = [r[key] for r in rows]
                stored = await read_keys(conn, target, key, columns, keys)
                found = await digests(stored, key, columns)
                stored_sum = sum_digests(found)
                if stored_sum != expected_sum and on_mismatch == "fail":
                    raise _mismatch(rows, stored, key, columns, expected, found)
        except sa_exc.DBAPIError as exc:
            if classify(exc) not in _ROW_FAILURES:
                raise
            culprit = await _first_failing_row(conn, statement, rows, key)
            raise _row_failure(exc, culprit, target.fullname) from exc
    return stored_sum


async def digests(
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


def sum_digests(digests: Mapping[str, int]) -> str:
    """The checksum of rows from their digests."""
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
    batch_error: BaseException, culprit: tuple[Any, BaseException] | None, table: str
) -> PermanentError:
    error = batch_error if culprit is None else culprit[1]
    code = Code.FAILED_PRECONDITION if classify(error) is Kind.CONSTRAINT else Code.INVALID_ARGUMENT
    where = "" if culprit is None else f" at key={culprit[0]}"
    return PermanentError(
        f"destination {table} rejected the row{where}: "
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
