"""Loading the handlers a worker serves.

Three sources, in this order: the built-ins (`batchd.worker.handlers`), the entry points
of group `batchd.handlers` of every installed distribution, and the import paths of
`Settings.handlers` ("module:attribute", comma-separated). Each object found is a
`Handler`, an iterable of them, or a zero-argument callable returning either (a factory,
for handlers that keep per-process state). Two handlers with one name stop the worker at
start-up: which one would run is otherwise an accident of installation.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterable, Iterator, Mapping
from importlib.metadata import entry_points
from typing import Any

from batchd.core.domain import HandlerSpec
from batchd.worker.handler import Handler
from batchd.worker.handlers import builtin_handlers

__all__ = ["ENTRY_POINT_GROUP", "HandlerLoadError", "load_handlers", "parse_import_paths", "specs"]

ENTRY_POINT_GROUP = "batchd.handlers"


class HandlerLoadError(Exception):
    """A handler source cannot be loaded, or two handlers share a name."""


def load_handlers(import_paths: str = "", extra: Iterable[Handler] = ()) -> dict[str, Handler]:
    """Every handler this worker serves, by name. `extra` come last (in-process use)."""
    found: dict[str, Handler] = {}
    origin: dict[str, str] = {}

    def add(handlers: Iterable[Handler], source: str) -> None:
        for handler in handlers:
            if handler.name in found:
                raise HandlerLoadError(
                    f"handler {handler.name!r} from {source} is already defined by "
                    f"{origin[handler.name]}"
                )
            found[handler.name] = handler
            origin[handler.name] = source

    add(builtin_handlers(), "batchd.worker.handlers")
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        source = f"entry point {ep.name} ({ep.value})"
        try:
            obj = ep.load()
        except Exception as exc:
            raise HandlerLoadError(f"{source}: {exc}") from exc
        add(_handlers_of(obj, source), source)
    for path in parse_import_paths(import_paths):
        add(_handlers_of(_import(path), path), path)
    add(extra, "the caller")
    return found


def parse_import_paths(value: str) -> list[str]:
    """'a.b:x, c:y' -> ['a.b:x', 'c:y']; each must name a module and an attribute."""
    paths = [part.strip() for part in value.split(",") if part.strip()]
    for path in paths:
        module, sep, attribute = path.partition(":")
        if not (module and sep and attribute):
            raise HandlerLoadError(f"handler path {path!r}: expected 'module:attribute'")
    return paths


def specs(handlers: Mapping[str, Handler]) -> list[HandlerSpec]:
    """What a worker publishes about its handlers."""
    return [
        HandlerSpec(
            name=h.name,
            description=h.description,
            params_schema=h.params_schema,
            default_options=h.default_options,
        )
        for h in handlers.values()
    ]


def _import(path: str) -> object:
    module_name, _, attribute = path.partition(":")
    try:
        obj: object = importlib.import_module(module_name)
        for part in attribute.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError) as exc:
        raise HandlerLoadError(f"handler path {path!r}: {exc}") from exc
    return obj


def _handlers_of(obj: object, source: str) -> list[Handler]:
    if callable(obj) and not isinstance(obj, Handler):
        try:
            obj = obj()
        except Exception as exc:
            raise HandlerLoadError(f"{source}: handler factory failed: {exc}") from exc
    if isinstance(obj, Handler):
        return [obj]
    if isinstance(obj, Iterable) and not isinstance(obj, str | bytes | Mapping):
        return list(_check(obj, source))
    raise HandlerLoadError(
        f"{source}: expected a Handler, an iterable of Handlers or a factory of either, "
        f"got {type(obj).__name__}"
    )


def _check(items: Iterable[Any], source: str) -> Iterator[Handler]:
    for item in items:
        if not isinstance(item, Handler):
            raise HandlerLoadError(f"{source}: {type(item).__name__} is not a Handler")
        yield item
