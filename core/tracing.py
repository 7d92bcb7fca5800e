"""Whether a process traces, decided once at start from the standard OTEL_* variables
(docs/operations.md, "Traces").

Tracing is off unless OTEL_TRACES_EXPORTER names an exporter other than `none` (and
OTEL_SDK_DISABLED is not `true`): unlike the SDK's own default (`otlp`), an unset
variable means off, so that a service nobody asked to trace sends nothing anywhere.
On, the process builds one `batchd.core.otel.Tracing` and hands it down to its server or
worker; off, or without the `otel` extra installed (said once, at start), it hands
down None and no OpenTelemetry module is imported.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Mapping
from typing import TYPE_CHECKING

from batchd.core.logs import get_logger

if TYPE_CHECKING:
    from batchd.core.otel import Tracing

__all__ = ["exporters_asked", "tracing_from_env"]

log = get_logger(__name__)

EXPORTERS_VARIABLE = "OTEL_TRACES_EXPORTER"
DISABLED_VARIABLE = "OTEL_SDK_DISABLED"


def exporters_asked(environ: Mapping[str, str]) -> list[str]:
    """The trace exporters the variables name; none: tracing is off."""
    if environ.get(DISABLED_VARIABLE, "").strip().lower() == "true":
        return []
    names = [name.strip() for name in environ.get(EXPORTERS_VARIABLE, "").split(",")]
    if "none" in names:
        return []
    return [name for name in names if name]


def tracing_from_env(service_name: str, environ: Mapping[str, str] | None = None) -> Tracing | None:
    """The process's tracing, if the variables ask for it and it can be had; None
    otherwise. `service_name`: the default of OTEL_SERVICE_NAME (the command's name).
    Call it once per process, then `install_global()` on what it returns."""
    environ = os.environ if environ is None else environ
    exporters = exporters_asked(environ)
    if not exporters:
        return None
    try:
        otel = importlib.import_module("batchd.core.otel")  # the otel extra, when asked for
    except ImportError as exc:
        log.warning(
            "tracing_unavailable",
            reason=f"{EXPORTERS_VARIABLE} asks for traces, but {exc.name or exc} is not installed",
            install="pip install 'batchd[otel]'",
        )
        return None
    tracing: Tracing | None = otel.from_env(service_name, exporters, environ)
    return tracing
