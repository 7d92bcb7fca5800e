"""The `batchd` command's credentials: --token or BATCHD_TOKEN, and what to do when the
service refuses them."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping

import grpc

__all__ = ["TOKEN_ENV", "add_token_flag", "auth_hint", "token_from"]

TOKEN_ENV = "BATCHD_TOKEN"


def add_token_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--token",
        default=argparse.SUPPRESS,
        metavar="KEY",
        help=f"the API key or JWT sent with every call (default: ${TOKEN_ENV}); prefer the "
        "variable: a flag shows in the process list",
    )


def token_from(args: argparse.Namespace, env: Mapping[str, str]) -> str | None:
    token = (getattr(args, "token", None) or env.get(TOKEN_ENV) or "").strip()
    if any(c.isspace() or not c.isprintable() for c in token):
        print(f"error: --token / {TOKEN_ENV}: one word, without spaces", file=sys.stderr)
        raise SystemExit(2)
    return token or None


def auth_hint(code: grpc.StatusCode) -> str | None:
    """What to do about an UNAUTHENTICATED or PERMISSION_DENIED answer, else None."""
    if code == grpc.StatusCode.UNAUTHENTICATED:
        return f"pass a key with --token or {TOKEN_ENV}"
    if code == grpc.StatusCode.PERMISSION_DENIED:
        return "use a key with that role (batchd-admin token create --role ...)"
    return None
