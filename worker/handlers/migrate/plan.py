"""`batchd-migrate-plan`: cuts a table into `record.migrate` items.

Connects to the source database, walks the table's primary key by keyset pagination and
prints one JSON Lines item per range of `--rows-per-item` keys, ready for
`batchd submit record.migrate -`:

    {"custom_id": "orders.1-5000", "params": {"source": ..., "destination": ...,
     "table": "orders", "key": "id", "range": {"from": 1, "to": 5000}}}

Each range's upper end is found with `WHERE key > :last ORDER BY key LIMIT 1 OFFSET n-1`
and the next range starts after it, so every query walks the key's index from where the
last one stopped and reads keys only, never rows: planning a table of millions of rows
takes seconds. Every key present at planning time falls in exactly one range; a range
holds `--rows-per-item` keys, the last one fewer. Rows inserted later inside a range are
copied with it; beyond the last range's upper end they are not.

The key must be a single integer or string column: the table's primary key, or the
unique non-null column `--key` names. Composite keys are refused.

Databases are SQLAlchemy URLs (postgresql://, mysql://, sqlite:///…) or names from
BATCHD_DATABASES, as workers know them; items carry the source and the destination as
given here — prefer names, so that no password travels in the items.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import sys
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any, TextIO

from sqlalchemy import Table, func, select
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncConnection, create_async_engine

from batchd.core.config import Settings
from batchd.worker.handlers.migrate.errors import database_message
from batchd.worker.handlers.migrate.record import MigrateSettings
from batchd.worker.handlers.migrate.sql import async_url, key_kind, parse_databases, reflect

__all__ = ["KeyRange", "PlanError", "custom_id", "key_column", "main", "plan_ranges", "write_plan"]

DEFAULT_ROWS_PER_ITEM = 5000
# What batchd allows in a custom_id, negated.
_ID_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]")


class PlanError(Exception):
    """The table cannot be planned (no usable key, no such column...)."""


@dataclass(frozen=True)
class KeyRange:
    """Keys lo to hi, both included, and how many keys the table had in it."""

    lo: Any
    hi: Any
    rows: int


def key_column(table: Table, key: str | None = None) -> str:
    """The column ranges are cut on: `key`, else the single-column primary key."""
    if key is not None:
        if key not in table.c:
            raise PlanError(f"table {table.fullname} has no column {key!r}")
    else:
        names = [c.name for c in table.primary_key.columns]
        if not names:
            raise PlanError(
                f"table {table.fullname} has no primary key: name a unique, non-null "
                "integer or string column with --key"
            )
        if len(names) > 1:
            raise PlanError(
                f"table {table.fullname} has a composite primary key ({', '.join(names)}): "
                "record.migrate needs a single integer or string key column; name a unique "
                "one with --key"
            )
        key = names[0]
    try:
        key_kind(table, key)
    except ValueError as exc:
        raise PlanError(str(exc)) from None
    return key


async def plan_ranges(
    conn: AsyncConnection, table: Table, key: str, rows_per_item: int
) -> AsyncIterator[KeyRange]:
    """The table's keys in consecutive ranges of `rows_per_item` keys (the last fewer)."""
    if rows_per_item < 1:
        raise PlanError("rows per item must be at least 1")
    k = table.c[key]
    last: Any = None
    while True:
        after = select(k) if last is None else select(k).where(k > last)
        lo = await conn.scalar(after.order_by(k).limit(1))
        if lo is None:
            return
        hi = await conn.scalar(after.order_by(k).offset(rows_per_item - 1).limit(1))
        rows = rows_per_item
        if hi is None:  # the last range: fewer keys than a full one
            rest = after.subquery()
            hi = await conn.scalar(select(func.max(rest.c[key])))
            rows = int(await conn.scalar(select(func.count()).select_from(rest)) or 0)
        yield KeyRange(lo, hi, rows)
        last = hi


