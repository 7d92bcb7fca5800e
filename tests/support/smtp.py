"""A real SMTP server for the `email.send` tests: aiosmtpd's `Controller` on 127.0.0.1
(its own thread and event loop) with a handler that records every message it takes and
answers as a test scripts it.

    server = start_smtp_server()              # server.url: smtp://127.0.0.1:PORT
    server.handler.reject.add("gone@x.test")  # RCPT TO answers 550 5.1.1 User unknown
    server.handler.script_rcpt("busy@x.test", "451 4.3.0 Try again later", times=2)
    server.handler.mail_replies.append("421 4.7.0 Too many connections")
    server.handler.messages                   # [Received(message_id, recipients, ...)]
    server.handler.connections                # connections that said EHLO/HELO
    server.hang_up()                          # closes every open connection, server side
    server.stop()

    # AUTH: the handler is the authenticator; every attempt is recorded, TLS or not
    server = start_smtp_server(authenticator=..., auth_require_tls=False)  (see
    `start_smtp_server`'s `credentials`)
    server.handler.auth_attempts              # [AuthAttempt(login, encrypted)]

The handler runs in the controller's thread: everything a test reads is guarded by a
lock and copied out.

`SmtpServerProcess` runs the same server in a process of its own (`python -m
support.smtp`), for end-to-end tests: in the test's process its thread would compete for
the GIL with the test's gRPC server and client and set the pace of the whole run. It
writes each message and each new connection as a JSON line to a log the test reads.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from email.parser import BytesHeaderParser
from pathlib import Path
from typing import Any, TextIO

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session

from support.net import find_free_port

USER_UNKNOWN = "550 5.1.1 User unknown"


@dataclass(frozen=True)
class Received:
    message_id: str
    sender: str
    recipients: tuple[str, ...]
    content: bytes


@dataclass(frozen=True)
class AuthAttempt:
    login: str
    encrypted: bool  # the connection was TLS when the client sent AUTH


class RecordingHandler:
    """aiosmtpd handler hooks: records messages, counts connections, scripted replies."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._messages: list[Received] = []
        self._peers: set[Any] = set()
        self._transports: list[Any] = []
        self.reject: set[str] = set()  # RCPT TO of these answers USER_UNKNOWN
        self._rcpt_replies: dict[str, deque[str]] = {}
        self.mail_replies: deque[str] = deque()  # the next MAIL FROM commands answer these
        self.data_replies: deque[str] = deque()  # the next DATA commands answer these
        self.credentials: tuple[str, str] | None = None  # what `authenticate` accepts
        self._auth_attempts: list[AuthAttempt] = []

    @property
    def auth_attempts(self) -> list[AuthAttempt]:
        with self._lock:
            return list(self._auth_attempts)

    def authenticate(
        self, server: SMTP, session: Session, envelope: Envelope, mechanism: str, data: Any
    ) -> AuthResult:
        """aiosmtpd's authenticator: records the attempt, accepts `credentials`."""
        login, password = (
            (data.login.decode(), data.password.decode())
            if isinstance(data, LoginPassword)
            else ("", "")
        )
        with self._lock:
            self._auth_attempts.append(AuthAttempt(login, session.ssl is not None))
        # handled=False: aiosmtpd answers a failure with 535 itself.
        return AuthResult(success=(login, password) == self.credentials, handled=False)

    def script_rcpt(self, address: str, reply: str, *, times: int = 1) -> None:
        """RCPT TO `address` answers `reply` the next `times` times, then as usual."""
        with self._lock:
            self._rcpt_replies.setdefault(address.lower(), deque()).extend([reply] * times)

    @property
    def messages(self) -> list[Received]:
        with self._lock:
            return list(self._messages)

    @property
    def connections(self) -> int:
        """Connections that greeted the server (each counted once, STARTTLS or not)."""
        with self._lock:
            return len(self._peers)

    def open_transports(self) -> list[Any]:
        with self._lock:
            self._transports = [t for t in self._transports if not t.is_closing()]
            return list(self._transports)

    async def handle_EHLO(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        hostname: str,
        responses: list[str],
    ) -> list[str]:
        session.host_name = hostname
        self._greeted(server, session)
        return responses

    async def handle_HELO(
        self, server: SMTP, session: Session, envelope: Envelope, hostname: str
    ) -> str:
        session.host_name = hostname
        self._greeted(server, session)
        return f"250 {server.hostname}"

    async def handle_MAIL(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        with self._lock:
            if self.mail_replies:
                return self.mail_replies.popleft()
        envelope.mail_from = address
        envelope.mail_options.extend(options)
        return "250 OK"

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        key = address.lower()
        with self._lock:
            scripted = self._rcpt_replies.get(key)
            if scripted:
                return scripted.popleft()
            if key in self.reject:
                return USER_UNKNOWN
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        with self._lock:
            if self.data_replies:
                return self.data_replies.popleft()
        content = envelope.original_content or envelope.content or b""
        assert isinstance(content, bytes)
        headers = BytesHeaderParser().parsebytes(content)
        received = Received(
            message_id=str(headers.get("Message-ID", "")),
            sender=envelope.mail_from or "",
            recipients=tuple(envelope.rcpt_tos),
            content=content,
        )
        with self._lock:
            self._messages.append(received)
            queue_id = len(self._messages)
        return f"250 2.0.0 Ok: queued as Q{queue_id}"

    def _greeted(self, server: SMTP, session: Session) -> None:
        with self._lock:
            if session.peer not in self._peers:
                self._peers.add(session.peer)
                self._log({"connection": repr(session.peer)})
            if server.transport is not None and server.transport not in self._transports:
                self._transports.append(server.transport)

    def _log(self, record: dict[str, Any]) -> None:
        """A hook for the logging subclass (called with the lock held)."""


class LoggingHandler(RecordingHandler):
    """Also writes each message and new connection as a JSON line (SmtpServerProcess)."""

    def __init__(self, log: TextIO) -> None:
        super().__init__()
        self._file = log

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        reply = await super().handle_DATA(server, session, envelope)
        if reply.startswith("250"):
            with self._lock:
                received = self._messages[-1]
                self._log(
                    {
                        "message_id": received.message_id,
                        "sender": received.sender,
                        "recipients": list(received.recipients),
                    }
                )
        return reply

    def _log(self, record: dict[str, Any]) -> None:
        # Written before the 250 goes out: once the item succeeded, its line is there.
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()


class SmtpServer:
    """A started `Controller` and its recording handler."""

    def __init__(self, **smtp_options: Any) -> None:
        self.handler = RecordingHandler()
        self.port = find_free_port()
        # A fixed hostname spares a reverse DNS lookup per connection.
        smtp_options.setdefault("server_hostname", "smtp.test")
        self.controller = Controller(
            self.handler, hostname="127.0.0.1", port=self.port, **smtp_options
        )

    @property
    def url(self) -> str:
        return f"smtp://127.0.0.1:{self.port}"

    def start(self) -> SmtpServer:
        self.controller.start()
        return self

    def stop(self) -> None:
        # Connections a client still holds are closed first: aiosmtpd's stop leaves them.
        self.hang_up()
        self.controller.stop()

    def hang_up(self) -> None:
        """Closes every open connection from the server's side, as an idle timeout does."""
        done = threading.Event()

        def close_all() -> None:
            for transport in self.handler.open_transports():
                transport.close()
            done.set()

        self.controller.loop.call_soon_threadsafe(close_all)
        done.wait(5)


def start_smtp_server(
    credentials: tuple[str, str] | None = None, **smtp_options: Any
) -> SmtpServer:
    """A running server; `smtp_options` go to aiosmtpd's SMTP (auth_require_tls,
    tls_context, ...). With `credentials`, it offers AUTH and requires it, records every
    attempt and accepts those."""
    server = SmtpServer(**smtp_options)
    if credentials is not None:
        server.handler.credentials = credentials
        server.controller.SMTP_kwargs.update(
            authenticator=server.handler.authenticate, auth_required=True
        )
    return server.start()


class SmtpServerProcess:
    """A recording server in a subprocess that rejects `reject` (550 5.1.1) and logs to
    `log_path`; `messages()` and `connections()` read the log."""

    def __init__(self, log_path: Path, reject: Iterable[str] = ()) -> None:
        self.port = find_free_port()
        self.log_path = log_path
        self.reject = sorted(reject)
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"smtp://127.0.0.1:{self.port}"

    def start(self, timeout: float = 30) -> SmtpServerProcess:
        tests_dir = str(Path(__file__).resolve().parents[1])
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join([tests_dir, os.environ.get("PYTHONPATH", "")]),
        }
        argv = [sys.executable, "-m", "support.smtp", "--port", str(self.port)]
        argv += ["--log", str(self.log_path), "--reject", ",".join(self.reject)]
        self.process = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while True:  # another process: poll its port until it answers
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return self
            except OSError:
                if time.monotonic() > deadline or self.process.poll() is not None:
                    self.stop()
                    raise RuntimeError("the SMTP server process did not start") from None
                time.sleep(0.05)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(30)

    def _records(self) -> list[dict[str, Any]]:
        if not self.log_path.exists():
            return []
        # The server process may be writing a line right now: the text after the last
        # newline is not a record yet.
        complete = self.log_path.read_text().split("\n")[:-1]
        return [json.loads(line) for line in complete if line.strip()]

    def messages(self) -> list[Received]:
        return [
            Received(r["message_id"], r["sender"], tuple(r["recipients"]), b"")
            for r in self._records()
            if "message_id" in r
        ]

    def connections(self) -> int:
        """Connections that greeted the server (the probe at start-up did not)."""
        return sum(1 for r in self._records() if "connection" in r)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="A recording SMTP server (tests).")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--log", type=Path, required=True)
    parser.add_argument("--reject", default="", help="comma-separated addresses")
    args = parser.parse_args(argv)
    with args.log.open("a") as log:
        handler = LoggingHandler(log)
        handler.reject.update(a.lower() for a in args.reject.split(",") if a)
        controller = Controller(
            handler, hostname="127.0.0.1", port=args.port, server_hostname="smtp.test"
        )
        controller.start()
        stopped = threading.Event()
        signal.signal(signal.SIGTERM, lambda *_: stopped.set())
        stopped.wait()
        controller.stop()


if __name__ == "__main__":
    main()
