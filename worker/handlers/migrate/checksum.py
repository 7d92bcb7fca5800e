"""Checksums of rows that compare equal across database engines.

A row's digest is the SHA-256 of a canonical text of its values, in column order; a set
of rows' checksum is the sum of its rows' digests modulo 2**256, as 64 hex digits. The
sum makes a checksum independent of row order, so two databases whose collations sort
string keys differently still agree, and additive: the checksums of a table's ranges add
up to the table's.

Each value is reduced to a type tag and a text, so that what two drivers return for the
same data reads the same:

    None                        N (and no text)
    bool, int, Decimal, float   n  the shortest plain decimal: True 1, Decimal("10.50")
                                   10.5, 10.0 10, -0 0; NaN and infinities by name
    str, UUID, Enum             s  the text (a UUID lowercased with hyphens; an enum's value)
    bytes                       b  hex digits
    datetime                    t  ISO 8601 with microseconds, no offset: an aware one is
                                   first converted to UTC (MariaDB's naive DATETIME and
                                   PostgreSQL's timestamptz in a UTC session agree)
    date, time                  t  ISO 8601 (times with microseconds)
    timedelta                   t  as a time of day when within one day (MySQL's driver
                                   returns TIME columns as timedelta), else "P<microseconds>"
    dict, list (JSON)           j  JSON with sorted keys, no spaces
    anything else               o  str(value)

So MariaDB's TINYINT(1) 1 equals PostgreSQL's true, and DECIMAL(10,2) 3.10 equals
NUMERIC(12,4) 3.1000. Not equalised: CHAR(n) padding (PostgreSQL keeps the trailing
spaces, MariaDB strips them), float rounding between FLOAT and DOUBLE columns, and a
value stored as text on one side and as a number on the other — a transform converts it.
"""

from __future__ import annotations

import datetime as dt
import enum
import hashlib
import json
import math
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from decimal import Decimal
from typing import Any

__all__ = ["CHECKSUM_MODULUS", "EMPTY_CHECKSUM", "canonical", "checksum", "combine", "row_digest"]

CHECKSUM_MODULUS = 1 << 256
EMPTY_CHECKSUM = f"{0:064x}"


def canonical(value: Any) -> str:
    """The tagged canonical text of one value (see the module docstring)."""
    # The common exact types first, by one dict lookup: this runs for every value of
    # every row, twice per item.
    fast = _BY_TYPE.get(type(value))
    if fast is not None:
        return fast(value)
    if value is None:
        return "N"
    if isinstance(value, bool):
        return "n1" if value else "n0"
    if isinstance(value, int):
        return f"n{value}"
    if isinstance(value, Decimal | float):
        return "n" + _number(value)
    if isinstance(value, str):
        return "s" + value
    if isinstance(value, uuid.UUID):
        return "s" + str(value)
    if isinstance(value, enum.Enum):
        return canonical(value.value)
    if isinstance(value, bytes | bytearray | memoryview):
        return "b" + bytes(value).hex()
    if isinstance(value, dt.datetime):
        return _datetime(value)
    if isinstance(value, dt.date):
        return "t" + value.isoformat()
    if isinstance(value, dt.time):
        return "t" + value.replace(tzinfo=None).isoformat(timespec="microseconds")
    if isinstance(value, dt.timedelta):
        return "t" + _duration(value)
    if isinstance(value, dict | list):
        return "j" + json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)
    return "o" + str(value)


def row_digest(values: Iterable[Any]) -> int:
    """A row's digest: SHA-256 of its canonical values, as an integer."""
    # Each text prefixed with its length: unambiguous whatever characters it holds.
    text = "".join(f"{len(c)}:{c}" for c in map(canonical, values))
    return int.from_bytes(hashlib.sha256(text.encode()).digest(), "big")


def checksum(rows: Iterable[Mapping[str, Any]], columns: Sequence[str]) -> str:
    """The checksum of `rows` over `columns` (in that order), 64 hex digits."""
    total = sum(row_digest(row[c] for c in columns) for row in rows) % CHECKSUM_MODULUS
    return f"{total:064x}"


def combine(checksums: Iterable[str]) -> str:
    """The checksum of the union of disjoint row sets, from theirs (e.g. a table's from
    its ranges')."""
    return f"{sum(int(c, 16) for c in checksums) % CHECKSUM_MODULUS:064x}"


def _number(value: Decimal | float) -> str:
    if isinstance(value, float):
        if not math.isfinite(value):
            return str(value)  # nan, inf, -inf
        value = Decimal(repr(value))  # the shortest text that reads back as this float
    if not value.is_finite():
        return str(value).lower().replace("infinity", "inf")
    if value.is_zero():
        return "0"
    return format(value.normalize(), "f")


def _datetime(value: dt.datetime) -> str:
    if value.tzinfo is not None:
        value = value.astimezone(dt.UTC).replace(tzinfo=None)
    return "t" + value.isoformat(timespec="microseconds")


def _duration(value: dt.timedelta) -> str:
    if dt.timedelta(0) <= value < dt.timedelta(days=1):
        return (dt.datetime.min + value).time().isoformat(timespec="microseconds")
    return f"P{value // dt.timedelta(microseconds=1)}"


_BY_TYPE: dict[type, Callable[[Any], str]] = {
    type(None): lambda v: "N",
    int: lambda v: f"n{v}",
    str: lambda v: "s" + v,
    Decimal: lambda v: "n" + _number(v),
    float: lambda v: "n" + _number(v),
    bool: lambda v: "n1" if v else "n0",
    dt.datetime: _datetime,
    dt.date: lambda v: "t" + v.isoformat(),
}
