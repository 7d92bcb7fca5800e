"""batchd.core.fastjson gives json's answers, fast where orjson agrees with it."""

from __future__ import annotations

import datetime
import json
import math
from typing import Any

import pytest

from batchd.core import fastjson


@pytest.mark.parametrize(
    "data",
    [
        b'{"a":1,"b":[true,false,null],"c":"\\u00e9\xc3\xa9"}',
        b'{"big":123456789012345678901234567890}',  # orjson alone: a float
        b'{"n":-9223372036854775809}',
        b'{"x":NaN,"y":Infinity}',  # orjson alone: refused
        '{"s":"é"}',
        b"  [1.5e300, 0.1]  ",
    ],
)
def test_loads_reads_what_json_reads(data: bytes | str) -> None:
    got, want = fastjson.loads(data), json.loads(data)
    assert repr(got) == repr(want)  # repr: NaN != NaN, and 1 == 1.0 (a big int stays int)


@pytest.mark.parametrize("data", [b'{"a":', b"{'a':1}", b"", b'{"a":1} x'])
def test_loads_refuses_what_json_refuses(data: bytes) -> None:
    with pytest.raises(json.JSONDecodeError):
        fastjson.loads(data)


@pytest.mark.parametrize(
    "value",
    [
        {"a": 1, "b": [True, None], "c": "é\u2028"},
        {1: "int key"},  # orjson alone: refused
        {"big": 2**70},
        {"f": 0.1, "g": 1e16},
        {},
    ],
)
def test_dumps_writes_what_json_writes(value: Any) -> None:
    assert json.loads(fastjson.dumps(value)) == json.loads(json.dumps(value))


@pytest.mark.parametrize(
    ("value", "error"),
    [
        ({"x": math.nan}, ValueError),  # orjson alone: null
        ({"x": [math.inf]}, ValueError),
        ({"d": datetime.date(2026, 1, 1)}, TypeError),  # orjson alone: a string
        ({"s": {1, 2}}, TypeError),
    ],
)
def test_dumps_refuses_what_json_refuses(value: Any, error: type[Exception]) -> None:
    with pytest.raises(error):
        fastjson.dumps(value)
