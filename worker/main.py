"""`batchd-worker`: one ARQ worker process.

SIGTERM/SIGINT stop it gracefully: it takes no new chunk, starts no new item, lets the
items in flight finish (for up to the shutdown grace, then cancels them), records their
outcomes, puts its chunks back on the queue with the items not done, removes itself from
the catalog and exits. Only the first signal counts: under a terminal the worker gets
Ctrl-C's SIGINT directly and batchd-service's SIGTERM after it, and both mean "stop".

The settings it takes are the worker's own and those the handlers it loads declare
(`Handler.settings`), so the handlers are loaded first, from `--handlers` or
BATCHD_HANDLERS, and then the command line is read.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from batchd.core.config import SettingError, Settings, suggestion, unknown_variables
from batchd.core.gc_tuning import tune_gc
from batchd.core.logs import configure_logging, get_logger
from batchd.core.redis_access import redis_access_problem
from batchd.core.tracing import tracing_from_env
from batchd.worker.app import build_worker
from batchd.worker.handler import Handler
from batchd.worker.registry import (
    HandlerLoadError,
    MissingExtra,
    OnMissing,
    load_handlers,
    warn_missing_extra,
)

if TYPE_CHECKING:
    from batchd.core.otel import Tracing

log = get_logger(__name__)

COMMAND = "batchd-worker"
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


def main(argv: Sequence[str] | None = None) -> None:
    try:
        missing: list[MissingExtra] = []  # told once the logs are configured
        handlers, settings = configure(argv, on_missing=missing.append)
        configure_logging(settings)
        for extra in missing:
            warn_missing_extra(extra)
        warn_unknown_variables(os.environ, handlers)
        tracing = tracing_from_env(COMMAND)
        if tracing is not None:
            tracing.install_global()
        try:
            with asyncio.Runner(loop_factory=loop_factory(settings.worker_event_loop)) as runner:
                runner.run(run(settings, handlers, tracing))
        finally:
            if tracing is not None:
                tracing.shutdown()  # the spans still buffered
    except KeyboardInterrupt:  # Ctrl-C before the worker's own handlers were in place
        sys.exit(128 + signal.SIGINT)


def loop_factory(name: str) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """The event loop BATCHD_WORKER_EVENT_LOOP names: uvloop's (libuv's: a worker spends
    about half the CPU per item on asyncio's own machinery, docs/performance.md), the
    standard library's (None: asyncio's default), or uvloop's where it is installed."""
    if name in ("uvloop", "auto"):
        try:
            import uvloop
        except ImportError:
            if name == "auto":
                return None
            raise SystemExit(
                f"{COMMAND}: BATCHD_WORKER_EVENT_LOOP=uvloop, but uvloop is not installed"
            ) from None
        new_event_loop: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
        return new_event_loop
    if name == "asyncio":
        return None
    raise SystemExit(
        f"{COMMAND}: BATCHD_WORKER_EVENT_LOOP={name!r}: expected auto, uvloop or asyncio"
    )


def configure(
    argv: Sequence[str] | None = None,
    env: Mapping[str, str] | None = None,
    on_missing: OnMissing = warn_missing_extra,
) -> tuple[dict[str, Handler], Settings]:
    """The handlers to serve and the settings, theirs included; a configuration error
    exits with a message (argparse's usage errors exit 2). A handler whose extra is not
    installed is not served: `on_missing` hears of it."""
    env = os.environ if env is None else env
    first = argparse.ArgumentParser(add_help=False)
    first.add_argument("--handlers", default=None)
    known, _ = first.parse_known_args(argv)
    import_paths = known.handlers if known.handlers is not None else env.get("BATCHD_HANDLERS", "")
    try:
        handlers = load_handlers(import_paths, on_missing=on_missing)
        sections = _sections(handlers)
        settings = Settings.from_args(
            argv,
            command=COMMAND,
            description="batchd worker: runs the chunks of batches.",
            sections=sections,
        )
    except (HandlerLoadError, SettingError) as exc:
        raise SystemExit(f"{COMMAND}: {exc}") from None
    return handlers, settings


def warn_unknown_variables(env: Mapping[str, str], handlers: Mapping[str, Handler]) -> None:
    """Warns once about each BATCHD_* variable that nothing reads: a misspelt name would
    otherwise be ignored without a word. The worker knows every name (its own, the
    server's, its handlers'), so it names them all."""
    sections = _sections(handlers)
    for variable in unknown_variables(env, sections):
        log.warning(
            "unknown_variable", variable=variable, did_you_mean=suggestion(variable, sections)
        )


def _sections(handlers: Mapping[str, Handler]) -> list[type[Any]]:
    return [h.settings for h in handlers.values() if h.settings is not None]


async def run(
    settings: Settings,
    handlers: Mapping[str, Handler] | None = None,
    tracing: Tracing | None = None,
) -> None:
    try:
        worker = build_worker(settings, handlers=handlers, handle_signals=True, tracing=tracing)
    except (ValueError, HandlerLoadError) as exc:  # configuration: say so, no traceback
        raise SystemExit(f"{COMMAND}: {exc}") from None
    problem = await redis_access_problem(settings.redis_url)  # an outage is waited out
    if problem:
        raise SystemExit(f"{COMMAND}: {problem}")
    tune_gc(settings.gc_threshold)  # with the handlers loaded: they live as long
    try:
        # A signal cancels the worker's main task (after the grace period): that ends
        # async_run with CancelledError, which is how ARQ's own Worker.run stops too.
        with contextlib.suppress(asyncio.CancelledError):
            await worker.async_run()
    except SettingError as exc:  # a handler's start-up found its settings wrong
        raise SystemExit(f"{COMMAND}: {exc}") from None
    finally:
        await worker.close()
        _ignore_late_signals()


def _ignore_late_signals() -> None:
    """Once closed, the worker has nothing left to stop: a signal arriving while the
    process exits (batchd-service's SIGTERM after a terminal's SIGINT) is ignored rather
    than left to the default action, which would kill it with a signal status."""
    loop = asyncio.get_running_loop()
    for signum in STOP_SIGNALS:
        loop.remove_signal_handler(signum)
        signal.signal(signum, signal.SIG_IGN)


if __name__ == "__main__":
    main()
