"""Per-row transform hooks of `record.migrate`.

A transform is a function of a row dict (column → value) that returns the row to write
(a dict, new or the same) or None to skip the row. Items name it by import path,
"module:function", resolved on the worker and cached there.

Items come from whoever may submit batches, so the named object must have been declared
a transform with the `row_transform` decorator: a path to any other callable (say
`subprocess:run`) is refused before it is called.

    from batchd.worker.handlers.migrate_transform import row_transform

    @row_transform
    def cents(row):
        row["price_cents"] = int(row.pop("price") * 100)
        return row
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any, TypeVar

__all__ = ["RowTransform", "TransformCache", "TransformError", "row_transform"]

RowTransform = Callable[[dict[str, Any]], dict[str, Any] | None]
F = TypeVar("F", bound=RowTransform)

_MARK = "__batchd_row_transform__"


def row_transform(function: F) -> F:
    """Declares `function` a transform that items may name."""
    setattr(function, _MARK, True)
    return function


class TransformError(Exception):
    """The path names no importable transform."""


class TransformCache:
    """Transforms by import path, imported once per worker process."""

    def __init__(self) -> None:
        self._found: dict[str, RowTransform] = {}

    def get(self, path: str) -> RowTransform:
        found = self._found.get(path)
        if found is None:
            found = self._found[path] = _resolve(path)
        return found


def _resolve(path: str) -> RowTransform:
    module_name, sep, attribute = path.partition(":")
    if not (module_name and sep and attribute):
        raise TransformError(f"transform {path!r}: expected 'module:function'")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise TransformError(f"transform {path!r}: cannot import {module_name}: {exc}") from exc
    obj: Any = module
    for part in attribute.split("."):
        obj = getattr(obj, part, None)
    if not callable(obj):
        raise TransformError(f"transform {path!r}: no such function")
    if not getattr(obj, _MARK, False):
        raise TransformError(
            f"transform {path!r} is not declared a transform: decorate it with "
            "batchd.worker.handlers.migrate_transform.row_transform"
        )
    function: RowTransform = obj
    return function
