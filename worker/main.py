"""`batchd-worker`: one ARQ worker process.

SIGTERM/SIGINT stop it gracefully: it takes no new chunk, starts no new item, lets the
items in flight finish (for up to SHUTDOWN_GRACE seconds, then cancels them), records
their outcomes, puts its chunks back on the queue with the items not done, removes
itself from the catalog and exits.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence

from batchd.core.config import Settings
from batchd.core.gc_tuning import tune_gc
from batchd.core.logs import configure_logging
from batchd.worker.app import build_worker
from batchd.worker.registry import HandlerLoadError


def main(argv: Sequence[str] | None = None) -> None:
    settings = Settings.from_args(argv, description="batchd worker: runs the chunks of batches.")
    configure_logging(settings)
    asyncio.run(run(settings))


async def run(settings: Settings) -> None:
    try:
        worker = build_worker(settings, handle_signals=True)
    except (ValueError, HandlerLoadError) as exc:  # configuration: say so, no traceback
        raise SystemExit(f"batchd-worker: {exc}") from None
    tune_gc(settings.gc_threshold)  # with the handlers loaded: they live as long
    try:
        # A signal cancels the worker's main task (after the grace period): that ends
        # async_run with CancelledError, which is how ARQ's own Worker.run stops too.
        with contextlib.suppress(asyncio.CancelledError):
            await worker.async_run()
    finally:
        await worker.close()


if __name__ == "__main__":
    main()
