"""A handler's params schema written as a type: a TypedDict or a dataclass becomes the
JSON Schema the server checks every item against."""

from __future__ import annotations

import dataclasses
import sys
from typing import Any, Literal, NotRequired

import grpc
import pytest
from typing_extensions import TypedDict  # pydantic needs this one on Python 3.11

from batchd.client import BatchdError
from batchd.testing import params_violations, serve_handlers
from batchd.worker import Handler, ItemContext, handler, schema_of


class Address(TypedDict):
    city: str
    zip: NotRequired[str]


class Geocode(TypedDict):
    address: Address
    precision: Literal["street", "city"]
    attempts: NotRequired[int]


@handler("geo.lookup", params_schema=Geocode)
async def geo_lookup(params: dict[str, Any], ctx: ItemContext) -> dict[str, Any]:
    """Geocodes an address."""
    return {"city": params["address"]["city"]}


@dataclasses.dataclass
class Resize:
    width: int
    height: int = 100


def test_a_typeddict_gives_its_keys_types_and_required_ones() -> None:
    ok = {"address": {"city": "Oslo"}, "precision": "city"}
    assert params_violations(geo_lookup, ok) == []
    assert params_violations(geo_lookup, {**ok, "attempts": 2}) == []  # NotRequired
    cases: list[tuple[dict[str, Any], str]] = [
        ({**ok, "precision": "house"}, "items[0].params.precision"),  # not in the Literal
        ({**ok, "attempts": "2"}, "items[0].params.attempts"),
        ({"address": {"zip": "0150"}, "precision": "city"}, "items[0].params.address"),
        ({"precision": "city"}, "items[0].params"),  # address is required
    ]
    for wrong, field in cases:
        assert [v.field for v in params_violations(geo_lookup, wrong)] == [field], wrong


def test_a_dataclass_gives_required_fields_and_defaults() -> None:
    resize = Handler(name="img.fit", run=geo_lookup.run, params_schema=schema_of(Resize))
    assert params_violations(resize, {"width": 10}) == []
    assert params_violations(resize, {"height": 10}) != []  # width is required
    assert params_violations(resize, {"width": "wide"}) != []


async def test_the_server_refuses_what_the_type_refuses() -> None:
    async with serve_handlers(geo_lookup, builtins=False) as service:
        run = await service.run_batch(
            "geo.lookup", [("ok", {"address": {"city": "Oslo"}, "precision": "city"})]
        )
        assert run.outputs == {"ok": {"city": "Oslo"}}
        with pytest.raises(BatchdError) as caught:
            await service.run_batch("geo.lookup", [("bad", {"precision": "city"})])
    assert caught.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert [v.field for v in caught.value.field_violations] == ["items[0].params"]


def test_without_pydantic_the_error_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pydantic", None)  # as if not installed
    with pytest.raises(ImportError, match=r"pip install 'batchd\[schema\]'"):
        schema_of(Resize)
