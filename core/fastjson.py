"""JSON for the per-item path: orjson where it gives json's answer, json where it might not.

A worker decodes every item's params and encodes every output, and for a small object
orjson does either many times faster than json (docs/performance.md). It differs from
json at the edges: it refuses integers beyond 64 bits, non-string keys and the
NaN/Infinity literals json reads, and it writes NaN and the infinities as null where
json (allow_nan=False) refuses them.
So each function tries orjson and falls back to json wherever the two could disagree:
the result is json's, except that orjson also writes enums and UUIDs, which json refuses.
"""

from __future__ import annotations

import json
import re
from typing import Any, Final

import orjson

__all__ = ["dumps", "loads"]

# Datetimes, dataclasses and subclasses of str/int/dict/list: orjson would write them;
# with these options it raises instead, and json decides (it refuses all but the last).
_STRICT: Final = (
    orjson.OPT_PASSTHROUGH_DATETIME
    | orjson.OPT_PASSTHROUGH_DATACLASS
    | orjson.OPT_PASSTHROUGH_SUBCLASS
)
# Nineteen digits in a row may be an integer orjson would read as a float.
_LONG_NUMBER: Final = re.compile(rb"[0-9]{19}")
_JSON_ENCODER: Final = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def loads(data: bytes | str) -> Any:
    """`json.loads(data)`; raises ValueError for what is not JSON."""
    if isinstance(data, str):
        data = data.encode()
    if _LONG_NUMBER.search(data) is None:
        try:
            return orjson.loads(data)
        except orjson.JSONDecodeError:
            pass  # NaN, Infinity: json's verdict
    return json.loads(data)


def dumps(value: Any) -> bytes:
    """Compact UTF-8 JSON of `value`, as json.dumps(..., allow_nan=False) writes it;
    raises TypeError or ValueError for what json refuses."""
    try:
        encoded = orjson.dumps(value, option=_STRICT)
    except TypeError:
        encoded = None
    if encoded is None or b"null" in encoded:  # a null may have been a NaN
        return _JSON_ENCODER.encode(value).encode()
    return encoded
