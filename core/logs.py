"""structlog set-up: JSON lines in production, readable output on a terminal.

The chain follows structlog's production recipe: context variables merged first (so a
request binds `rpc` and `batch_id` once), ISO UTC timestamps, cached loggers.
"""

from __future__ import annotations

import logging
import sys
from typing import TextIO

import structlog

from batchd.core.config import Settings


def configure_logging(settings: Settings, stream: TextIO | None = None) -> None:
    """Sets up structlog and the stdlib root logger to write to `stream` (stderr)."""
    stream = stream or sys.stderr
    use_json = settings.log_format == "json" or (
        settings.log_format == "auto" and not stream.isatty()
    )
    renderer: structlog.typing.Processor = (
        structlog.processors.JSONRenderer()
        if use_json
        else structlog.dev.ConsoleRenderer(colors=stream.isatty())
    )
    level = logging.getLevelNamesMapping().get(settings.log_level.upper(), logging.INFO)
    shared: list[structlog.typing.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    _route_stdlib_logging(shared, renderer, level, stream)
    structlog.configure(
        processors=[*shared, structlog.processors.format_exc_info, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.PrintLoggerFactory(file=stream),
        cache_logger_on_first_use=True,
    )


def _route_stdlib_logging(
    shared: list[structlog.typing.Processor],
    renderer: structlog.typing.Processor,
    level: int,
    stream: TextIO,
) -> None:
    """Libraries (arq, grpc, aiohttp) log through the stdlib: give their records the same
    shape and destination as ours."""
    handler = logging.StreamHandler(stream)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[*shared, structlog.stdlib.add_logger_name],
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # arq logs every job at INFO; our chunk_claimed/chunk_done say more, once.
    logging.getLogger("arq.worker").setLevel(max(level, logging.WARNING))


def get_logger(name: str) -> structlog.typing.FilteringBoundLogger:
    logger: structlog.typing.FilteringBoundLogger = structlog.get_logger(name)
    return logger
