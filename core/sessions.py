"""The dashboard's sessions in Redis: sealed blobs under a handle, with an idle TTL, and
the secret every server signs the dashboard's CSRF tokens with.

The store keeps bytes it cannot read: the server seals a session's credential with a key
derived from the session id, which only the browser holds (batchd.server.dashboard). A
logout (or the TTL) deletes the record on every server at once: servers keep nothing.
"""

from __future__ import annotations

import secrets

from redis.asyncio import Redis

from batchd.core.keys import Keys

__all__ = ["SECRET_BYTES", "SessionStore"]

SECRET_BYTES = 32


class SessionStore:
    """The dashboard sessions and CSRF secret of one batchd installation."""

    def __init__(self, redis: Redis, keys: Keys | None = None) -> None:
        self.redis = redis
        self.keys = keys or Keys()

    async def create(self, handle: str, sealed: bytes, ttl: float) -> None:
        await self.redis.set(self.keys.dashboard_session(handle), sealed, px=_ms(ttl))

    async def read(self, handle: str, ttl: float) -> bytes | None:
        """The session's sealed blob, its idle TTL started again; None once it is gone."""
        found: bytes | None = await self.redis.getex(
            self.keys.dashboard_session(handle), px=_ms(ttl)
        )
        return found

    async def delete(self, handle: str) -> None:
        await self.redis.delete(self.keys.dashboard_session(handle))

    async def secret(self) -> bytes:
        """The installation's CSRF secret, made now if no server has made it yet."""
        made = secrets.token_bytes(SECRET_BYTES)
        # SET NX GET (Redis 7): the secret already there, or nil when ours was set.
        found: bytes | None = await self.redis.set(
            self.keys.dashboard_secret, made, nx=True, get=True
        )
        return made if found is None else found


def _ms(seconds: float) -> int:
    return max(1, round(seconds * 1000))
