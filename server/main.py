"""`batchd-server`: the gRPC server alone, against an existing Redis."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from batchd.core.config import SettingError, Settings, suggestion, unknown_variables
from batchd.core.gc_tuning import tune_gc
from batchd.core.logs import configure_logging, get_logger
from batchd.core.tracing import tracing_from_env
from batchd.server.app import start_server

if TYPE_CHECKING:
    from batchd.core.otel import Tracing

log = get_logger(__name__)


async def serve(
    settings: Settings, stop: asyncio.Event | None = None, tracing: Tracing | None = None
) -> None:
    """Serves until SIGTERM/SIGINT (or `stop`), then shuts down gracefully."""
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    server = await start_server(settings, tracing=tracing)
    await stop.wait()
    log.info("server_stopping")
    await server.stop(drain_delay=settings.drain_delay)


def main(argv: Sequence[str] | None = None) -> None:
    settings = Settings.from_args(
        argv, command="batchd-server", description="The batchd gRPC server."
    )
    configure_logging(settings)
    warn_misspelt_variables(os.environ)
    if not settings.redis_url:
        sys.exit(
            "batchd-server needs a Redis: set BATCHD_REDIS_URL or --redis-url "
            "(or run batchd-service, which starts an embedded one)"
        )
    tune_gc(settings.gc_threshold)
    tracing = tracing_from_env("batchd-server")
    if tracing is not None:
        tracing.install_global()
    try:
        asyncio.run(serve(settings, tracing=tracing))
    except SettingError as exc:  # refused to start: say why in one line
        sys.exit(f"batchd-server: {exc}")
    finally:
        if tracing is not None:
            tracing.shutdown()


def warn_misspelt_variables(env: Mapping[str, str]) -> None:
    """Warns once about each BATCHD_* variable that looks like a misspelt setting. The
    server loads no handlers, so it cannot tell the workers' handler settings
    (BATCHD_SMTP_URL, a third-party handler's) from other names: those it leaves to the
    workers, which check every name."""
    for variable in unknown_variables(env, all_known=False):
        log.warning("unknown_variable", variable=variable, did_you_mean=suggestion(variable))


if __name__ == "__main__":
    main()
