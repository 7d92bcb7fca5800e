"""`batchd-admin`: API keys, made and revoked straight in the Redis the servers read.

    batchd-admin token create --tenant acme --role submitter [--name billing]
    batchd-admin token list
    batchd-admin token revoke ID

`create` prints the key once (the last word of its output); nothing can show it again.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from collections.abc import Sequence

from redis.asyncio import Redis
from redis.exceptions import RedisError

from batchd.core.credentials import ApiKey, CredentialStore
from batchd.core.keys import Keys
from batchd.core.redis_access import connect, redact
from batchd.server.principal import TENANT_PATTERN, Role

__all__ = ["main"]

_ROLES = ", ".join(role.name.lower() for role in Role)


def _tenant(text: str) -> str:
    if not TENANT_PATTERN.fullmatch(text):
        raise argparse.ArgumentTypeError(
            f"bad tenant {text!r}: lower-case letters, digits and dashes, 1 to 32, "
            "starting with a letter or digit"
        )
    return text


def _role(text: str) -> str:
    try:
        return Role.parse(text).name.lower()
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="batchd-admin", description="Manage batchd API keys.")
    parser.add_argument(
        "--redis-url",
        default=os.environ.get("BATCHD_REDIS_URL") or os.environ.get("REDIS_URL") or "",
        help="the servers' Redis [BATCHD_REDIS_URL]",
    )
    parser.add_argument(
        "--key-prefix",
        default=os.environ.get("BATCHD_KEY_PREFIX", "batchd:"),
        help="the servers' key prefix [BATCHD_KEY_PREFIX, default 'batchd:']",
    )
    nouns = parser.add_subparsers(dest="noun", required=True)
    token = nouns.add_parser("token", help="API keys").add_subparsers(dest="verb", required=True)
    create = token.add_parser("create", help="make a key and print it, once")
    create.add_argument("--tenant", required=True, type=_tenant, help="whose batches")
    create.add_argument("--role", required=True, type=_role, help=f"one of {_ROLES}")
    create.add_argument("--name", default="", help="what the key is for (listed)")
    token.add_parser("list", help="every key (never the key itself)")
    revoke = token.add_parser("revoke", help="delete a key: servers refuse it within seconds")
    revoke.add_argument("key_id", metavar="ID", help="the key's id, as `list` shows it")
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    if not args.redis_url:
        sys.exit("batchd-admin: set BATCHD_REDIS_URL or --redis-url to the servers' Redis")
    try:
        redis = connect(args.redis_url)
    except ValueError as exc:
        sys.exit(f"batchd-admin: the Redis URL {redact(args.redis_url)} is not usable: {exc}")
    try:
        sys.exit(asyncio.run(_run(redis, args)))
    except (RedisError, OSError) as exc:
        sys.exit(f"batchd-admin: cannot reach Redis at {redact(args.redis_url)}: {exc}")


async def _run(redis: Redis, args: argparse.Namespace) -> int:
    try:
        store = CredentialStore(redis, Keys(args.key_prefix))
        if args.verb == "create":
            key, record = await store.create(args.tenant, args.role, args.name)
            print(
                f"created key {record.key_id} for tenant {record.tenant}, role {record.role} "
                "(shown once; keep it secret):"
            )
            print(key)
            return 0
        if args.verb == "list":
            _print_keys(await store.list())
            return 0
        if await store.revoke(args.key_id):
            print(f"revoked {args.key_id}")
            return 0
        print(f"batchd-admin: no key {args.key_id}", file=sys.stderr)
        return 1
    finally:
        await redis.aclose()


def _when(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seconds))


def _print_keys(records: list[ApiKey]) -> None:
    if not records:
        print("no keys", file=sys.stderr)
        return
    rows = [("ID", "TENANT", "ROLE", "NAME", "CREATED", "LAST USED")]
    rows += [
        (r.key_id, r.tenant, r.role, r.name or "-", _when(r.created), _when(r.last_used))
        for r in records
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        cells = (cell.ljust(width) for cell, width in zip(row, widths, strict=True))
        print("  ".join(cells).rstrip())


if __name__ == "__main__":
    main()
