"""A private Sentinel-managed Valkey for failover tests: a primary, a replica and three
Sentinels, every one a loopback process of the test's own.

The Sentinels agree that a primary silent for `down_after_ms` is down (two of three
suffice) and promote the replica; `url` is the redis+sentinel:// URL batchd follows the
primary with. A test can `cut_replication()` so that the replica falls behind: a
failover then loses the primary's writes since, as one does when the primary dies before
its replicas received its last writes. (The replica replicates as its own ACL user,
which the cut disables: Sentinels set a replica that follows anything but the primary
back at once, so a relay in between would not stay in place.)
"""

from __future__ import annotations

import atexit
import contextlib
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

from support.net import find_free_port
from support.redis_server import (
    RedisServer,
    RedisServerError,
    find_server_executable,
    ping,
    start_redis_server,
)

SERVICE = "primary"
START_TIMEOUT = 20.0
# The ACL user the replica replicates as.
REPLICATION_USER = ("replication", "replication-secret")
_REPLICATION_ACL = [
    "--user", REPLICATION_USER[0], "on", f">{REPLICATION_USER[1]}", "~*", "&*", "+@all",
]  # fmt: skip


def command(port: int, *words: str) -> list[str]:
    """One command's reply from the server or Sentinel on `port`, flattened to strings
    (plain RESP over a socket: enough for the replies used here)."""
    with socket.create_connection(("127.0.0.1", port), timeout=2) as sock:
        encoded = [w.encode() for w in words]
        sock.sendall(
            b"*%d\r\n" % len(encoded) + b"".join(b"$%d\r\n%s\r\n" % (len(w), w) for w in encoded)
        )
        return _flatten(_read_reply(sock.makefile("rb")))


class SentinelProcess:
    """One `valkey-server <conf> --sentinel` process; Sentinel rewrites its own config
    file, so each gets one in its own directory."""

    def __init__(self, directory: Path, primary_port: int, *, down_after_ms: int) -> None:
        self.directory = directory
        self.port = find_free_port()
        self.conf = directory / "sentinel.conf"
        directory.mkdir(parents=True, exist_ok=True)
        self.conf.write_text(
            "\n".join(
                [
                    f"port {self.port}",
                    "bind 127.0.0.1",
                    f"dir {directory}",
                    f"logfile {directory / 'sentinel.log'}",
                    f"sentinel monitor {SERVICE} 127.0.0.1 {primary_port} 2",
                    f"sentinel down-after-milliseconds {SERVICE} {down_after_ms}",
                    f"sentinel failover-timeout {SERVICE} {max(3 * down_after_ms, 3000)}",
                    "",
                ]
            )
        )
        self._process = subprocess.Popen(
            [find_server_executable(), str(self.conf), "--sentinel"],
            cwd=directory,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        atexit.register(self.stop)

    def running(self) -> bool:
        return self._process.poll() is None

    def stop(self) -> None:
        if self._process.poll() is None:
            self._process.kill()
        self._process.wait(10)

    def command(self, *words: str) -> list[str]:
        return command(self.port, *words)

    def log_tail(self, lines: int = 30) -> str:
        path = self.directory / "sentinel.log"
        with contextlib.suppress(OSError):
            return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
        return "(no log)"


def _read_reply(reader: object) -> object:
    line: bytes = reader.readline()  # type: ignore[attr-defined]
    kind, rest = line[:1], line[1:].rstrip(b"\r\n")
    if kind in (b"+", b":"):
        return rest.decode()
    if kind == b"-":
        raise RedisServerError(rest.decode())
    if kind == b"$":
        size = int(rest)
        if size < 0:
            return None
        data: bytes = reader.read(size + 2)  # type: ignore[attr-defined]
        return data[:-2].decode()
    if kind == b"*":
        return [_read_reply(reader) for _ in range(max(int(rest), 0))]
    raise RedisServerError(f"unexpected reply {line!r}")


def _flatten(reply: object) -> list[str]:
    if isinstance(reply, list):
        return [word for part in reply for word in _flatten(part)]
    return [] if reply is None else [str(reply)]


class SentinelGroup:
    """The primary, its replica and three Sentinels watching them."""

    def __init__(self, directory: Path, *, down_after_ms: int = 1000) -> None:
        self.directory = directory
        self.servers: list[RedisServer] = []
        self.sentinels: list[SentinelProcess] = []
        try:
            self.primary = start_redis_server(directory / "primary", extra_args=_REPLICATION_ACL)
            self.servers.append(self.primary)
            self.replica = start_redis_server(
                directory / "replica",
                extra_args=[
                    *_REPLICATION_ACL,
                    "--replicaof", "127.0.0.1", str(self.primary.port),
                    "--masteruser", REPLICATION_USER[0],
                    "--masterauth", REPLICATION_USER[1],
                ],
            )  # fmt: skip
            self.servers.append(self.replica)
            for n in range(3):
                self.sentinels.append(
                    SentinelProcess(
                        directory / f"sentinel-{n}", self.primary.port, down_after_ms=down_after_ms
                    )
                )
        except BaseException:
            self.stop()
            raise

    @property
    def url(self) -> str:
        hosts = ",".join(f"127.0.0.1:{s.port}" for s in self.sentinels)
        return f"redis+sentinel://{hosts}/{SERVICE}/0"

    def wait_ready(self, timeout: float = START_TIMEOUT) -> None:
        """Until the replica is in sync and every Sentinel knows it and the other two:
        only then can they agree on a failover."""
        deadline = time.monotonic() + timeout
        while not self._ready():
            if time.monotonic() > deadline:
                tails = "\n---\n".join(s.log_tail() for s in self.sentinels)
                raise RedisServerError(f"the Sentinels did not settle:\n{tails}")
            time.sleep(0.1)

    def _ready(self) -> bool:
        if not ping(self.replica.port):
            return False
        try:
            for sentinel in self.sentinels:
                state = _pairs(sentinel.command("SENTINEL", "MASTER", SERVICE))
                if state.get("num-slaves") != "1" or state.get("num-other-sentinels") != "2":
                    return False
                replicas = _pairs(sentinel.command("SENTINEL", "REPLICAS", SERVICE))
                if replicas.get("master-link-status") != "ok":
                    return False
        except (OSError, RedisServerError):
            return False
        return True

    def cut_replication(self) -> None:
        """The primary stops replicating to the replica, which cannot reconnect: its
        writes from now on are the primary's alone."""
        command(self.primary.port, "ACL", "SETUSER", REPLICATION_USER[0], "off")
        command(self.primary.port, "CLIENT", "KILL", "USER", REPLICATION_USER[0])

    def primary_port(self) -> int:
        """The port of the primary the Sentinels name now."""
        reply = self.sentinels[0].command("SENTINEL", "GET-MASTER-ADDR-BY-NAME", SERVICE)
        return int(reply[1])

    def stop(self) -> None:
        for sentinel in self.sentinels:
            sentinel.stop()
        for server in self.servers:
            server.stop()


def _pairs(words: list[str]) -> dict[str, str]:
    return dict(zip(words[::2], words[1::2], strict=False))


@contextlib.contextmanager
def sentinel_group(directory: Path, *, down_after_ms: int = 1000) -> Iterator[SentinelGroup]:
    """A ready SentinelGroup, every process of it stopped when the block ends."""
    group = SentinelGroup(directory, down_after_ms=down_after_ms)
    try:
        group.wait_ready()
        yield group
    finally:
        group.stop()
