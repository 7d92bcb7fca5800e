"""The CLI's TLS flags (`--tls`, `--tls-ca`, `--tls-cert`, `--tls-key` and their
BATCHD_TLS* variables), and one-line explanations of failed TLS connections."""

from __future__ import annotations

import argparse
import re
from collections.abc import Mapping

import grpc

from batchd.client import TLS, BatchdError, TLSFileError

__all__ = ["TLSSetupError", "add_tls_flags", "explain", "tls_from"]

# Flag (and argparse dest) -> environment variable.
_FLAGS = {
    "tls_ca": ("--tls-ca", "BATCHD_TLS_CA"),
    "tls_cert": ("--tls-cert", "BATCHD_TLS_CERT"),
    "tls_key": ("--tls-key", "BATCHD_TLS_KEY"),
}
_FIELDS = {"ca_file": "tls_ca", "cert_file": "tls_cert", "key_file": "tls_key"}
_TLS_ENV = "BATCHD_TLS"
_TRUE = {"1", "true", "yes", "on"}


class TLSSetupError(Exception):
    """A TLS flag or file the CLI cannot use; the message names it."""


def add_tls_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("TLS (the server's --tls-cert-file and friends)")
    group.add_argument(
        "--tls",
        action="store_true",
        default=argparse.SUPPRESS,
        help=f"connect with TLS, trusting the system's root CAs (${_TLS_ENV}=1)",
    )
    helps = {
        "tls_ca": "PEM CA certificates to trust instead of the system's (implies --tls)",
        "tls_cert": "PEM client certificate, for a server that requires one (mTLS)",
        "tls_key": "PEM private key of --tls-cert",
    }
    for dest, (flag, env) in _FLAGS.items():
        group.add_argument(
            flag,
            dest=dest,
            default=argparse.SUPPRESS,
            metavar="FILE",
            help=f"{helps[dest]} (${env})",
        )


def tls_from(args: argparse.Namespace, env: Mapping[str, str]) -> TLS | None:
    """The TLS settings of the flags, else the variables; None: plaintext. The files
    are read and checked here, so that a bad one is named by its flag."""
    given = {
        dest: getattr(args, dest, None) or env.get(var) or None for dest, (_, var) in _FLAGS.items()
    }
    wanted = getattr(args, "tls", False) or env.get(_TLS_ENV, "").lower() in _TRUE
    if not wanted and not any(given.values()):
        return None
    if bool(given["tls_cert"]) != bool(given["tls_key"]):
        raise TLSSetupError("--tls-cert and --tls-key go together: give both, or neither")
    tls = TLS(ca_file=given["tls_ca"], cert_file=given["tls_cert"], key_file=given["tls_key"])
    try:
        tls.credentials()
    except TLSFileError as exc:
        dest = _FIELDS[exc.field]
        flag, var = _FLAGS[dest]
        source = flag if getattr(args, dest, None) else f"${var}"
        raise TLSSetupError(f"{source} {exc.path}: {exc.reason}") from None
    return tls


# "... Tls handshake failed (TSI_PROTOCOL_FAILURE): SSL_ERROR_SSL: error:1000007d:SSL
# routines:OPENSSL_internal:CERTIFICATE_VERIFY_FAILED: unable to get local issuer ..."
_HANDSHAKE = re.compile(r"handshake failed.*?OPENSSL_internal:([A-Z0-9_]+)(?::\s*([^:]+))?", re.I)


def explain(error: BatchdError, target: str, tls: TLS | None) -> BatchdError:
    """`error`, its message made plain when it is a TLS connection that failed: which
    end refused, and the flag to look at. Any other error is returned as it is."""
    if error.code != grpc.StatusCode.UNAVAILABLE:
        return error
    message = error.message
    handshake = _HANDSHAKE.search(message)
    if handshake:
        reason = handshake.group(1)
        detail = (handshake.group(2) or "").strip()
        ca_file = None if tls is None else tls.ca_file
        if reason == "WRONG_VERSION_NUMBER":
            hint = "the server does not speak TLS: drop --tls, --tls-ca and $BATCHD_TLS*"
        elif reason == "CERTIFICATE_VERIFY_FAILED" and ca_file is None:
            hint = "its certificate is not signed by a root CA of this system: check --tls-ca"
        elif reason == "CERTIFICATE_VERIFY_FAILED":
            hint = f"its certificate is not signed by a CA in {ca_file}: check --tls-ca"
        else:
            hint = "check --tls-ca"
        why = f"{reason}: {detail}" if detail else reason
        text = f"TLS handshake with {target} failed ({why}) — {hint}"
        return BatchdError(error.code, text)
    if message.endswith("Socket closed") or "Connection reset" in message:
        if tls is None:
            hint = "if it serves TLS, add --tls or --tls-ca"
        elif tls.cert_file is None:
            hint = "if it requires a client certificate (mTLS), give --tls-cert and --tls-key"
        else:
            hint = "it may not accept the client certificate: check --tls-cert and --tls-key"
        return BatchdError(error.code, f"{target} closed the connection — {hint}")
    return error
