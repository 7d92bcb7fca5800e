"""Loading handlers: built-ins, entry points and `module:attribute` paths."""

from __future__ import annotations

import textwrap
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from batchd.worker import registry
from batchd.worker.handler import Handler, ItemContext
from batchd.worker.registry import HandlerLoadError, load_handlers, parse_import_paths

HANDLERS_MODULE = """
from batchd.worker.handler import Handler

async def _run(params, ctx):
    return {"custom_id": ctx.custom_id}

ONE = Handler(name="ext.one", run=_run, description="one")
MANY = [Handler(name="ext.two", run=_run), Handler(name="ext.three", run=_run)]

def factory():
    return Handler(name="ext.made", run=_run)

CLASH = Handler(name="noop", run=_run)
NOT_A_HANDLER = 42
"""


async def _run(params: dict[str, Any], ctx: ItemContext) -> Mapping[str, Any]:
    return {}


@pytest.fixture
def handlers_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    name = f"batchd_test_handlers_{tmp_path.name.replace('-', '_')}"
    (tmp_path / f"{name}.py").write_text(textwrap.dedent(HANDLERS_MODULE))
    monkeypatch.syspath_prepend(str(tmp_path))
    return name


def test_builtins_are_always_there() -> None:
    handlers = load_handlers()
    assert {"noop", "sleep", "http.request"} <= set(handlers)
    assert handlers["http.request"].default_options.chunk_size == 100
    assert handlers["http.request"].default_options.retry_policy.max_attempts == 5


def test_builtins_are_fresh_per_load() -> None:
    # http.request keeps a session: two workers in one process must not share it.
    assert load_handlers()["http.request"] is not load_handlers()["http.request"]


def test_import_paths_load_a_handler_a_list_and_a_factory(handlers_module: str) -> None:
    paths = f"{handlers_module}:ONE, {handlers_module}:MANY,{handlers_module}:factory"
    handlers = load_handlers(paths)
    assert {"ext.one", "ext.two", "ext.three", "ext.made"} <= set(handlers)
    assert handlers["ext.one"].description == "one"


def test_duplicate_names_are_an_error(handlers_module: str) -> None:
    with pytest.raises(HandlerLoadError, match=r"'noop'.*already defined by batchd\.worker"):
        load_handlers(f"{handlers_module}:CLASH")
    with pytest.raises(HandlerLoadError, match=r"'ext\.one'"):
        load_handlers(f"{handlers_module}:ONE,{handlers_module}:ONE")


def test_extra_handlers_clash_too() -> None:
    with pytest.raises(HandlerLoadError, match="'sleep'"):
        load_handlers("", [Handler(name="sleep", run=_run)])


@pytest.mark.parametrize(
    ("paths", "message"),
    [
        ("no_colon_here", "expected 'module:attribute'"),
        ("batchd_no_such_module_xyz:H", "No module named"),
        ("{module}:MISSING", "has no attribute 'MISSING'"),
        ("{module}:NOT_A_HANDLER", "got int"),
    ],
)
def test_bad_import_paths_are_errors(handlers_module: str, paths: str, message: str) -> None:
    with pytest.raises(HandlerLoadError, match=message):
        load_handlers(paths.format(module=handlers_module))


def test_parse_import_paths_skips_blanks() -> None:
    assert parse_import_paths(" a.b:c ,, d:e.f ") == ["a.b:c", "d:e.f"]


class _EntryPoint:
    def __init__(self, name: str, value: object) -> None:
        self.name, self.value, self._value = name, f"fake:{name}", value

    def load(self) -> object:
        return self._value


def test_entry_points_are_loaded(monkeypatch: pytest.MonkeyPatch) -> None:
    found = [
        _EntryPoint("single", Handler(name="ep.single", run=_run)),
        _EntryPoint("pair", (Handler(name="ep.a", run=_run), Handler(name="ep.b", run=_run))),
    ]

    def fake_entry_points(*, group: str) -> list[_EntryPoint]:
        assert group == "batchd.handlers"
        return found

    monkeypatch.setattr(registry, "entry_points", fake_entry_points)
    assert {"ep.single", "ep.a", "ep.b"} <= set(load_handlers())


def test_handler_names_are_checked() -> None:
    with pytest.raises(ValueError, match="handler name"):
        Handler(name="Bad Name", run=_run)


def test_specs_carry_what_the_server_needs() -> None:
    specs = {s.name: s for s in registry.specs(load_handlers())}
    assert specs["sleep"].params_schema["required"] == ["seconds"]
    assert specs["http.request"].default_options.chunk_size == 100
