"""What a database error means for a `record.migrate` item.

SQLAlchemy's exception classes alone do not tell: asyncpg reports a bad value or a
deadlock as a bare DBAPIError, PyMySQL (under aiomysql) reports MariaDB's CHECK failures
as an OperationalError, SQLite reports a missing table as one. So the driver's own code
decides where there is one — PostgreSQL's SQLSTATE, MySQL's error number, SQLite's
error name — and the class only where there is none:

    Kind.CONSTRAINT   unique, not null, check, foreign key    fail (after finding the key)
    Kind.DATA         a value the column cannot hold          fail (after finding the key)
    Kind.TRANSIENT    connection lost, deadlock, lock wait,   retry
                      serialization failure, pool timeout,
                      server shutting down, database busy
    Kind.NOT_FOUND    no such table                           fail, NOT_FOUND
    Kind.INVALID      no such column, bad SQL, bad URL        fail, INVALID_ARGUMENT
    Kind.DENIED       insufficient privilege                  fail, PERMISSION_DENIED
    Kind.UNKNOWN      anything else from the database         retry (it may pass)
"""

from __future__ import annotations

import enum

from sqlalchemy import exc as sa_exc

__all__ = ["CONNECT_FAILED", "Kind", "classify", "database_message", "is_connect_failure"]

# What an item learns when a database cannot be reached. The OS's words (refused, timed
# out, no route, unknown host) would tell a closed port from a filtered one.
CONNECT_FAILED = "cannot connect to the database"


class Kind(enum.Enum):
    CONSTRAINT = "constraint"
    DATA = "data"
    TRANSIENT = "transient"
    NOT_FOUND = "not_found"
    INVALID = "invalid"
    DENIED = "denied"
    UNKNOWN = "unknown"


# MySQL/MariaDB error numbers PyMySQL does not class as IntegrityError or DataError.
_MYSQL_CONSTRAINT = {1048, 1062, 1169, 1216, 1217, 1451, 1452, 1557, 3819, 4025}
_MYSQL_DATA = {1264, 1265, 1292, 1366, 1367, 1406, 1411, 1416, 3140}
_MYSQL_TRANSIENT = {1040, 1053, 1205, 1213, 1614, 2002, 2003, 2006, 2013, 2014, 2055}
_MYSQL_CONNECT = {2002, 2003, 2005, 2006, 2013}
_MYSQL_NOT_FOUND = {1051, 1146}
_MYSQL_INVALID = {1054, 1064, 1110, 1166}
_MYSQL_DENIED = {1044, 1045, 1142, 1143}

# PostgreSQL SQLSTATE classes (the first two characters).
_PG_CLASSES = {
    "23": Kind.CONSTRAINT,
    "22": Kind.DATA,
    "08": Kind.TRANSIENT,  # connection exception
    "40": Kind.TRANSIENT,  # serialization failure, deadlock
    "53": Kind.TRANSIENT,  # insufficient resources
    "55": Kind.TRANSIENT,  # lock not available
    "57": Kind.TRANSIENT,  # admin shutdown, cannot connect now
    "3D": Kind.NOT_FOUND,  # no such database
    "3F": Kind.NOT_FOUND,  # no such schema
    "42": Kind.INVALID,
}
_PG_CODES = {"42P01": Kind.NOT_FOUND, "42501": Kind.DENIED, "28000": Kind.DENIED}


def classify(error: BaseException) -> Kind:
    """The kind of a database failure (see the module docstring)."""
    if isinstance(error, sa_exc.NoSuchTableError):
        return Kind.NOT_FOUND
    if isinstance(error, sa_exc.ArgumentError | sa_exc.NoSuchModuleError):
        return Kind.INVALID
    if isinstance(error, sa_exc.TimeoutError | OSError | TimeoutError):
        return Kind.TRANSIENT  # the pool had no connection to give, or the network failed
    if not isinstance(error, sa_exc.DBAPIError):
        return Kind.UNKNOWN
    if error.connection_invalidated:
        return Kind.TRANSIENT
    by_code = _by_driver_code(error.orig)
    if by_code is not None:
        return by_code
    if isinstance(error, sa_exc.IntegrityError):
        return Kind.CONSTRAINT
    if isinstance(error, sa_exc.DataError):
        return Kind.DATA
    if isinstance(error, sa_exc.OperationalError | sa_exc.InterfaceError):
        return Kind.TRANSIENT
    if isinstance(error, sa_exc.ProgrammingError):
        return Kind.INVALID
    return Kind.UNKNOWN


