"""The database side of `record.migrate`: URLs, engines, tables and statements.

Shared by the handler (on workers) and the planning tool (on the client): both reach
PostgreSQL, MySQL/MariaDB and SQLite through SQLAlchemy's asyncio engines.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy import MetaData, Table, and_, select
from sqlalchemy.dialects import mysql, postgresql, sqlite
from sqlalchemy.engine import URL, make_url
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
from sqlalchemy.sql.dml import Insert

__all__ = [
    "POOL_CAP",
    "Engines",
    "async_url",
    "item_url",
    "key_kind",
    "parse_databases",
    "read_keys",
    "read_range",
    "reflect",
    "split_table",
    "upsert",
]

# Connections per database per worker process at most, whatever the concurrency: a
# database serves a few dozen busy connections well, not hundreds per worker.
POOL_CAP = 16
# Rows per `IN (...)` list when reading rows back by key (SQLite's old limit is 999).
KEYS_PER_QUERY = 900

# The asyncio driver of each backend that plain URLs name.
_ASYNC_DRIVERS = {
    "postgresql": "postgresql+asyncpg",
    "postgres": "postgresql+asyncpg",
    "mysql": "mysql+aiomysql",
    "mariadb": "mysql+aiomysql",
    "sqlite": "sqlite+aiosqlite",
}


def async_url(text: str) -> URL:
    """The URL with its backend's asyncio driver: `postgresql://` → postgresql+asyncpg,
    `mysql://` (or `mariadb://`) → mysql+aiomysql with charset utf8mb4 unless given,
    `sqlite:///` → sqlite+aiosqlite. A URL naming a driver is kept as it is.
    Raises ValueError for what is not such a URL, or an in-memory SQLite database."""
    try:
        url = make_url(text)
    except Exception as exc:  # ArgumentError, ValueError: both mean "not a URL"
        raise ValueError(f"not a database URL: {_hide_password(text)}") from exc
    if "+" not in url.drivername:
        driver = _ASYNC_DRIVERS.get(url.drivername)
        if driver is None:
            raise ValueError(f"unsupported database {url.drivername!r}: postgresql, mysql, sqlite")
        url = url.set(drivername=driver)
    if url.get_backend_name() == "mysql":
        if "charset" not in url.query:
            url = url.update_query_dict({"charset": "utf8mb4"})
        url = _without_local_files(url)
    if url.get_backend_name() == "sqlite" and url.database in (None, "", ":memory:"):
        raise ValueError("an in-memory SQLite database is private to one connection")
    return url


# The backends an item's URL may name, when an operator lets items carry URLs at all: not
# SQLite, whose URLs open (and create) files at paths of the submitter's choosing.
_ITEM_BACKENDS = ("postgresql", "postgres", "mysql", "mariadb")


def item_url(text: str) -> URL:
    """A URL given by an item (BATCHD_MIGRATE_ALLOW_URLS): PostgreSQL or MySQL/MariaDB
    only, with its backend's asyncio driver whatever driver it names, and no query
    options — drivers' options (`local_infile`, `client_flag`, `ssl`…) are the
    operator's to set, in `databases`. Raises ValueError."""
    try:
        url = make_url(text)
    except Exception as exc:
        raise ValueError(f"not a database URL: {_hide_password(text)}") from exc
    backend = url.drivername.partition("+")[0]
    if backend not in _ITEM_BACKENDS:
        raise ValueError(
            f"items may give postgresql:// or mysql:// URLs only, not {backend}:// "
            "(name the database in the worker's databases setting)"
        )
    return async_url(url.set(drivername=backend, query={}).render_as_string(hide_password=False))


def mysql_connect_args(url: URL) -> dict[str, Any]:
    """Driver arguments every connection gets: for MySQL/MariaDB, `local_infile` off,
    whatever the URL says (with it on, a server may ask for any file the worker can
    read)."""
    if url.get_backend_name() != "mysql":
        return {}
    return {"local_infile": False}


def parse_databases(setting: str) -> dict[str, str]:
    """`databases` ("name=URL,name=URL") as {name: URL}. Raises ValueError naming a bad
    pair."""
    found: dict[str, str] = {}
    for pair in setting.split(","):
        if not pair.strip():
            continue
        name, sep, url = pair.partition("=")
        if not sep or not name.strip() or not url.strip():
            raise ValueError(f"databases: expected name=URL, got {_hide_password(pair)!r}")
        found[name.strip()] = url.strip()
    return found


