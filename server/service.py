"""`batchd-service`: the whole service in one command — server, a worker, and (with no
Redis URL) an embedded Redis whose data stays under the data directory.

The worker runs as a child process (`batchd-worker`), as it would in production, so the
server never imports worker code.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from batchd.core.config import Settings
from batchd.core.embedded_redis import EmbeddedRedis
from batchd.core.gc_tuning import tune_gc
from batchd.core.logs import configure_logging, get_logger
from batchd.server.main import serve

log = get_logger(__name__)


def main(argv: Sequence[str] | None = None) -> None:
    settings = Settings.from_args(argv, description="batchd: server, worker and Redis.")
    configure_logging(settings)
    embedded: EmbeddedRedis | None = None
    if not settings.redis_url:
        embedded = EmbeddedRedis(Path(settings.data_dir) / "redis")
        embedded.start()
        settings = dataclasses.replace(settings, redis_url=embedded.url)
    worker = _start_worker(settings)
    tune_gc(settings.gc_threshold)
    try:
        asyncio.run(serve(settings))
    finally:
        worker.terminate()  # SIGTERM: the worker finishes the items in hand
        try:
            worker.wait(30)
        except subprocess.TimeoutExpired:
            worker.kill()
        if embedded is not None:
            embedded.stop()


def _start_worker(settings: Settings) -> subprocess.Popen[bytes]:
    env = dict(os.environ)
    for field in dataclasses.fields(settings):
        env[f"BATCHD_{field.name.upper()}"] = str(getattr(settings, field.name))
    command = [sys.executable, "-m", "batchd.worker.main"]
    log.info("worker_starting", command=" ".join(command))
    return subprocess.Popen(command, env=env, stdin=subprocess.DEVNULL)


if __name__ == "__main__":
    main()
