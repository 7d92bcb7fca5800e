"""The SMTP relay `email.send` delivers through, parsed from `Settings.smtp_url`.

    smtp://[user:password@]host[:port][?starttls=auto|require|off]    port 25 by default
    smtps://[user:password@]host[:port]                               TLS from the first byte,
                                                                      port 465 by default

`starttls=auto` (the default) upgrades the connection when the relay offers STARTTLS,
`require` refuses to send over a relay that does not offer it, `off` never upgrades.
User and password are percent-decoded and used for AUTH after the upgrade, never
without TLS: credentials with `starttls=off` are a `SettingError` here (the worker stops
at start-up), and under `auto` a relay that offers no STARTTLS gets no AUTH
(smtp.py). Certificates are always verified: a relay worth sending through has a
valid one.

The relay comes from the worker's settings, never from an item's params: items are
written by submitters, and credentials or a destination of their choosing must not
travel through the batch.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

from batchd.core.config import SettingError

__all__ = ["Relay", "StartTls", "parse_relay_url"]


class StartTls(enum.Enum):
    AUTO = "auto"
    REQUIRE = "require"
    OFF = "off"


_DEFAULT_PORTS = {"smtp": 25, "smtps": 465}


@dataclass(frozen=True)
class Relay:
    host: str
    port: int
    implicit_tls: bool = False  # smtps://
    starttls: StartTls = StartTls.AUTO
    username: str | None = None
    # Kept out of repr: the relay may be logged, its password never.
    password: str | None = field(default=None, repr=False)

    @property
    def rate_key(self) -> str:
        """The rate-limit key of every item sent through this relay."""
        return f"smtp:{self.host}:{self.port}"

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def authenticates(self) -> bool:
        return self.username is not None

    def client_options(self) -> dict[str, Any]:
        """Keyword arguments of `aiosmtplib.SMTP` for this relay, without the credentials:
        the pool logs in itself, once it has seen the connection encrypted."""
        # aiosmtplib's start_tls: None upgrades when offered, True insists, False never.
        start_tls = {StartTls.AUTO: None, StartTls.REQUIRE: True, StartTls.OFF: False}
        return {
            "hostname": self.host,
            "port": self.port,
            "use_tls": self.implicit_tls,
            "start_tls": False if self.implicit_tls else start_tls[self.starttls],
        }


_SETTING = "BATCHD_SMTP_URL"


def parse_relay_url(url: str) -> Relay:
    """The relay of an smtp:// or smtps:// URL; SettingError (a ValueError, without the
    password) if bad."""
    try:
        return _parse(url)
    except ValueError as exc:
        raise SettingError(f"{_SETTING}: {exc}") from None


def _parse(url: str) -> Relay:
    parts = urlsplit(url.strip())
    scheme = parts.scheme.lower()
    if scheme not in _DEFAULT_PORTS:
        raise ValueError(f"SMTP relay URL: scheme must be smtp or smtps, not {scheme!r}")
    if not parts.hostname:
        raise ValueError("SMTP relay URL: no host")
    if parts.path not in ("", "/"):
        raise ValueError("SMTP relay URL: no path expected")
    try:
        port = parts.port or _DEFAULT_PORTS[scheme]
    except ValueError:
        raise ValueError("SMTP relay URL: the port must be a number up to 65535") from None
    starttls = StartTls.AUTO
    for name, value in parse_qsl(parts.query, keep_blank_values=True):
        if name != "starttls":
            raise ValueError(f"SMTP relay URL: unknown option {name!r} (only starttls)")
        try:
            starttls = StartTls(value.lower())
        except ValueError:
            raise ValueError(
                f"SMTP relay URL: starttls must be auto, require or off, not {value!r}"
            ) from None
    if scheme == "smtps" and "starttls" in parts.query:
        raise ValueError("SMTP relay URL: smtps:// is TLS already; starttls does not apply")
    if parts.username is not None and scheme == "smtp" and starttls is StartTls.OFF:
        raise ValueError(
            "SMTP relay URL: a user and password with starttls=off would be sent in the "
            "clear; use starttls=require (or auto) or smtps://"
        )
    return Relay(
        host=parts.hostname,
        port=port,
        implicit_tls=scheme == "smtps",
        starttls=starttls,
        username=unquote(parts.username) if parts.username is not None else None,
        password=unquote(parts.password) if parts.password is not None else None,
    )
