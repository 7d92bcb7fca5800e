"""Per-row transform hooks of `record.migrate`.

A transform is a function of a row dict (column → value) that returns the row to write
(a dict, new or the same) or None to skip the row. The worker's operator registers
transforms; items name one of them, never an arbitrary import path:

- the `batchd.migrate.transforms` entry point group: an entry point's name is what
  items give (`to_cents = mypkg.transforms:to_cents`);
- the `migrate_transforms` setting (BATCHD_MIGRATE_TRANSFORMS): comma-separated
  `module:function` paths, which items give as they are.

The worker imports them at start; an item naming anything else is refused, and nothing
is imported because an item named it. Each must be declared with `row_transform`:

    from batchd.worker.handlers.migrate import row_transform

    @row_transform
    def cents(row):
        row["price_cents"] = int(row.pop("price") * 100)
        return row
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable
from importlib.metadata import entry_points
from typing import Any, TypeVar

__all__ = [
    "ENTRY_POINT_GROUP",
    "RowTransform",
    "TransformError",
    "load_transforms",
    "row_transform",
]

ENTRY_POINT_GROUP = "batchd.migrate.transforms"

RowTransform = Callable[[dict[str, Any]], dict[str, Any] | None]
F = TypeVar("F", bound=RowTransform)

_MARK = "__batchd_row_transform__"


def row_transform(function: F) -> F:
    """Declares `function` a transform that may be registered."""
    setattr(function, _MARK, True)
    return function


class TransformError(Exception):
    """A registered transform cannot be loaded: a start-up error of the worker."""


def load_transforms(paths: str) -> dict[str, RowTransform]:
    """The registered transforms by the name items give: the entry point group's, then
    the `module:function` paths of `paths` (comma-separated). Raises TransformError."""
    found: dict[str, RowTransform] = {}
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        try:
            obj = ep.load()
        except Exception as exc:
            raise TransformError(f"transform entry point {ep.name} ({ep.value}): {exc}") from exc
        found[ep.name] = _checked(obj, f"entry point {ep.name} ({ep.value})")
    for path in _split(paths):
        found[path] = _checked(_import(path), path)
    return found


def _split(paths: str) -> Iterable[str]:
    for part in paths.split(","):
        if part.strip():
            yield part.strip()


def _import(path: str) -> Any:
    module_name, sep, attribute = path.partition(":")
    if not (module_name and sep and attribute):
        raise TransformError(f"migrate_transforms: {path!r}: expected 'module:function'")
    try:
        obj: Any = importlib.import_module(module_name)
    except ImportError as exc:
        raise TransformError(f"transform {path!r}: cannot import {module_name}: {exc}") from exc
    for part in attribute.split("."):
        obj = getattr(obj, part, None)
    return obj


def _checked(obj: Any, source: str) -> RowTransform:
    if not callable(obj):
        raise TransformError(f"transform {source}: no such function")
    if not getattr(obj, _MARK, False):
        raise TransformError(
            f"transform {source} is not declared a transform: decorate it with "
            "batchd.worker.handlers.migrate.row_transform"
        )
    function: RowTransform = obj
    return function
