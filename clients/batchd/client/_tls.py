"""`TLS`: how a client's channel trusts the server and, for mTLS, proves who it is."""

from __future__ import annotations

import os
import ssl
from dataclasses import dataclass
from typing import Any

import grpc

__all__ = ["TLS", "TLSFileError", "TLSLike", "channel_credentials"]

StrPath = str | os.PathLike[str]


class TLSFileError(ValueError):
    """A file named by `TLS` cannot be read or holds no PEM certificate or key.

    `field` is the `TLS` field that named it (`ca_file`, `cert_file`, `key_file`),
    `path` the file, `reason` what is wrong."""

    def __init__(self, field: str, path: StrPath, reason: str) -> None:
        super().__init__(f"TLS {field} {os.fspath(path)}: {reason}")
        self.field = field
        self.path = os.fspath(path)
        self.reason = reason


@dataclass(frozen=True)
class TLS:
    """TLS settings of a client; the files are read when the client is created.

    TLS()                                   the system's root CAs, as `tls=True`
    TLS(ca_file="ca.pem")                   trust only the CAs in ca.pem
    TLS(ca_file=..., cert_file=..., key_file=...)   and present a client certificate (mTLS)

    `server_name` is the name checked against the server's certificate when it is not
    the target's host (a certificate for batchd.internal reached at 10.0.0.5, say).
    """

    ca_file: StrPath | None = None
    cert_file: StrPath | None = None
    key_file: StrPath | None = None
    server_name: str | None = None

    def __post_init__(self) -> None:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("TLS: cert_file and key_file go together (mTLS needs both)")

    def credentials(self) -> grpc.ChannelCredentials:
        """The channel credentials, the files read and checked. Raises TLSFileError."""
        root = None
        if self.ca_file is not None:
            root = _read("ca_file", self.ca_file)
            _check_certificates("ca_file", self.ca_file, root)
        key = chain = None
        if self.cert_file is not None and self.key_file is not None:
            chain = _read("cert_file", self.cert_file)
            _check_certificates("cert_file", self.cert_file, chain)
            key = _read("key_file", self.key_file)
            if b"PRIVATE KEY-----" not in key:
                raise TLSFileError("key_file", self.key_file, "no PEM private key in it")
            if b"ENCRYPTED" in key:
                raise TLSFileError(
                    "key_file", self.key_file, "an encrypted key; give it unencrypted"
                )
            _check_pair(self.cert_file, self.key_file)
        return grpc.ssl_channel_credentials(root, key, chain)

    def channel_options(self) -> list[tuple[str, Any]]:
        if self.server_name is None:
            return []
        return [("grpc.ssl_target_name_override", self.server_name)]


TLSLike = TLS | bool | None
"""A client's `tls=`: a `TLS`, True (`TLS()`: system roots), or False/None (plaintext)."""


def channel_credentials(
    tls: TLSLike, credentials: grpc.ChannelCredentials | None
) -> tuple[grpc.ChannelCredentials | None, list[tuple[str, Any]]]:
    """The credentials and extra channel options for a client's `tls=` and
    `credentials=` (which it may not be given both of); (None, []): plaintext."""
    if tls is None or tls is False:
        return credentials, []
    if credentials is not None:
        raise ValueError("give tls= or credentials=, not both")
    settings = TLS() if tls is True else tls
    return settings.credentials(), settings.channel_options()


def _read(field: str, path: StrPath) -> bytes:
    try:
        with open(path, "rb") as stream:
            return stream.read()
    except OSError as exc:
        raise TLSFileError(field, path, f"cannot read it: {exc.strerror}") from None


def _check_certificates(field: str, path: StrPath, pem: bytes) -> None:
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_verify_locations(cadata=pem.decode("ascii"))
    except (ssl.SSLError, UnicodeDecodeError, ValueError):
        raise TLSFileError(field, path, "no PEM certificate in it") from None


def _check_pair(cert: StrPath, key: StrPath) -> None:
    def no_password() -> str:
        raise TLSFileError("key_file", key, "an encrypted key; give it unencrypted")

    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_cert_chain(cert, key, password=no_password)
    except ssl.SSLError as exc:
        reason = "not the key of cert_file" if exc.reason == "KEY_VALUES_MISMATCH" else "unusable"
        raise TLSFileError("key_file", key, reason) from None
    except OSError as exc:
        raise TLSFileError("key_file", key, f"cannot read it: {exc.strerror}") from None
