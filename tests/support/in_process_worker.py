"""A batchd worker inside the test's own process (support.processes.worker is the
subprocess one)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

from batchd.core.config import Settings
from batchd.worker.app import build_worker
from batchd.worker.arq_worker import BatchdWorker


@contextlib.asynccontextmanager
async def running_worker(settings: Settings, **options: Any) -> AsyncIterator[BatchdWorker]:
    """A worker built by `build_worker(settings, **options)`, yielded once it has
    started; cancelled and closed at the end."""
    worker = build_worker(settings, **options)
    task = asyncio.create_task(worker.async_run())
    try:
        await worker.started.wait()
        yield worker
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await worker.close()
