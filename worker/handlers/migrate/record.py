"""`record.migrate`: copies one primary-key range of a table to another database.

An item names a source and a destination database by a name from the worker's
`databases` setting (URLs only where the operator allows them), a table, its key column
and a range of keys, both ends included — ranges the planning tool
(`batchd-migrate-plan`, batchd.worker.handlers.migrate.plan) cuts from the source by
keyset pagination. The item:

1. reads the range's rows from the source, in key order;
2. passes each through the transform hook, if the item names one the worker registered
   (batchd.worker.handlers.migrate.transform; it may skip a row);
3. upserts them into the destination in one transaction — ON CONFLICT (key) DO UPDATE
   on PostgreSQL and SQLite, ON DUPLICATE KEY UPDATE on MySQL/MariaDB — so a re-run,
   after a crash or a redrive, rewrites the same rows and duplicates nothing;
4. reads the written rows back inside that transaction and compares checksums
   (batchd.worker.handlers.migrate.checksum): a mismatch rolls the range back and fails
   it with DATA_LOSS, unless the item says `on_mismatch: "report"`.

How failures end the item:

    constraint violation, bad value   fail, FAILED_PRECONDITION / INVALID_ARGUMENT, with
                                      "key=<value>" of the first row that fails — found
                                      by bisecting the rows under savepoints — and the
                                      database's message; nothing of the range is written
    written values read back changed  fail, DATA_LOSS, naming the key and the columns
    connection lost, deadlock, lock   retry, UNAVAILABLE (ABORTED for deadlocks and
    wait, pool exhausted              serialization failures); a connection failure
                                      reads "cannot connect to the database", without
                                      the OS's words
    no such table                     fail, NOT_FOUND
    no such column, bad URL, unknown  fail, INVALID_ARGUMENT
    database name, a URL not allowed,
    a transform not registered

Every worker process keeps one AsyncEngine per database URL, made on first use with a
pool of min(concurrency, 16) connections, and disposes them in the shutdown hook. An
item holds one connection at a time: the source's, then the destination's.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from sqlalchemy import Table
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import URL

from batchd.core.config import SettingError, setting
from batchd.core.domain import DEFAULT_TENANT, TENANT_PATTERN, BatchOptions, RetryPolicy
from batchd.worker.handler import (
    Code,
    Handler,
    HandlerError,
    ItemContext,
    PermanentError,
    RetryableError,
    WorkerInfo,
)
from batchd.worker.handlers.migrate.checksum import canonical
from batchd.worker.handlers.migrate.errors import (
    CONNECT_FAILED,
    Kind,
    classify,
    database_message,
    is_connect_failure,
)
from batchd.worker.handlers.migrate.sql import (
    Engines,
    async_url,
    item_url,
    key_kind,
    parse_databases,
    read_range,
)
from batchd.worker.handlers.migrate.transform import RowTransform, load_transforms
from batchd.worker.handlers.migrate.write import digests, sum_digests, write_range

__all__ = [
    "NAME",
    "PARAMS_SCHEMA",
    "MigrateSettings",
    "params_schema",
    "record_migrate_handler",
]

NAME = "record.migrate"

# In migrate_tenant_databases: every database name (and URLs, where they are allowed).
ANY_DATABASE = "*"
# A database name as `databases` gives it: no ":" or "/", so never a URL.
_NAME = {
    "type": "string",
    "pattern": r"^[^:/]+$",
    "minLength": 1,
    "maxLength": 256,
    "description": "A name from the worker's `databases` setting.",
}
# With migrate_allow_urls: a name, or a postgresql:// or mysql:// URL (never sqlite).
_NAME_OR_URL = {
    "type": "string",
    "pattern": r"^([^:/]+|(postgresql|postgres|mysql|mariadb)(\+[a-z0-9_]+)?://.+)$",
    "minLength": 1,
    "maxLength": 2048,
    "description": "A name from the worker's `databases` setting, or a postgresql:// or "
    "mysql:// URL (its query options are dropped).",
}
_TABLE = {"type": "string", "minLength": 1, "maxLength": 256}
_BOUND = {"type": ["integer", "string"]}

PARAMS_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "source": _NAME,
        "destination": _NAME,
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
            "enum": [],
            "description": "A row transform the worker registered (none registered).",
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


def params_schema(*, allow_urls: bool, transforms: Sequence[str]) -> dict[str, Any]:
    """The params schema a worker publishes: database names only unless `allow_urls`,
    and the names of its registered transforms."""
    schema = copy.deepcopy(PARAMS_SCHEMA)
    properties = schema["properties"]
    if allow_urls:
        properties["source"] = properties["destination"] = dict(_NAME_OR_URL)
    properties["transform"] = {
        "enum": sorted(transforms),
        "description": "A row transform the worker registered: "
        + (", ".join(sorted(transforms)) or "none registered")
        + ".",
    }
    return schema


def parse_tenant_databases(setting: str, databases: Mapping[str, str]) -> dict[str, frozenset[str]]:
    """`migrate_tenant_databases` ("tenant=name,tenant=*") as {tenant: names granted}.
    Raises SettingError (a start-up error) naming a bad pair, tenant or database name."""
    grants: dict[str, set[str]] = {}
    for pair in setting.split(","):
        if not pair.strip():
            continue
        tenant, sep, name = (part.strip() for part in pair.partition("="))
        if not sep or not tenant or not name:
            raise SettingError(f"migrate_tenant_databases: expected tenant=name, got {pair!r}")
        if not TENANT_PATTERN.fullmatch(tenant):
            raise SettingError(f"migrate_tenant_databases: {tenant!r} is not a tenant name")
        if name != ANY_DATABASE and name not in databases:
            raise SettingError(
                f"migrate_tenant_databases: {tenant}={name}: no database named {name!r} "
                "in the databases setting"
            )
        grants.setdefault(tenant, set()).add(name)
    return {tenant: frozenset(names) for tenant, names in grants.items()}


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


@dataclass(frozen=True)
class MigrateSettings:
    """record.migrate's settings: BATCHD_DATABASES, BATCHD_MIGRATE_ALLOW_URLS,
    BATCHD_MIGRATE_TENANT_DATABASES, BATCHD_MIGRATE_TRANSFORMS (or their flags)."""

    databases: str = setting(
        "",
        "databases record.migrate items may name, comma-separated name=SQLAlchemy-URL "
        "pairs; MySQL/MariaDB connections never allow LOAD DATA LOCAL (local_infile off)",
    )
    migrate_allow_urls: bool = setting(
        False,
        "record.migrate items may give postgresql:// and mysql:// URLs besides names "
        "(query options dropped; never sqlite:); off: names only",
    )
    migrate_tenant_databases: str = setting(
        "",
        "which databases each tenant's record.migrate items may name, comma-separated "
        "tenant=name pairs (tenant=* for every name, and URLs where allowed); the default "
        "tenant may name every database, any other tenant only those granted here",
    )
    migrate_transforms: str = setting(
        "",
        "row transforms record.migrate items may name, comma-separated module:function "
        "paths imported at start (besides the batchd.migrate.transforms entry points)",
    )


class _RecordMigrate:
    """The handler's state: the worker process's engines and transforms."""

    def __init__(self) -> None:
        self._engines: Engines | None = None
        self._databases: dict[str, str] = {}
        self._allow_urls = False
        self._grants: dict[str, frozenset[str]] = {}
        self._transforms: dict[str, RowTransform] = {}
        # The schema the worker publishes, filled in by the startup hook (which runs
        # before the worker publishes its handlers) from the settings.
        self.schema: dict[str, Any] = copy.deepcopy(PARAMS_SCHEMA)

    async def startup(self, worker: WorkerInfo) -> None:
        settings = worker.settings.section(MigrateSettings)
        self._databases = parse_databases(settings.databases)
        self._allow_urls = settings.migrate_allow_urls
        self._grants = parse_tenant_databases(settings.migrate_tenant_databases, self._databases)
        self._transforms = load_transforms(settings.migrate_transforms)
        schema = params_schema(allow_urls=self._allow_urls, transforms=list(self._transforms))
        self.schema.clear()
        self.schema.update(schema)
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
        source = engines.get(self._url(item.source, "source", ctx.tenant))
        destination = engines.get(self._url(item.destination, "destination", ctx.tenant))
        with _database_errors("source", item.table, engines):
            table = await engines.table(source, item.table)
        columns = _columns(table, item)
        lo, hi = _bound(item.lo, table, item.key), _bound(item.hi, table, item.key)
        with _database_errors("source", item.table, engines):
            async with source.connect() as conn:
                rows = await read_range(conn, table, item.key, columns, lo, hi)
        source_digests = await digests(rows, item.key, columns)
        source_checksum = sum_digests(source_digests)
        written = self._transformed(rows, item)
        out_columns = list(written[0]) if written else list(columns)
        # Without a transform the rows written are the rows read: their digests too.
        expected = (
            source_digests if written is rows else await digests(written, item.key, out_columns)
        )
        with _database_errors("destination", item.destination_table, engines):
            target = await engines.table(destination, item.destination_table)
        _check_destination(target, item, out_columns)
        with _database_errors("destination", item.destination_table, engines):
            stored = await write_range(
                destination,
                target,
                item.key,
                out_columns,
                written,
                expected,
                on_mismatch=item.on_mismatch,
            )
        output: dict[str, Any] = {
            "rows": len(rows),
            "written": len(written),
            "skipped": len(rows) - len(written),
            "source_checksum": source_checksum,
            "destination_checksum": stored,
            "match": stored == sum_digests(expected),
        }
        if item.transform:
            output["transformed_checksum"] = sum_digests(expected)
        ctx.logger.debug("range_copied", rows=len(rows), written=len(written))
        return output

    def _url(self, ref: str, side: str, tenant: str) -> URL:
        """The URL of the database an item names. A worker checks again what the schema
        checked at submit: another worker, otherwise configured, may have published it."""
        granted = self._grants.get(tenant, frozenset())
        if tenant != DEFAULT_TENANT and ref not in granted and ANY_DATABASE not in granted:
            # Whether the name exists is none of the tenant's business: one answer.
            names = ", ".join(sorted(granted)) or "none"
            raise PermanentError(
                f"{side}: tenant {tenant!r} may not use database {ref!r} (granted: {names}; "
                "BATCHD_MIGRATE_TENANT_DATABASES grants databases to tenants)",
                code=Code.PERMISSION_DENIED,
            )
        try:
            if ref in self._databases:
                return async_url(self._databases[ref])
            if ":" in ref or "/" in ref:
                if not self._allow_urls:
                    raise PermanentError(
                        f"{side}: items name databases from the worker's databases setting; "
                        "URLs are not accepted (BATCHD_MIGRATE_ALLOW_URLS is off)",
                        code=Code.INVALID_ARGUMENT,
                    )
                return item_url(ref)
        except ValueError as exc:
            raise PermanentError(f"{side}: {exc}", code=Code.INVALID_ARGUMENT) from None
        known = ", ".join(sorted(self._databases)) or "none"
        raise PermanentError(
            f"{side}: no database named {ref!r} in the worker's databases setting (names: {known})",
            code=Code.INVALID_ARGUMENT,
        )

    def _transformed(self, rows: list[dict[str, Any]], item: _Item) -> list[dict[str, Any]]:
        """The rows to write: the source rows, or what the transform makes of them."""
        if not item.transform:
            return rows
        transform = self._transforms.get(item.transform)
        if transform is None:
            known = ", ".join(sorted(self._transforms)) or "none"
            raise PermanentError(
                f"transform {item.transform!r} is not registered on this worker "
                f"(registered: {known}; BATCHD_MIGRATE_TRANSFORMS or the "
                "batchd.migrate.transforms entry points)",
                code=Code.INVALID_ARGUMENT,
            )
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
        params_schema=state.schema,
        default_options=BatchOptions(
            chunk_size=4,
            retry_policy=RetryPolicy(
                max_attempts=5, min_backoff=1.0, max_backoff=60.0, max_doublings=4
            ),
            item_timeout=900.0,
        ),
        settings=MigrateSettings,
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


@contextlib.contextmanager
def _database_errors(side: str, table: str, engines: Engines) -> Iterator[None]:
    """Database failures as the item's fate (see the module docstring)."""
    try:
        yield
    except HandlerError:
        raise
    except (sa_exc.SQLAlchemyError, OSError, TimeoutError) as exc:
        kind = classify(exc)
        if is_connect_failure(exc):
            raise RetryableError(f"{side}: {CONNECT_FAILED}", code=Code.UNAVAILABLE) from exc
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