async def write_plan(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    """Prints the items of args' table; returns the number of rows they cover."""
    settings = Settings.from_env(sections=[MigrateSettings]).section(MigrateSettings)
    databases = parse_databases(settings.databases)
    url = async_url(databases.get(args.source, args.source))
    engine = create_async_engine(url, pool_size=1, max_overflow=0)
    params: dict[str, Any] = {
        "source": args.source,
        "destination": args.destination,
        "table": args.table,
    }
    if args.destination_table:
        params["destination_table"] = args.destination_table
    if args.columns:
        params["columns"] = [c.strip() for c in args.columns.split(",") if c.strip()]
    if args.transform:
        params["transform"] = args.transform
    if args.on_mismatch:
        params["on_mismatch"] = args.on_mismatch
    items = total = 0
    try:
        async with engine.connect() as conn:
            table = await reflect(conn, args.table)
            key = key_column(table, args.key)
            params["key"] = key
            async for part in plan_ranges(conn, table, key, args.rows_per_item):
                item = {
                    "custom_id": custom_id(args.table, part, items),
                    "params": {**params, "range": {"from": part.lo, "to": part.hi}},
                }
                out.write(json.dumps(item, separators=(",", ":"), ensure_ascii=False) + "\n")
                items += 1
                total += part.rows
    finally:
        await engine.dispose()
    print(f"{args.table}: {total} rows in {items} items of up to {args.rows_per_item}", file=err)
    return total


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="batchd-migrate-plan",
        description="Print record.migrate items (JSON Lines) covering a table's keys.",
        epilog="example: batchd-migrate-plan sqlite:///src.db orders --destination "
        "sqlite:///dst.db | batchd submit record.migrate - --watch",
    )
    parser.add_argument("source", metavar="SOURCE", help="the source: a URL or a database name")
    parser.add_argument("table", metavar="TABLE", help='the table, "table" or "schema.table"')
    parser.add_argument(
        "--destination", required=True, metavar="DEST", help="the destination: a URL or a name"
    )
    parser.add_argument("--destination-table", metavar="TABLE", help="default: TABLE")
    parser.add_argument("--key", help="the key column (default: the primary key)")
    parser.add_argument(
        "--rows-per-item",
        type=int,
        default=DEFAULT_ROWS_PER_ITEM,
        metavar="N",
        help=f"keys per range (default: {DEFAULT_ROWS_PER_ITEM})",
    )
    parser.add_argument("--columns", metavar="A,B,...", help="copy these columns only")
    parser.add_argument("--transform", metavar="MODULE:FUNCTION", help="a row transform")
    parser.add_argument("--on-mismatch", choices=["fail", "report"])
    args = parser.parse_args(argv)
    for side in (args.source, args.destination):
        if "://" in side and _has_password(side):
            print(
                "batchd-migrate-plan: warning: the items carry a database password; "
                "name the database in BATCHD_DATABASES instead",
                file=sys.stderr,
            )
    try:
        asyncio.run(write_plan(args, sys.stdout, sys.stderr))
    except (PlanError, ValueError) as exc:
        print(f"batchd-migrate-plan: error: {exc}", file=sys.stderr)
        return 2
    except sa_exc.SQLAlchemyError as exc:
        print(f"batchd-migrate-plan: error: {database_message(exc)}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # the reader went away (`| head`)
        return 1
    return 0


def custom_id(table: str, part: KeyRange, number: int) -> str:
    """ "<table>.<lo>-<hi>" when that is a valid custom_id (at most 64 characters of
    [A-Za-z0-9_.-]), else "<table>.<n>" with n the range's number from 0: string keys
    may hold any character."""
    name = _ID_UNSAFE.sub("_", table)[:40]
    readable = f"{name}.{part.lo}-{part.hi}"
    if len(readable) <= 64 and not _ID_UNSAFE.search(readable):
        return readable
    return f"{name}.{number:06d}"


def _has_password(url: str) -> bool:
    try:
        return bool(make_url(url).password)
    except sa_exc.ArgumentError:
        return False  # reported when the URL is used


if __name__ == "__main__":
    sys.exit(main())
