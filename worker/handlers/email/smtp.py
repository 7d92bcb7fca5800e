"""Delivering `email.send` messages: a small pool of SMTP connections to the relay and
one mail transaction per message.

A worker process keeps at most `Settings.smtp_connections` connections to its relay,
opened when first needed and reused for message after message: opening one costs a TCP
handshake, the greeting, EHLO, perhaps STARTTLS and AUTH, several times what sending a
message costs. Items beyond that many wait for a free connection. A connection the
relay dropped while idle is noticed when taken (and, if the drop is only seen at MAIL
FROM, the message goes over a fresh connection once): nothing had been sent yet.

One transaction is MAIL FROM, one RCPT TO per recipient, then DATA. Before DATA nothing
is delivered, so that is where every decision to give up or retry is taken:

- no recipient accepted, or one refused only for now (4xx): RSET, `RecipientsRefused`;
  the whole message may be retried without anyone receiving it twice;
- some recipients refused for good (5xx), others accepted: the message goes to the
  accepted ones and the delivery lists the refused with the relay's reply.

Credentials go out only over TLS: a connection that is not encrypted after EHLO (and
STARTTLS, when offered) is closed before AUTH, raising `TlsUnavailable`.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import aiosmtplib

from batchd.worker.handlers.email.relay import Relay

__all__ = ["Delivery", "RecipientsRefused", "SmtpPool", "TlsUnavailable", "reply_text"]

# Seconds one SMTP command (the DATA transfer included) may take.
COMMAND_TIMEOUT = 30.0
# Seconds a polite QUIT may take at shutdown before the connection is just closed.
QUIT_TIMEOUT = 2.0
# "Service not available, closing transmission channel" (RFC 5321): the relay hangs up.
CLOSING = 421


@dataclass(frozen=True)
class Delivery:
    """What the relay said about a message it took."""

    accepted: list[str]
    rejected: dict[str, str]  # recipient -> the relay's reply, "550 5.1.1 User unknown"
    reply: str  # the relay's final reply to DATA, often with its queue id


class RecipientsRefused(Exception):
    """RCPT TO refused every recipient, or some only for now: nothing was sent."""

    def __init__(self, refused: dict[str, aiosmtplib.SMTPResponse]) -> None:
        super().__init__(
            "; ".join(f"<{addr}>: {reply_text(reply)}" for addr, reply in refused.items())
        )
        self.refused = refused


class TlsUnavailable(Exception):
    """The relay offered no STARTTLS and the URL has credentials: nothing was sent, AUTH
    included."""


class _StaleConnection(Exception):
    """A reused connection turned out closed at MAIL FROM: nothing was sent on it."""


@dataclass
class _Lease:
    smtp: aiosmtplib.SMTP
    reused: bool


@dataclass
class SmtpPool:
    """Up to `size` open connections to `relay`, opened on demand, reused last-in first-out
    (the most recently used connection is the least likely to have been dropped)."""

    relay: Relay
    size: int
    command_timeout: float = COMMAND_TIMEOUT
    _idle: list[aiosmtplib.SMTP] = field(default_factory=list)
    _closed: bool = False
    _slots: asyncio.Semaphore = field(init=False)

    def __post_init__(self) -> None:
        self._slots = asyncio.Semaphore(max(self.size, 1))

    async def send(self, sender: str, recipients: list[str], data: bytes) -> Delivery:
        """One transaction over a pooled connection. Raises aiosmtplib's errors (connect,
        sender refused, DATA refused, disconnects, timeouts) and `RecipientsRefused`."""
        try:
            async with self._connection() as lease:
                return await _transaction(lease, sender, recipients, data)
        except _StaleConnection:
            pass
        async with self._connection(fresh=True) as lease:
            return await _transaction(lease, sender, recipients, data)

    async def close(self) -> None:
        """QUITs the idle connections (those in use are closed when given back)."""
        self._closed = True
        idle, self._idle = self._idle, []
        for smtp in idle:
            with contextlib.suppress(aiosmtplib.SMTPException, OSError):
                await smtp.quit(timeout=QUIT_TIMEOUT)
            smtp.close()

    @contextlib.asynccontextmanager
    async def _connection(self, *, fresh: bool = False) -> AsyncIterator[_Lease]:
        async with self._slots:
            smtp = None if fresh else self._take_idle()
            lease = _Lease(smtp or await self._open(), reused=smtp is not None)
            try:
                yield lease
            except (aiosmtplib.SMTPResponseException, RecipientsRefused):
                # The relay answered and the transaction was reset: the connection is in
                # step and may serve the next message (unless the relay closed it).
                self._give_back(lease.smtp)
                raise
            except BaseException:
                # Dropped, timed out or cancelled mid-command: where the dialogue stands
                # is unknown, so the connection is not reused.
                lease.smtp.close()
                raise
            self._give_back(lease.smtp)

    def _take_idle(self) -> aiosmtplib.SMTP | None:
        while self._idle:
            smtp = self._idle.pop()
            if smtp.is_connected:
                return smtp
            smtp.close()  # the relay hung up while it was idle
        return None

    def _give_back(self, smtp: aiosmtplib.SMTP) -> None:
        if smtp.is_connected and not self._closed:
            self._idle.append(smtp)
        else:
            smtp.close()

    async def _open(self) -> aiosmtplib.SMTP:
        relay = self.relay
        smtp = aiosmtplib.SMTP(timeout=self.command_timeout, **relay.client_options())
        await smtp.connect()  # greeting, EHLO and STARTTLS as the relay URL says
        if relay.username is None:
            return smtp
        try:
            if smtp.get_transport_info("sslcontext") is None:
                raise TlsUnavailable(
                    f"SMTP relay {relay.address} offers no STARTTLS: the user and password "
                    "of BATCHD_SMTP_URL are never sent in the clear"
                )
            await smtp.login(relay.username, relay.password or "")
        except BaseException:
            smtp.close()
            raise
        return smtp


async def _transaction(lease: _Lease, sender: str, recipients: list[str], data: bytes) -> Delivery:
    smtp = lease.smtp
    # The message is ASCII (mime.py): no 8BITMIME or SMTPUTF8 is asked of the relay.
    mail_options = [f"SIZE={len(data)}"] if smtp.supports_extension("size") else []
    try:
        try:
            await smtp.mail(sender, options=mail_options)
        except aiosmtplib.SMTPServerDisconnected:
            if lease.reused:
                raise _StaleConnection from None
            raise
        accepted: list[str] = []
        refused: dict[str, aiosmtplib.SMTPResponse] = {}
        for recipient in recipients:
            try:
                await smtp.rcpt(recipient)
                accepted.append(recipient)
            except aiosmtplib.SMTPRecipientRefused as exc:
                refused[recipient] = aiosmtplib.SMTPResponse(exc.code, exc.message)
        if not accepted or any(reply.code < 500 for reply in refused.values()):
            raise RecipientsRefused(refused)
        response = await smtp.data(data)
    except (aiosmtplib.SMTPResponseException, RecipientsRefused) as exc:
        await _end_transaction(smtp, exc)
        raise
    return Delivery(
        accepted=accepted,
        rejected={addr: reply_text(reply) for addr, reply in refused.items()},
        reply=reply_text(response),
    )


async def _end_transaction(
    smtp: aiosmtplib.SMTP, exc: aiosmtplib.SMTPResponseException | RecipientsRefused
) -> None:
    """After a refusal: RSET, so the next message starts clean; after a 421, hang up as
    the relay does."""
    codes = (
        [reply.code for reply in exc.refused.values()]
        if isinstance(exc, RecipientsRefused)
        else [exc.code]
    )
    if CLOSING in codes:
        smtp.close()
        return
    try:
        await smtp.rset()
    except (aiosmtplib.SMTPException, OSError):
        smtp.close()  # out of step: the pool opens another


def reply_text(reply: aiosmtplib.SMTPResponse) -> str:
    """A reply as the relay wrote it, on one line: "550 5.1.1 User unknown"."""
    return f"{reply.code} {' '.join(reply.message.split())}".rstrip()
