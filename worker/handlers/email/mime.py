"""The wire form of an `email.send` message: headers, then a text/plain part, a text/html
part, or both as multipart/alternative — UTF-8, quoted-printable, CRLF line ends.

Written by hand rather than through `email.message`: these messages have one fixed
shape, and the stdlib's generators fold every header through `email.header.Header`
(compat32) or parse it into the header registry (`EmailMessage`). Measured in a worker
sending to a local relay, building and flattening with `EmailMessage` took ~11 ms a
message, with compat32's `MIMEMultipart` ~2 ms, of which most was header folding;
written here it takes a small fraction of that, and the worker's CPU goes to sending.

What keeps the output well-formed:
- header values are checked to be one line by the caller; a value that is not ASCII or
  does not fit on a line of 998 octets goes through `email.header.Header`, which
  RFC 2047-encodes and folds it;
- bodies are quoted-printable (`binascii.b2a_qp`): ASCII only, lines of at most 76
  characters, so any text is safe whatever its line lengths or characters;
- the multipart boundary starts with "=_", which quoted-printable text cannot contain
  ("=" is always followed by two hex digits or a line end there): no part can end the
  multipart early, and no scan of the parts for a safe boundary is needed.
"""

from __future__ import annotations

import binascii
from collections.abc import Sequence
from email.header import Header

__all__ = ["mime_message"]

_CRLF = b"\r\n"
# RFC 5322: a line is at most 998 octets, CRLF excluded.
_MAX_LINE = 998


def mime_message(
    headers: Sequence[tuple[str, str]], text: str | None, html: str | None, boundary: str
) -> bytes:
    """The message's bytes; `boundary` must start with "=_" (see the module docstring)."""
    if not boundary.startswith("=_"):
        raise ValueError("the boundary must start with '=_'")
    lines = [_header(name, value) for name, value in headers]
    lines.append(b"MIME-Version: 1.0")
    if text is not None and html is not None:
        lines.append(f'Content-Type: multipart/alternative; boundary="{boundary}"'.encode())
        delimiter = f"--{boundary}".encode()
        # The last part is the preferred one (RFC 2046): HTML where it can be shown.
        body = b"".join(
            [
                delimiter + _CRLF + _part("plain", text) + _CRLF,
                delimiter + _CRLF + _part("html", html) + _CRLF,
                delimiter + b"--" + _CRLF,
            ]
        )
        return _CRLF.join(lines) + _CRLF + _CRLF + body
    if text is not None:
        return _CRLF.join(lines) + _CRLF + _part("plain", text)
    if html is not None:
        return _CRLF.join(lines) + _CRLF + _part("html", html)
    raise ValueError("a message needs a text or an html part")


def _part(subtype: str, content: str) -> bytes:
    """Content-Type and -Transfer-Encoding headers, a blank line, the encoded body."""
    # One line-end convention in, CRLF out: b2a_qp keeps "\n" as the line break.
    normalized = content.replace("\r\n", "\n").replace("\r", "\n").encode("utf-8")
    encoded = binascii.b2a_qp(normalized, istext=True).replace(b"\n", _CRLF)
    return (
        f'Content-Type: text/{subtype}; charset="utf-8"'.encode()
        + _CRLF
        + b"Content-Transfer-Encoding: quoted-printable"
        + _CRLF
        + _CRLF
        + encoded
    )


def _header(name: str, value: str) -> bytes:
    line = f"{name}: {value}"
    if line.isascii() and len(line) <= _MAX_LINE:
        return line.encode("ascii")
    charset = "us-ascii" if value.isascii() else "utf-8"
    encoded = Header(value, charset, header_name=name).encode(linesep="\r\n")
    return f"{name}: {encoded}".encode("ascii")