def is_connect_failure(error: BaseException) -> bool:
    """Whether the error is the network's, not the database's: refused, unreachable,
    timed out, unknown host, connection lost."""
    orig = getattr(error, "orig", None) or error
    if isinstance(orig, OSError | TimeoutError) and not isinstance(orig, sa_exc.TimeoutError):
        return True
    if isinstance(error, sa_exc.DBAPIError) and isinstance(error.__cause__, OSError):
        return True
    args = getattr(orig, "args", ())
    if args and isinstance(args[0], int) and args[0] in _MYSQL_CONNECT:
        return True
    sqlstate = getattr(orig, "sqlstate", None)
    return isinstance(sqlstate, str) and sqlstate.startswith("08")


def database_message(error: BaseException) -> str:
    """The database's own message, on one line, without SQLAlchemy's SQL and parameters."""
    if isinstance(error, sa_exc.NoSuchTableError):
        return f"no such table {error}"
    orig = getattr(error, "orig", None) or error
    args: tuple[object, ...] = tuple(getattr(orig, "args", ()))
    # PyMySQL: (number, message); others: (message,).
    text = str(args[1]) if len(args) >= 2 and isinstance(args[0], int) else str(orig)
    text = text.split("\n")[0].strip()
    # The asyncpg adapter prefixes the driver class: "<class '...UniqueViolationError'>: ..."
    if text.startswith("<class ") and ">: " in text:
        text = text.split(">: ", 1)[1]
    return text


def _by_driver_code(orig: BaseException | None) -> Kind | None:
    if orig is None:
        return None
    sqlstate = getattr(orig, "sqlstate", None)  # asyncpg, through SQLAlchemy's adapter
    if isinstance(sqlstate, str) and len(sqlstate) == 5:
        return _PG_CODES.get(sqlstate) or _PG_CLASSES.get(sqlstate[:2], Kind.UNKNOWN)
    args = getattr(orig, "args", ())
    if args and isinstance(args[0], int):  # PyMySQL's error number
        return _mysql(args[0])
    name = getattr(orig, "sqlite_errorname", None)
    if isinstance(name, str):
        return _sqlite(name, str(orig))
    return None


def _mysql(number: int) -> Kind | None:
    for codes, kind in (
        (_MYSQL_CONSTRAINT, Kind.CONSTRAINT),
        (_MYSQL_DATA, Kind.DATA),
        (_MYSQL_TRANSIENT, Kind.TRANSIENT),
        (_MYSQL_NOT_FOUND, Kind.NOT_FOUND),
        (_MYSQL_INVALID, Kind.INVALID),
        (_MYSQL_DENIED, Kind.DENIED),
    ):
        if number in codes:
            return kind
    return None


def _sqlite(name: str, message: str) -> Kind:
    if name.startswith("SQLITE_CONSTRAINT"):
        return Kind.CONSTRAINT
    if name in ("SQLITE_MISMATCH", "SQLITE_TOOBIG", "SQLITE_RANGE"):
        return Kind.DATA
    if name.startswith(("SQLITE_BUSY", "SQLITE_LOCKED", "SQLITE_IOERR", "SQLITE_FULL")):
        return Kind.TRANSIENT
    if name.startswith("SQLITE_CANTOPEN"):
        return Kind.NOT_FOUND
    if name == "SQLITE_ERROR":
        # Missing tables and columns, and bad SQL, all come as SQLITE_ERROR.
        return Kind.NOT_FOUND if "no such table" in message else Kind.INVALID
    return Kind.UNKNOWN