class Engines:
    """One AsyncEngine per database URL in this process, made on first use."""

    def __init__(self, pool_size: int) -> None:
        self.pool_size = max(1, min(pool_size, POOL_CAP))
        self._engines: dict[str, AsyncEngine] = {}
        self._tables: dict[tuple[str, str], Table] = {}

    def get(self, url: URL) -> AsyncEngine:
        key = url.render_as_string(hide_password=False)
        engine = self._engines.get(key)
        if engine is None:
            engine = create_async_engine(
                url,
                connect_args=mysql_connect_args(url),
                pool_size=self.pool_size,
                max_overflow=0,
                pool_timeout=60,  # items beyond the pool wait for a connection this long
                pool_pre_ping=True,  # a connection the database dropped is replaced, not used
                pool_recycle=1800,  # before MySQL's wait_timeout closes it
            )
            self._engines[key] = engine
        return engine

    async def table(self, engine: AsyncEngine, name: str) -> Table:
        """The reflected table (cached), `name` being "table" or "schema.table"."""
        key = (engine.url.render_as_string(hide_password=False), name)
        table = self._tables.get(key)
        if table is None:
            async with engine.connect() as conn:
                table = await reflect(conn, name)
            self._tables[key] = table
        return table

    def forget_tables(self) -> None:
        """Reflect again on next use: after a failure the schema may be changed to fix it."""
        self._tables.clear()

    async def dispose(self) -> None:
        engines, self._engines = list(self._engines.values()), {}
        self._tables.clear()
        for engine in engines:
            await engine.dispose()


def split_table(name: str) -> tuple[str | None, str]:
    """ "schema.table" → ("schema", "table"); "table" → (None, "table")."""
    schema, _, table = name.rpartition(".")
    return (schema or None), table


async def reflect(conn: AsyncConnection, name: str) -> Table:
    """The table as the database describes it. Raises NoSuchTableError."""
    schema, table_name = split_table(name)
    return await conn.run_sync(
        lambda sync: Table(table_name, MetaData(), schema=schema, autoload_with=sync)
    )


def key_kind(table: Table, key: str) -> type:
    """int or str: the Python type of the key column. Raises ValueError for others."""
    try:
        python_type = table.c[key].type.python_type
    except NotImplementedError:
        python_type = object
    if issubclass(python_type, int) and python_type is not bool:
        return int
    if issubclass(python_type, str):
        return str
    raise ValueError(
        f"key column {key!r} is {table.c[key].type}: record.migrate needs an integer or "
        "string primary key"
    )


async def read_range(
    conn: AsyncConnection, table: Table, key: str, columns: Sequence[str], lo: Any, hi: Any
) -> list[dict[str, Any]]:
    """Rows with lo <= key <= hi, in key order."""
    k = table.c[key]
    query = select(*(table.c[c] for c in columns)).where(and_(k >= lo, k <= hi)).order_by(k)
    result = await conn.execute(query)
    return [dict(row) for row in result.mappings()]


async def read_keys(
    conn: AsyncConnection, table: Table, key: str, columns: Sequence[str], keys: Sequence[Any]
) -> list[dict[str, Any]]:
    """Rows whose key is one of `keys` (in no particular order)."""
    rows: list[dict[str, Any]] = []
    for start in range(0, len(keys), KEYS_PER_QUERY):
        part = keys[start : start + KEYS_PER_QUERY]
        query = select(*(table.c[c] for c in columns)).where(table.c[key].in_(part))
        result = await conn.execute(query)
        rows.extend(dict(row) for row in result.mappings())
    return rows


def upsert(table: Table, key: str, columns: Sequence[str], dialect: str) -> Insert:
    """INSERT of `columns` that updates the other columns of a row whose key exists:
    ON CONFLICT (key) DO UPDATE on PostgreSQL and SQLite, ON DUPLICATE KEY UPDATE on
    MySQL. Run it with a list of row dicts (executemany)."""
    others = [c for c in columns if c != key]
    if dialect == "postgresql":
        pg = postgresql.insert(table)
        if not others:
            return pg.on_conflict_do_nothing(index_elements=[key])
        return pg.on_conflict_do_update(
            index_elements=[key], set_={c: pg.excluded[c] for c in others}
        )
    if dialect == "sqlite":
        lite = sqlite.insert(table)
        if not others:
            return lite.on_conflict_do_nothing(index_elements=[key])
        return lite.on_conflict_do_update(
            index_elements=[key], set_={c: lite.excluded[c] for c in others}
        )
    if dialect in ("mysql", "mariadb"):
        my = mysql.insert(table)
        updates: Mapping[str, Any] = {c: my.inserted[c] for c in (others or [key])}
        return my.on_duplicate_key_update(updates)
    raise ValueError(f"no upsert for the {dialect} dialect")


# PyMySQL's CLIENT.LOCAL_FILES: a client_flag with it lets the server ask for files.
_LOCAL_FILES = 128


def _without_local_files(url: URL) -> URL:
    """The URL without `local_infile`, and without LOCAL_FILES in a `client_flag`."""
    query = {k: v for k, v in url.query.items() if k != "local_infile"}
    flag = query.get("client_flag")
    if isinstance(flag, str) and flag.strip().isdigit():
        query["client_flag"] = str(int(flag) & ~_LOCAL_FILES)
    return url.set(query=query)


def _hide_password(text: str) -> str:
    try:
        return make_url(text).render_as_string(hide_password=True)
    except Exception:
        return text.split("@")[-1]
