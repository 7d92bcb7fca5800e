"""`batchd-service`: the whole service in one command — server, a worker, and (with no
Redis URL) an embedded Redis whose data stays under the data directory.

The worker runs as a child process (`batchd-worker`), as it would in production, so the
server never imports worker code; flags this command does not know (a handler's, such as
`--smtp-url`) are passed on to it, and it checks them. The embedded Redis asks for a
password; its URL, password in it, is written to `redis/url` in its directory
(owner-only), which is how a worker added beside the service finds it:
`BATCHD_REDIS_URL="$(cat .data/redis/url)" batchd-worker`. How it stops (server, then
worker, then Redis): docs/design.md, "Stopping batchd-service".
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import shlex
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from batchd.core.config import SettingError, Settings
from batchd.core.embedded_redis import PASSWORD_NAME, SOCKET_NAME, EmbeddedRedis
from batchd.core.gc_tuning import tune_gc
from batchd.core.logs import configure_logging, get_logger
from batchd.core.tracing import tracing_from_env
from batchd.server.app import start_server
from batchd.server.auth import exposure_problem

if TYPE_CHECKING:
    from batchd.core.otel import Tracing

log = get_logger(__name__)

COMMAND = "batchd-service"
# The file under the embedded Redis's directory that holds its URL, password included.
URL_NAME = "url"
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
# How long the worker may take to drain after SIGTERM before it is killed: more than its
# own shutdown grace (the jobs in hand), so that it is never cut short while recording.
WORKER_STOP_TIMEOUT = 30.0

_EPILOG = (
    "Other flags (the settings of the worker's handlers, such as --smtp-url, --databases, "
    "--image-processes: see batchd-worker --help) are passed on to the worker."
)


def main(argv: Sequence[str] | None = None) -> None:
    settings, worker_args = Settings.parse_args(
        argv,
        command=COMMAND,
        description="batchd: server, worker and Redis.",
        epilog=_EPILOG,
        pass_unknown=True,
    )
    configure_logging(settings)
    try:
        sys.exit(_run(settings, worker_args))
    except KeyboardInterrupt:  # Ctrl-C while starting, before the signal handlers
        sys.exit(128 + signal.SIGINT)


def _run(settings: Settings, worker_args: list[str]) -> int:
    embedded: EmbeddedRedis | None = None
    try:
        problem = exposure_problem(settings) or _listener_clash(settings)  # before anything starts
        if problem:
            raise SettingError(problem)
        if not settings.redis_url:
            redis_dir = settings.data_path / "redis"
            # Started from the main thread: on Linux it is stopped if this thread dies.
            embedded = EmbeddedRedis(
                redis_dir,
                unix_socket=redis_dir / SOCKET_NAME,
                own_session=True,
                password_file=redis_dir / PASSWORD_NAME,
            )
            try:
                embedded.start()
                url_file = _write_url_file(redis_dir / URL_NAME, embedded.url)
            except (RuntimeError, OSError) as exc:
                raise SystemExit(f"{COMMAND}: {exc}") from None
            settings = dataclasses.replace(settings, redis_url=embedded.url)
            _announce(embedded.address, url_file)
        tune_gc(settings.gc_threshold)
        # The server's; its worker, a process of its own, reads the same variables.
        tracing = tracing_from_env("batchd-server")
        if tracing is not None:
            tracing.install_global()
        try:
            return asyncio.run(_serve(settings, worker_args, tracing))
        finally:
            if tracing is not None:
                tracing.shutdown()
    except SettingError as exc:  # refused to start: say why in one line
        raise SystemExit(f"{COMMAND}: {exc}") from None
    finally:
        if embedded is not None:  # last: the server and the worker needed it to the end
            embedded.stop()
            log.info("embedded_redis_stopped", url=embedded.address)


def _listener_clash(settings: Settings) -> str | None:
    """The server's and the worker's /metrics listeners on one port: say so at once."""
    port = settings.metrics_port
    if port > 0 and port == settings.worker_metrics_port:
        return (
            f"--metrics-port and --worker-metrics-port are both {port}: the server and "
            "its worker each need a port of their own"
        )
    return None


def _write_url_file(path: Path, url: str) -> Path:
    """Writes the embedded Redis's URL, its password in it, to `path`, readable by the
    owner alone: what a worker added beside the service reads (the password is never
    printed)."""
    path.unlink(missing_ok=True)  # a new file, made 0600 before anything is written
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as file:
        file.write(url + "\n")
    return path.resolve()


def _announce(address: str, url_file: Path) -> None:
    """The embedded Redis's address, for a human (one plain line on stderr) and the log,
    and how more workers join this service: with the URL in `url_file`, which holds the
    password."""
    worker = f'BATCHD_REDIS_URL="$(cat {shlex.quote(str(url_file))})" batchd-worker'
    print(
        f"batchd: embedded Redis at {address} (add a worker: {worker})", file=sys.stderr, flush=True
    )
    log.info("embedded_redis_address", url=address, url_file=str(url_file))


async def _serve(settings: Settings, worker_args: list[str], tracing: Tracing | None) -> int:
    """Runs the server and the worker until a signal, or until the worker exits on its
    own (1: the service is no use without it); then stops both. Returns the exit code."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    received: list[signal.Signals] = []

    def on_signal(signum: signal.Signals) -> None:
        if received:
            log.info("service_signal_ignored", signal=signum.name, stopping_on=received[0].name)
            return
        received.append(signum)
        stop.set()

    for signum in STOP_SIGNALS:
        loop.add_signal_handler(signum, on_signal, signum)
    worker = await _start_worker(settings, worker_args)
    try:
        server = await start_server(settings, tracing=tracing)
    except BaseException:
        await _stop_worker(worker)
        raise
    exited = asyncio.create_task(worker.wait(), name="worker exit")
    stopped = asyncio.create_task(stop.wait(), name="stop signal")
    await asyncio.wait({exited, stopped}, return_when=asyncio.FIRST_COMPLETED)
    code = 0
    if not stop.is_set():
        log.error("worker_exited", returncode=worker.returncode)
        code = 1
    stopped.cancel()
    log.info("service_stopping", signal=received[0].name if received else None)
    await asyncio.gather(server.stop(), _stop_worker(worker))
    log.info("service_stopped")
    return code


