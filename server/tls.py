"""TLS on the gRPC port: the server's credentials from the PEM files the settings name
(`tls_cert_file`, `tls_key_file`, and for mTLS `tls_client_ca_file`), checked when the
server starts, and `peer_identity`, the verified client certificate's identity.

With no file set the port is plaintext. With a client CA every client must present a
certificate signed by it: the handshake refuses any other before a call is made.
"""

from __future__ import annotations

import ssl
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Protocol

import grpc

from batchd.core.config import SettingError, Settings

__all__ = ["ServerTLS", "TLSConfigError", "load_server_tls", "peer_identity"]


class TLSConfigError(SettingError):
    """The TLS settings are incomplete, or a file they name is unreadable or malformed;
    the message names the setting and the file."""


@dataclass(frozen=True)
class ServerTLS:
    """The server's PEM material, read and checked."""

    certificate_chain: bytes
    private_key: bytes
    client_ca: bytes | None
    """CA certificates a client certificate must chain to; None: no client certificate
    is asked for (TLS, not mTLS)."""

    @property
    def mutual(self) -> bool:
        return self.client_ca is not None

    def credentials(self) -> grpc.ServerCredentials:
        return grpc.ssl_server_credentials(
            [(self.private_key, self.certificate_chain)],
            root_certificates=self.client_ca,
            require_client_auth=self.mutual,
        )


def load_server_tls(settings: Settings) -> ServerTLS | None:
    """The server's TLS material from the files `settings` names; None when it names
    none (plaintext). Raises TLSConfigError for a certificate without its key (or the
    reverse), a client CA without a certificate, or a file that cannot be read, holds
    no PEM certificate or key, or a key that does not match the certificate."""
    cert, key, ca = settings.tls_cert_file, settings.tls_key_file, settings.tls_client_ca_file
    if not (cert or key or ca):
        return None
    if ca and not (cert and key):
        raise TLSConfigError(
            f"{_name('tls_client_ca_file')} is set, but mTLS needs the server's own "
            f"certificate and key too: set {_name('tls_cert_file')} and {_name('tls_key_file')}"
        )
    if not (cert and key):
        given, missing = (
            ("tls_cert_file", "tls_key_file") if cert else ("tls_key_file", "tls_cert_file")
        )
        raise TLSConfigError(f"{_name(given)} is set but {_name(missing)} is not: TLS needs both")
    chain = _read("tls_cert_file", cert)
    _check_certificates("tls_cert_file", cert, chain)
    private_key = _read("tls_key_file", key)
    _check_key(cert, key, private_key)
    client_ca = None
    if ca:
        client_ca = _read("tls_client_ca_file", ca)
        _check_certificates("tls_client_ca_file", ca, client_ca)
    return ServerTLS(chain, private_key, client_ca)


class _AuthContext(Protocol):
    def auth_context(self) -> Mapping[str, Iterable[bytes]]: ...


def peer_identity(context: _AuthContext) -> str | None:
    """The identity of the client certificate the handshake verified (mTLS), or None
    (plaintext, TLS without a client CA). Of the certificate's subject alternative
    names the first URI (a SPIFFE ID, say) wins, then the first DNS name; without
    either, the subject's common name. Works with any servicer context: grpc.aio's and
    the blocking server's."""
    auth = context.auth_context()
    if list(auth.get("transport_security_type", ())) != [b"ssl"]:
        return None
    for prop in ("peer_uri", "peer_dns", "x509_common_name"):
        first = next(iter(auth.get(prop, ())), None)
        if first:
            return first.decode("utf-8", "replace")
    return None


def _name(field: str) -> str:
    return f"BATCHD_{field.upper()} (--{field.replace('_', '-')})"


def _read(field: str, path: str) -> bytes:
    try:
        with open(path, "rb") as stream:
            return stream.read()
    except OSError as exc:
        raise TLSConfigError(f"{_name(field)}: cannot read {path}: {exc.strerror}") from None


def _check_certificates(field: str, path: str, pem: bytes) -> None:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    try:
        context.load_verify_locations(cadata=pem.decode("ascii"))
    except (ssl.SSLError, UnicodeDecodeError, ValueError):
        raise TLSConfigError(f"{_name(field)}: {path} holds no PEM certificate") from None


def _check_key(cert: str, key: str, pem: bytes) -> None:
    if b"PRIVATE KEY-----" not in pem:
        raise TLSConfigError(f"{_name('tls_key_file')}: {key} holds no PEM private key")
    if b"ENCRYPTED" in pem:
        raise TLSConfigError(
            f"{_name('tls_key_file')}: {key} is encrypted; give batchd an unencrypted key "
            "(and keep the file readable by its user only)"
        )

    def no_password() -> str:
        raise TLSConfigError(f"{_name('tls_key_file')}: {key} is encrypted")

    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        context.load_cert_chain(cert, key, password=no_password)
    except ssl.SSLError as exc:
        if exc.reason == "KEY_VALUES_MISMATCH":
            raise TLSConfigError(
                f"{_name('tls_key_file')}: {key} is not the key of the certificate in {cert}"
            ) from None
        raise TLSConfigError(
            f"{_name('tls_key_file')}: {key} holds no usable private key"
        ) from None
    except OSError as exc:  # replaced or removed since it was read
        raise TLSConfigError(
            f"{_name('tls_key_file')}: cannot read {key}: {exc.strerror}"
        ) from None
