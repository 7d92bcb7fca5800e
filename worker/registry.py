"""Loading the handlers a worker serves.

Two sources, in this order: the entry points of group `batchd.handlers` of every
installed distribution — batchd's own first: its built-ins are registered the same way —
and the import paths of `Settings.handlers` ("module:attribute", comma-separated). Each
object found is a `Handler`, an iterable of them, or a zero-argument callable returning
either (a factory, for handlers that keep per-process state). Two handlers with one name
stop the worker at start-up: which one would run is otherwise an accident of
installation.

An entry point named after an extra of its distribution (batchd's `email`, `image`,
`migrate`) whose import fails for a module outside that distribution is an extra not
installed: its handlers are not served, and `on_missing` hears of it (by default a
warning naming the extra to install). Any other failure to load stops the worker.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, replace
from importlib.metadata import EntryPoint, entry_points
from typing import Any

from batchd.core.domain import HandlerSpec
from batchd.core.logs import get_logger
from batchd.worker.handler import Handler

__all__ = [
    "DISTRIBUTION",
    "ENTRY_POINT_GROUP",
    "HandlerLoadError",
    "MissingExtra",
    "OnMissing",
    "entry_point_handlers",
    "load_handlers",
    "parse_import_paths",
    "specs",
    "warn_missing_extra",
]

log = get_logger(__name__)

ENTRY_POINT_GROUP = "batchd.handlers"
# The distribution whose entry points are the built-ins, loaded before any other's.
DISTRIBUTION = "batchd"


class HandlerLoadError(Exception):
    """A handler source cannot be loaded, or two handlers share a name."""


@dataclass(frozen=True)
class MissingExtra:
    """An entry point not loaded because the extra its handlers need is not installed."""

    entry_point: str
    distribution: str
    extra: str
    module: str  # the module its import did not find

    @property
    def install(self) -> str:
        """The command that installs the extra."""
        return f"pip install '{self.distribution}[{self.extra}]'"


def warn_missing_extra(missing: MissingExtra) -> None:
    """The default of `on_missing`: one warning, naming the extra to install."""
    log.warning(
        "handlers_not_served",
        entry_point=missing.entry_point,
        missing_module=missing.module,
        extra=missing.extra,
        install=missing.install,
    )


OnMissing = Callable[[MissingExtra], None]


def load_handlers(
    import_paths: str = "",
    extra: Iterable[Handler] = (),
    *,
    on_missing: OnMissing = warn_missing_extra,
) -> dict[str, Handler]:
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

    for ep in _entry_points():
        add(*_load_entry_point(ep, on_missing))
    for path in parse_import_paths(import_paths):
        add(_handlers_of(_import(path), path), path)
    add(extra, "the caller")
    return found


def entry_point_handlers(
    *, distribution: str, on_missing: OnMissing = warn_missing_extra
) -> list[Handler]:
    """The handlers of one distribution's entry points, fresh (their factories called)."""
    handlers: list[Handler] = []
    for ep in _entry_points():
        if _distribution(ep) == distribution:
            handlers += _load_entry_point(ep, on_missing)[0]
    return handlers


def _entry_points() -> list[EntryPoint]:
    """The group's entry points, batchd's own first (a stable sort keeps their order)."""
    found = entry_points(group=ENTRY_POINT_GROUP)
    return sorted(found, key=lambda ep: _distribution(ep) != DISTRIBUTION)


def _load_entry_point(ep: EntryPoint, on_missing: OnMissing) -> tuple[list[Handler], str]:
    """The entry point's handlers and their source; none when its extra is missing."""
    source = f"{ep.value} (entry point {ep.name})"
    try:
        obj = ep.load()
    except ModuleNotFoundError as exc:
        missing = _missing_extra(ep, exc)
        if missing is None:
            raise HandlerLoadError(f"{source}: {exc}") from exc
        on_missing(missing)
        return [], source
    except Exception as exc:
        raise HandlerLoadError(f"{source}: {exc}") from exc
    return _handlers_of(obj, source), source


def _missing_extra(ep: EntryPoint, exc: ModuleNotFoundError) -> MissingExtra | None:
    """What `exc` means when the entry point is named after an extra of its distribution
    and the module not found is not the distribution's own (that would be a bug, not a
    missing dependency); None otherwise."""
    dist = getattr(ep, "dist", None)
    if dist is None or not exc.name:
        return None
    extras = dist.metadata.get_all("Provides-Extra") or []
    own = ep.value.partition(":")[0].split(".")[0]
    if ep.name not in extras or exc.name.split(".")[0] == own:
        return None
    return MissingExtra(ep.name, dist.name, ep.name, exc.name)


def _distribution(ep: EntryPoint) -> str | None:
    dist = getattr(ep, "dist", None)
    return None if dist is None else str(dist.name)


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
            # block_size 0 says "one item per call"; 1 or more, "takes blocks".
            default_options=replace(h.default_options, block_size=h.block_size),
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
