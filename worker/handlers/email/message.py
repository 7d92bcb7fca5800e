"""Building one `email.send` message: templates rendered, addresses parsed, a
multipart/alternative MIME message with a Message-ID derived from the item.

Templates render in a sandbox within limits (render.py). Only the HTML part is
autoescaped: `<` in a plain-text body or a subject is just `<`.

Everything that reaches a header is checked here (one line, addresses parsed, domains
IDNA-encoded, non-ASCII names RFC 2047-encoded); mime.py writes the bytes. What the
worker's operator allows is checked here too (`Policy`): the domains `from` may use, and
which extra headers pass — an allow-list: `ALLOWED_HEADERS`, and the `X-` names the
operator lists; headers that receivers trust (Return-Path, DKIM-Signature, Received,
Authentication-Results, Resent-*) never.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from email.utils import formataddr, formatdate, getaddresses
from typing import Any

from batchd.worker.handlers.email.mime import mime_message
from batchd.worker.handlers.email.render import Templates

__all__ = [
    "ALLOWED_HEADERS",
    "RESERVED_HEADERS",
    "MessageError",
    "NotAllowed",
    "Outgoing",
    "Policy",
    "Templates",
    "build_message",
    "message_id_for",
]

# Set by the handler from params it owns; `headers` may not override them.
RESERVED_HEADERS = frozenset(
    {
        "from",
        "to",
        "cc",
        "bcc",
        "reply-to",
        "subject",
        "message-id",
        "date",
        "mime-version",
        "content-type",
        "content-transfer-encoding",
        "sender",
    }
)

# Extra headers an item may set, besides `X-` ones the operator lists: mailing-list and
# threading headers a sender legitimately writes, none that a receiver trusts.
ALLOWED_HEADERS = (
    "List-Unsubscribe",
    "List-Unsubscribe-Post",
    "List-Id",
    "List-Help",
    "List-Subscribe",
    "List-Owner",
    "List-Archive",
    "List-Post",
    "In-Reply-To",
    "References",
    "Auto-Submitted",
    "Precedence",
    "Feedback-ID",
    "Keywords",
    "Comments",
)
_ALLOWED = frozenset(name.lower() for name in ALLOWED_HEADERS)
CUSTOM_HEADER = re.compile(r"^[Xx]-[A-Za-z0-9][A-Za-z0-9-]{0,73}$")

MESSAGE_ID_DOMAIN = "batchd"
_NOT_ATEXT = re.compile(r"[^A-Za-z0-9_-]")
# An addr-spec as relays take it: no spaces, brackets or line breaks, one "@".
_ADDR_SPEC = re.compile(r"^[^\s<>()\[\],;:\\\"@]+@[^\s<>()\[\],;:\\\"@]+$")


class MessageError(ValueError):
    """The params cannot make a message (bad template, variable, address or header):
    the same params would fail again, so the item fails for good."""


class NotAllowed(MessageError):
    """The params ask for what the worker's settings do not allow (a sender domain, an
    `X-` header): the message names the setting."""


@dataclass(frozen=True)
class Policy:
    """What the operator allows: `from` domains (IDNA, lowercase; none: no sender at
    all) and `X-` header names (lowercase)."""

    sender_domains: frozenset[str] = frozenset()
    custom_headers: frozenset[str] = frozenset()

    @classmethod
    def of(cls, sender_domains: str, custom_headers: str) -> Policy:
        """From the settings' comma-separated lists; ValueError names a bad entry."""
        domains = set()
        for entry in _entries(sender_domains):
            try:
                domains.add(entry.encode("idna").decode("ascii").lower())
            except UnicodeError:
                raise ValueError(f"BATCHD_EMAIL_SENDER_DOMAINS: invalid domain {entry!r}") from None
        headers = set()
        for entry in _entries(custom_headers):
            if not CUSTOM_HEADER.match(entry):
                raise ValueError(f"BATCHD_EMAIL_CUSTOM_HEADERS: {entry!r} is not an X- header name")
            headers.add(entry.lower())
        return cls(frozenset(domains), frozenset(headers))

    def check_sender(self, addr_spec: str) -> None:
        domain = addr_spec.rsplit("@", 1)[1].lower()
        if domain not in self.sender_domains:
            raise NotAllowed(
                f"from: the domain {domain} is not in the worker's BATCHD_EMAIL_SENDER_DOMAINS"
            )

    def check_header(self, name: str) -> None:
        key = name.lower()
        if key in RESERVED_HEADERS:
            raise MessageError(f"headers: {name} is set from the params, not by headers")
        if key in _ALLOWED:
            return
        if not CUSTOM_HEADER.match(name):
            raise MessageError(
                f"headers: {name} is not allowed (List-*, In-Reply-To, References, "
                "Auto-Submitted, Precedence, Feedback-ID, Keywords, Comments, or X-...)"
            )
        if key not in self.custom_headers:
            raise NotAllowed(f"headers: {name} is not in the worker's BATCHD_EMAIL_CUSTOM_HEADERS")


