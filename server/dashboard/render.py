"""The dashboard's pages: Jinja2 templates shipped in the package, autoescaped (every
value a submitter controls — ids, labels, metadata, errors, handler names — is escaped
unless a template says otherwise, and none does), and the filters they format with."""

from __future__ import annotations

import time
from importlib import resources
from typing import Any

import jinja2
from google.rpc import code_pb2

from batchd.core.domain import BatchOptions

__all__ = ["asset", "environment"]

_PACKAGE = "batchd.server.dashboard"


def environment() -> jinja2.Environment:
    templates = resources.files(_PACKAGE) / "templates"
    sources = {
        entry.name: entry.read_text(encoding="utf-8")
        for entry in templates.iterdir()
        if entry.name.endswith(".html")
    }
    env = jinja2.Environment(
        loader=jinja2.DictLoader(sources),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(
        when=when,
        duration=duration,
        per_second=per_second,
        code_name=code_name,
        number=number,
        flat_options=flat_options,
    )
    return env


def asset(name: str) -> bytes:
    """A static file of the package (static/<name>)."""
    return (resources.files(_PACKAGE) / "static" / name).read_bytes()


def when(timestamp: float | None) -> str:
    """A Unix time in UTC, to the second; "—" for none."""
    if not timestamp:
        return "—"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(timestamp))


def duration(seconds: float | None) -> str:
    """Seconds as the two largest units ("2h 05m", "3m 07s", "4.2s"); "—" for none."""
    if seconds is None:
        return "—"
    if seconds < 60:
        return f"{seconds:.1f}s"
    whole = round(seconds)
    days, rest = divmod(whole, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d {hours:02d}h"
    if hours:
        return f"{hours}h {minutes:02d}m"
    return f"{minutes}m {secs:02d}s"


def per_second(rate: float | None) -> str:
    if rate is None:
        return "—"
    return f"{rate:,.1f}/s"


def number(value: Any) -> str:
    return f"{value:,}" if isinstance(value, int) else str(value)


def code_name(code: int) -> str:
    """A google.rpc code's name (ABORTED), or its number if unknown."""
    try:
        return str(code_pb2.Code.Name(code))
    except ValueError:
        return str(code)


def flat_options(options: BatchOptions) -> list[tuple[str, Any]]:
    """Options as (name, value), the retry policy's as retry_policy.<field>."""
    flat: list[tuple[str, Any]] = []
    for name, value in options.to_dict().items():
        if isinstance(value, dict):
            flat.extend((f"{name}.{inner}", v) for inner, v in value.items())
        else:
            flat.append((name, value))
    return flat
