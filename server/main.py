"""`batchd-server`: the gRPC server alone, against an existing Redis."""

from __future__ import annotations

import asyncio
import signal
import sys
from collections.abc import Sequence

from batchd.core.config import Settings
from batchd.core.gc_tuning import tune_gc
from batchd.core.logs import configure_logging, get_logger
from batchd.server.app import start_server

log = get_logger(__name__)


async def serve(settings: Settings, stop: asyncio.Event | None = None) -> None:
    """Serves until SIGTERM/SIGINT (or `stop`), then shuts down gracefully."""
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    server = await start_server(settings)
    await stop.wait()
    log.info("server_stopping")
    await server.stop()


def main(argv: Sequence[str] | None = None) -> None:
    settings = Settings.from_args(argv, description="The batchd gRPC server.")
    configure_logging(settings)
    if not settings.redis_url:
        sys.exit(
            "batchd-server needs a Redis: set BATCHD_REDIS_URL or --redis-url "
            "(or run batchd-service, which starts an embedded one)"
        )
    tune_gc(settings.gc_threshold)
    asyncio.run(serve(settings))


if __name__ == "__main__":
    main()
