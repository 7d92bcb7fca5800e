"""`email.send`: one email message per item, through the worker's SMTP relay.

Each item renders its subject, text and HTML templates (Jinja2, sandboxed) with its
`vars` and sends the message to its `to` addresses through the relay of
`Settings.smtp_url`, over a small pool of reused connections (smtp.py). The
Message-ID is derived from the item's idempotency key, the same on every attempt, so a
message delivered twice (a connection lost after DATA was sent) is recognisable.

How the relay's answers map to the item's fate:

    DATA accepted                   SUCCEEDED: message_id, accepted, rejected, reply
      (some recipients refused      SUCCEEDED all the same, the refused ones in `rejected`
       for good, 5xx)               with the relay's reply
    421 (any stage)                 retry, UNAVAILABLE, and slow down (SlowDown)
    452 (any stage)                 retry, RESOURCE_EXHAUSTED, and slow down
    other 4xx (connect, MAIL,       retry, UNAVAILABLE
      RCPT of any recipient, DATA)
    5xx, all recipients refused,    fail, FAILED_PRECONDITION with the reply ("550 5.1.1
      MAIL or DATA refused          User unknown"); 501 and 553 (address syntax)
                                    INVALID_ARGUMENT; 530, 535 UNAUTHENTICATED
    refused, reset, timed out       retry, UNAVAILABLE
      connection
    bad template, missing variable, fail, INVALID_ARGUMENT naming the part and the cause
      bad address or header
    a template past a render limit  fail, RESOURCE_EXHAUSTED naming the limit's setting
    a from domain or X- header the  fail, PERMISSION_DENIED naming the setting
      worker does not allow
    relay without STARTTLS under    fail, FAILED_PRECONDITION (fix the relay or the URL,
      starttls=require or with      then redrive); no AUTH is sent in the clear
      credentials, no AUTH,
      no SMTPUTF8 for a non-ASCII
      address, a bad certificate

Items are rate-limit keyed by relay, `smtp:<host>:<port>` (`rate_key`), when their
batch names no rate_limit_key: a 421 or 452 slows every batch sending through that
relay down, on every worker.

Messages are built (templates rendered, MIME written) in a small pool of processes
(build.py): a template that runs to its limits (render.py) delays no other
item of the worker. Templates that only substitute variables, whose work is linear in
the item, are built in the worker once a process has compiled them.
"""

from __future__ import annotations

import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import aiosmtplib

from batchd.core.config import SettingError, setting
from batchd.core.domain import BatchOptions, RetryPolicy
from batchd.worker.handler import (
    Code,
    Handler,
    HandlerError,
    ItemContext,
    PermanentError,
    RetryableError,
    SlowDown,
    WorkerInfo,
)
from batchd.worker.handlers.email.build import BuilderDied, MessageBuilders
from batchd.worker.handlers.email.message import (
    MessageError,
    NotAllowed,
    Policy,
    header_name_pattern,
    message_id_for,
)
from batchd.worker.handlers.email.relay import Relay, parse_relay_url
from batchd.worker.handlers.email.render import RenderLimitExceeded, RenderLimits, TemplateError
from batchd.worker.handlers.email.smtp import (
    RecipientsRefused,
    SmtpPool,
    TlsUnavailable,
    reply_text,
)

__all__ = ["MAX_RECIPIENTS", "PARAMS_SCHEMA", "EmailSettings", "email_send_handler"]

MAX_RECIPIENTS = 50
_TEMPLATE_LIMIT = 1024 * 1024  # characters of one template

_ADDRESS: dict[str, Any] = {
    "type": "string",
    "minLength": 3,
    "maxLength": 320,
    "pattern": r"^[^\r\n]*@[^\r\n]*$",  # one line: an address never adds a header
    "description": "a@example.com or Name <a@example.com>",
}
_TEMPLATE: dict[str, Any] = {"type": "string", "maxLength": _TEMPLATE_LIMIT}

PARAMS_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "to": {
            "oneOf": [
                _ADDRESS,
                {"type": "array", "items": _ADDRESS, "minItems": 1, "maxItems": MAX_RECIPIENTS},
            ],
            "description": f"One address or a list of up to {MAX_RECIPIENTS}.",
        },
        "from": _ADDRESS,
        "reply_to": _ADDRESS,
        "headers": {
            "type": "object",
            "description": (
                "Extra headers: List-Unsubscribe, List-Unsubscribe-Post, List-Id and the "
                "other List-*, In-Reply-To, References, Auto-Submitted, Precedence, "
                "Feedback-ID, Keywords, Comments, and X- headers the worker allows"
            ),
            "propertyNames": {"pattern": header_name_pattern()},
            "additionalProperties": {"type": "string", "maxLength": 998, "pattern": r"^[^\r\n]*$"},
            "maxProperties": 50,
        },
        "subject": {**_TEMPLATE, "maxLength": 4096, "description": "Jinja2 template, one line."},
        "text": {**_TEMPLATE, "description": "Jinja2 template of the text/plain part."},
        "html": {**_TEMPLATE, "description": "Jinja2 template of the text/html part, escaped."},
        "vars": {"type": "object", "description": "The templates' variables for this item."},
    },
    "required": ["to", "from", "subject"],
    "anyOf": [{"required": ["text"]}, {"required": ["html"]}],
    "additionalProperties": False,
}