def _entries(value: str) -> list[str]:
    return [entry.strip() for entry in value.split(",") if entry.strip()]


@dataclass(frozen=True)
class Outgoing:
    """A message ready for the SMTP envelope."""

    sender: str  # the bare address of `from`, for MAIL FROM
    recipients: list[str]  # the bare addresses of `to`, for RCPT TO
    data: bytes  # the message as DATA sends it
    message_id: str


def message_id_for(idempotency_key: str, custom_id: str) -> str:
    """The same Message-ID on every attempt of an item: a re-delivery is recognisable.

    The hash of the whole key ("batch_id/custom_id") makes it unique; the custom_id,
    reduced to characters a Message-ID may hold, makes it readable.
    """
    digest = hashlib.sha256(idempotency_key.encode()).hexdigest()[:32]
    return f"<{digest}.{_NOT_ATEXT.sub('-', custom_id)}@{MESSAGE_ID_DOMAIN}>"


def build_message(
    params: Mapping[str, Any], message_id: str, templates: Templates, policy: Policy
) -> Outgoing:
    """The message of an item's params (already checked against the params schema)."""
    variables = params.get("vars", {})
    to_values = params["to"] if isinstance(params["to"], list) else [params["to"]]
    sender = parse_address(params["from"], "from")
    policy.check_sender(sender[1])
    extra_headers = list(_extra_headers(params.get("headers", {}), policy))
    recipients = [parse_address(value, "to") for value in to_values]
    subject = templates.render("subject", params["subject"], variables)
    if "\r" in subject or "\n" in subject:
        raise MessageError("subject template: the subject must be one line")
    text = templates.render("text", params["text"], variables) if "text" in params else None
    html = templates.render("html", params["html"], variables) if "html" in params else None

    if text is None and html is None:
        raise MessageError("a message needs a text or an html template")
    headers = [
        ("From", _header_address(sender)),
        ("To", ", ".join(_header_address(r) for r in recipients)),
        ("Subject", subject),
        ("Date", formatdate(usegmt=True)),
        ("Message-ID", message_id),
    ]
    if "reply_to" in params:
        headers.append(("Reply-To", _header_address(parse_address(params["reply_to"], "reply_to"))))
    headers.extend(extra_headers)
    # The hash part of the Message-ID: unique, and short enough for a boundary (70 max).
    boundary = "=_" + message_id.strip("<").split(".", 1)[0]
    return Outgoing(
        sender=sender[1],
        recipients=list(dict.fromkeys(addr for _, addr in recipients)),  # once each
        data=mime_message(headers, text, html, boundary),
        message_id=message_id,
    )


def parse_address(value: str, field: str) -> tuple[str, str]:
    """One address, bare (`a@example.com`) or with a name (`Ann <a@example.com>`): its
    display name and its addr-spec, the domain IDNA-encoded."""
    if "\r" in value or "\n" in value:
        raise MessageError(f"{field}: an address must be one line")
    parsed = getaddresses([value])
    if len(parsed) != 1 or not _ADDR_SPEC.match(parsed[0][1]):
        raise MessageError(f"{field}: not one email address: {value!r}")
    name, addr_spec = parsed[0]
    local, domain = addr_spec.rsplit("@", 1)
    if not local.isascii():
        # That needs SMTPUTF8 end to end, which few relays offer: refuse it plainly.
        raise MessageError(f"{field}: non-ASCII local parts are not supported: {value!r}")
    try:
        domain = domain.encode("idna").decode("ascii")
    except UnicodeError as exc:
        raise MessageError(f"{field}: invalid domain in {value!r}") from exc
    return name, f"{local}@{domain}"


def header_name_pattern() -> str:
    """A JSON Schema pattern of the header names `check_header` may let through (an
    allowed name in any case, or an X- name): the rest is refused at submit."""
    fixed = "|".join(
        "".join(f"[{c.upper()}{c.lower()}]" if c.isalpha() else re.escape(c) for c in name)
        for name in ALLOWED_HEADERS
    )
    return f"^(?:{fixed}|{CUSTOM_HEADER.pattern[1:-1]})$"


def _header_address(address: tuple[str, str]) -> str:
    # formataddr quotes the name and RFC 2047-encodes it when it is not ASCII.
    return formataddr(address, charset="utf-8")


def _extra_headers(headers: Mapping[str, str], policy: Policy) -> Iterable[tuple[str, str]]:
    for name, value in headers.items():
        policy.check_header(name)
        if "\r" in value or "\n" in value:  # the schema says so too: never inject headers
            raise MessageError(f"headers: the value of {name} must be one line")
        yield name, value
