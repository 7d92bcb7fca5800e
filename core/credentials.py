"""API keys in Redis: created, listed, revoked, and looked up by their digest.

A key reads `bd_<id>_<secret>`: `id` is public (it names the key in listings, audit
logs and revocations), `secret` is 32 random bytes. Redis holds only the key's SHA-256
digest (Keys.api_key), so a copy of the database lets nobody call the service. A plain
hash is enough here, where a password would need a slow salted one: the secret has 256
bits of entropy, so there is nothing to guess and no dictionary to precompute; and
a fast hash keeps the per-call check cheap. Every server replica reads the same keys,
so a revocation reaches each one as soon as its cache (batchd.server.authenticators)
lets go. See README.md, "Security".
"""

from __future__ import annotations

import hashlib
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass

from redis.asyncio import Redis

from batchd.core.keys import Keys

__all__ = ["KEY_PREFIX", "ApiKey", "CredentialStore", "digest", "key_id"]

KEY_PREFIX = "bd_"
_ID_BYTES = 6  # 12 hex digits: unique among any number of keys an operator makes
_SECRET_BYTES = 32


@dataclass(frozen=True)
class ApiKey:
    """What batchd knows of a key (never the key): its id, whose it is, its role name
    (batchd.server.principal.Role), a free-form name, when it was made and last used."""

    key_id: str
    tenant: str
    role: str
    name: str
    created: float
    last_used: float | None = None


def digest(key: str) -> str:
    """The SHA-256 hex digest under which a key is stored."""
    return hashlib.sha256(key.encode()).hexdigest()


def key_id(key: str) -> str | None:
    """The public id of a key of our format, or None for anything else."""
    prefix, _, rest = key.partition(KEY_PREFIX)
    ident, sep, secret = rest.partition("_")
    if prefix or not sep or not secret or len(ident) != 2 * _ID_BYTES:
        return None
    return ident


class CredentialStore:
    """The API keys of one batchd installation (one Redis and key prefix)."""

    def __init__(
        self, redis: Redis, keys: Keys | None = None, *, clock: Callable[[], float] = time.time
    ) -> None:
        self.redis = redis
        self.keys = keys or Keys()
        self.clock = clock

    async def create(self, tenant: str, role: str, name: str = "") -> tuple[str, ApiKey]:
        """A new key for `tenant` with `role`: the key itself (shown once, kept nowhere)
        and its record. The caller checks tenant and role."""
        ident = secrets.token_hex(_ID_BYTES)
        key = f"{KEY_PREFIX}{ident}_{secrets.token_urlsafe(_SECRET_BYTES)}"
        record = ApiKey(ident, tenant, role, name, round(self.clock(), 3))
        hashed = digest(key)
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hset(
                self.keys.api_key(hashed),
                mapping={
                    "id": ident,
                    "tenant": tenant,
                    "role": role,
                    "name": name,
                    "created": str(record.created),
                },
            )
            pipe.hset(self.keys.api_keys, ident, hashed)
            await pipe.execute()
        return key, record

    async def lookup(self, key: str) -> ApiKey | None:
        """The record of `key`, or None if there is no such key (never was, or revoked)."""
        fields = await self.redis.hgetall(self.keys.api_key(digest(key)))  # type: ignore[misc]
        if not fields:
            return None
        return _record({k.decode(): v.decode() for k, v in fields.items()})

    async def touch(self, ident: str) -> None:
        """Notes that key `ident` was used now."""
        await self.redis.hset(self.keys.api_keys_used, ident, str(round(self.clock(), 3)))  # type: ignore[misc]

    async def list(self) -> list[ApiKey]:
        """Every key, oldest first."""
        digests = await self.redis.hgetall(self.keys.api_keys)  # type: ignore[misc]
        used = await self.redis.hgetall(self.keys.api_keys_used)  # type: ignore[misc]
        async with self.redis.pipeline(transaction=False) as pipe:
            for hashed in digests.values():
                pipe.hgetall(self.keys.api_key(hashed.decode()))
            found = await pipe.execute()
        records = []
        for fields in found:
            if fields:  # revoked between the two reads
                record = _record({k.decode(): v.decode() for k, v in fields.items()})
                last = used.get(record.key_id.encode())
                records.append(
                    ApiKey(**{**record.__dict__, "last_used": float(last) if last else None})
                )
        return sorted(records, key=lambda r: (r.created, r.key_id))

    async def revoke(self, ident: str) -> bool:
        """Deletes key `ident`; False if there is none."""
        hashed: bytes | None = await self.redis.hget(self.keys.api_keys, ident)  # type: ignore[misc]
        if hashed is None:
            return False
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.delete(self.keys.api_key(hashed.decode()))
            pipe.hdel(self.keys.api_keys, ident)
            pipe.hdel(self.keys.api_keys_used, ident)
            await pipe.execute()
        return True


def _record(fields: dict[str, str]) -> ApiKey:
    return ApiKey(
        key_id=fields["id"],
        tenant=fields["tenant"],
        role=fields["role"],
        name=fields.get("name", ""),
        created=float(fields.get("created", 0)),
    )