# Codes of refusals that retrying cannot fix, other than FAILED_PRECONDITION.
_PERMANENT_CODES: dict[int, Code] = {
    501: Code.INVALID_ARGUMENT,  # syntax error in parameters (an address)
    553: Code.INVALID_ARGUMENT,  # mailbox name not allowed
    530: Code.UNAUTHENTICATED,  # authentication required
    535: Code.UNAUTHENTICATED,  # authentication credentials invalid
}
# Temporary refusals that say the relay is overloaded: slow every worker down.
_SLOW_DOWN_CODES: dict[int, Code] = {421: Code.UNAVAILABLE, 452: Code.RESOURCE_EXHAUSTED}


@dataclass(frozen=True)
class EmailSettings:
    """email.send's settings: the relay, its connections, what items may send."""

    smtp_url: str = setting(
        "smtp://localhost:25",
        "SMTP relay of email.send: smtp://[user:password@]host[:port][?starttls=auto|require|off]"
        ", or smtps:// for TLS from the first byte; a user and password are only ever sent "
        "over TLS",
    )
    smtp_connections: int = setting(
        8, "SMTP connections email.send keeps open per worker process and relay"
    )
    email_sender_domains: str = setting(
        "",
        "domains email.send items may send from (the from address's domain, exactly), "
        "comma-separated; empty: every item is refused",
    )
    email_custom_headers: str = setting(
        "",
        "X- headers email.send items may set, comma-separated (X-Campaign,X-Entity-Ref-ID); "
        "List-*, In-Reply-To, References and a few more are always allowed",
    )
    email_render_timeout: float = setting(
        1.0, "seconds one email.send template may take to render; past them, the item fails"
    )
    email_render_max_output: int = setting(
        1024 * 1024,
        "characters one email.send template may render, and the longest string or list it may make",
    )
    email_render_max_loop: int = setting(
        10_000, "loop iterations one email.send template may run, all its loops together"
    )
    email_render_max_int: int = setting(
        10**18, "the largest integer (absolute value) an email.send template may compute"
    )
    email_render_processes: int = setting(
        2, "processes per worker that render email.send messages, off the worker's event loop"
    )


class _EmailSend:
    """The handler's state: the worker's relay, its connection pool and the templates."""

    def __init__(self) -> None:
        self._relay: Relay | None = None
        self._pool: SmtpPool | None = None
        self._builders: MessageBuilders | None = None

    async def startup(self, worker: WorkerInfo) -> None:
        # A bad URL stops the worker at start-up, not 50,000 items later.
        settings = worker.settings.section(EmailSettings)
        self._relay = parse_relay_url(settings.smtp_url)
        try:
            policy = Policy.of(settings.email_sender_domains, settings.email_custom_headers)
        except ValueError as exc:
            raise SettingError(str(exc)) from None
        limits = RenderLimits(
            seconds=settings.email_render_timeout,
            output_chars=settings.email_render_max_output,
            loop_iterations=settings.email_render_max_loop,
            max_int=settings.email_render_max_int,
        )
        self._builders = MessageBuilders(settings.email_render_processes, limits, policy)
        self._pool = SmtpPool(self._relay, settings.smtp_connections)

    async def shutdown(self) -> None:
        if self._pool is not None:
            await self._pool.close()
            self._pool = None
        if self._builders is not None:
            await self._builders.close()
            self._builders = None

    def rate_key(self, params: Mapping[str, Any]) -> str | None:
        return self._relay.rate_key if self._relay is not None else None

    async def run(self, params: dict[str, Any], ctx: ItemContext) -> Mapping[str, Any]:
        if self._pool is None or self._builders is None:
            raise RuntimeError("email.send used before its startup hook ran")
        message_id = message_id_for(ctx.idempotency_key, ctx.custom_id)
        try:
            outgoing = await self._builders.build(params, message_id)
        except BuilderDied as exc:
            raise RetryableError(str(exc), code=Code.UNAVAILABLE) from exc
        except NotAllowed as exc:
            raise PermanentError(str(exc), code=Code.PERMISSION_DENIED) from exc
        except RenderLimitExceeded as exc:
            raise PermanentError(str(exc), code=Code.RESOURCE_EXHAUSTED) from exc
        except (MessageError, TemplateError) as exc:
            raise PermanentError(str(exc), code=Code.INVALID_ARGUMENT) from exc
        try:
            delivery = await self._pool.send(outgoing.sender, outgoing.recipients, outgoing.data)
        except Exception as exc:
            raise _item_error(exc, self._pool.relay) from exc
        if delivery.rejected:
            ctx.logger.info("email_recipients_rejected", rejected=len(delivery.rejected))
        return {
            "message_id": message_id,
            "accepted": delivery.accepted,
            "rejected": delivery.rejected,
            "reply": delivery.reply,
        }