async def _start_worker(settings: Settings, worker_args: list[str]) -> asyncio.subprocess.Process:
    """`batchd-worker` with the worker's settings as BATCHD_* variables (over the inherited
    environment, which carries the handlers' own) and the flags left over for it."""
    env = dict(os.environ)
    for field in Settings.fields_for("batchd-worker"):
        env[f"BATCHD_{field.name.upper()}"] = str(getattr(settings, field.name))
    command = [sys.executable, "-m", "batchd.worker.main", *worker_args]
    log.info("worker_starting", command=" ".join(command))
    return await asyncio.create_subprocess_exec(*command, env=env, stdin=asyncio.subprocess.DEVNULL)


async def _stop_worker(worker: asyncio.subprocess.Process) -> None:
    """SIGTERM (the worker ignores it if a terminal's SIGINT came first: both mean stop),
    then up to WORKER_STOP_TIMEOUT for the drain, then SIGKILL."""
    if worker.returncode is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        worker.send_signal(signal.SIGTERM)
    try:
        returncode = await asyncio.wait_for(worker.wait(), WORKER_STOP_TIMEOUT)
    except TimeoutError:
        log.warning("worker_killed", after_seconds=WORKER_STOP_TIMEOUT)
        with contextlib.suppress(ProcessLookupError):
            worker.kill()
        returncode = await worker.wait()
    if returncode != 0:
        log.warning("worker_stopped", returncode=returncode)


if __name__ == "__main__":
    main()