def email_send_handler() -> Handler:
    """A fresh `email.send` handler, with its own (not yet opened) connection pool."""
    state = _EmailSend()
    return Handler(
        name="email.send",
        description=(
            "Sends one email message (Jinja2 templates, text and/or HTML) through the "
            "worker's SMTP relay; returns {message_id, accepted, rejected, reply}. 4xx "
            "replies and connection errors are retried; 5xx replies fail the item."
        ),
        params_schema=PARAMS_SCHEMA,
        default_options=BatchOptions(
            chunk_size=100,
            # Greylisting relays answer 4xx for minutes: back off up to 5 minutes.
            retry_policy=RetryPolicy(
                max_attempts=6, min_backoff=1.0, max_backoff=300.0, max_doublings=8
            ),
        ),
        settings=EmailSettings,
        run=state.run,
        startup=state.startup,
        shutdown=state.shutdown,
        rate_key=state.rate_key,
    )


def _item_error(exc: Exception, relay: Relay) -> HandlerError:
    """The item's fate for what sending raised (the table in the module docstring)."""
    if isinstance(exc, TlsUnavailable):
        return PermanentError(str(exc), code=Code.FAILED_PRECONDITION)
    if isinstance(exc, RecipientsRefused):
        # Any temporary refusal decides: retrying may get the whole message through.
        replies = sorted(exc.refused.values(), key=lambda reply: reply.code >= 500)
        return _reply_error(replies[0].code, f"RCPT TO refused: {exc}")
    if isinstance(exc, aiosmtplib.SMTPSenderRefused):
        return _reply_error(exc.code, f"MAIL FROM <{exc.sender}> refused: {_text(exc)}")
    if isinstance(exc, aiosmtplib.SMTPDataError):
        return _reply_error(exc.code, f"DATA refused: {_text(exc)}")
    if isinstance(exc, aiosmtplib.SMTPResponseException):  # greeting, EHLO, AUTH, STARTTLS
        return _reply_error(exc.code, f"SMTP relay {relay.address}: {_text(exc)}")
    certificate = _certificate_error(exc)
    if certificate is not None:
        return PermanentError(
            f"SMTP relay {relay.address}: TLS certificate: {certificate.verify_message}",
            code=Code.FAILED_PRECONDITION,
        )
    if isinstance(exc, aiosmtplib.SMTPTimeoutError | TimeoutError):
        return RetryableError(f"SMTP relay {relay.address} timed out", code=Code.UNAVAILABLE)
    if isinstance(exc, aiosmtplib.SMTPServerDisconnected | aiosmtplib.SMTPConnectError | OSError):
        return RetryableError(f"SMTP relay {relay.address}: {exc}", code=Code.UNAVAILABLE)
    if isinstance(exc, aiosmtplib.SMTPException):  # no STARTTLS, no AUTH, no SMTPUTF8
        return PermanentError(f"SMTP relay {relay.address}: {exc}", code=Code.FAILED_PRECONDITION)
    if isinstance(exc, ValueError):  # aiosmtplib refuses an address it cannot quote safely
        return PermanentError(f"invalid address: {exc}", code=Code.INVALID_ARGUMENT)
    raise exc


def _reply_error(code: int, message: str) -> HandlerError:
    if code in _SLOW_DOWN_CODES:
        return SlowDown(message, code=_SLOW_DOWN_CODES[code])
    if 400 <= code < 500:
        return RetryableError(message, code=Code.UNAVAILABLE)
    return PermanentError(message, code=_PERMANENT_CODES.get(code, Code.FAILED_PRECONDITION))


def _certificate_error(exc: BaseException) -> ssl.SSLCertVerificationError | None:
    """The certificate error behind a failure, if any (aiosmtplib wraps it in a connect
    error): retrying cannot make the relay's certificate valid."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, ssl.SSLCertVerificationError):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


def _text(exc: aiosmtplib.SMTPResponseException) -> str:
    return reply_text(aiosmtplib.SMTPResponse(exc.code, exc.message))
