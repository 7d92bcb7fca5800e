"""Who is using the dashboard: sessions holding the caller's own credential, and the
CSRF tokens bound to them.

A browser holds one random session id in an HttpOnly, SameSite=Strict cookie. With
authentication on, logging in stores the credential typed in (an API key or a JWT) in
Redis, sealed (AES-GCM) under a key derived from the session id, at a handle derived
from it too (HKDF): Redis alone yields neither the credential nor a usable cookie. Every
request opens the credential and authenticates it again with the same authenticators as
a gRPC call, so a revoked key or an expired JWT ends the session on every server, and the
session's idle TTL (Settings.dashboard_session_ttl) bounds a forgotten one. With
authentication off the id carries no record: it only binds the CSRF tokens.

CSRF tokens are HMAC-SHA256 of the session id under a secret all servers share
(SessionStore.secret): a page of another origin can neither read one nor forge one,
even if it can plant a cookie (another port of the same host can).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Sequence

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from batchd.core.sessions import SessionStore
from batchd.server.principal import Authenticator, Credentials, Principal

__all__ = ["SESSION_ID_BYTES", "SESSION_ID_LENGTH", "Sessions", "new_session_id"]

SESSION_ID_BYTES = 32
SESSION_ID_LENGTH = 43  # characters of its URL-safe base64, unpadded
_NONCE_BYTES = 12


def new_session_id() -> str:
    return secrets.token_urlsafe(SESSION_ID_BYTES)


def _derive(session_id: str, purpose: bytes) -> bytes:
    return HKDF(
        algorithm=hashes.SHA256(), length=32, salt=None, info=b"batchd-dashboard " + purpose
    ).derive(session_id.encode())


def _handle(session_id: str) -> str:
    return _derive(session_id, b"handle").hex()


def _seal(session_id: str, credential: str) -> bytes:
    nonce = secrets.token_bytes(_NONCE_BYTES)
    return nonce + AESGCM(_derive(session_id, b"seal")).encrypt(nonce, credential.encode(), None)


def _open(session_id: str, sealed: bytes) -> str | None:
    try:
        plain = AESGCM(_derive(session_id, b"seal")).decrypt(
            sealed[:_NONCE_BYTES], sealed[_NONCE_BYTES:], None
        )
    except (InvalidTag, ValueError):
        return None
    return plain.decode()


class Sessions:
    """Logins, the principal behind a session id, logouts, CSRF tokens."""

    def __init__(
        self, store: SessionStore, authenticators: Sequence[Authenticator], ttl: float
    ) -> None:
        self.store = store
        self.authenticators = tuple(authenticators)
        self.ttl = ttl
        self._secret: bytes | None = None

    @property
    def auth_on(self) -> bool:
        return bool(self.authenticators)

    async def authenticate(self, credential: str) -> Principal | None:
        """The principal of a bearer credential, as the gRPC interceptor would find it."""
        credentials = Credentials(bearer=credential, peer_identity=None)
        for authenticator in self.authenticators:
            found = await authenticator.authenticate(credentials)
            if found is not None:
                return found
        return None

    async def login(self, credential: str) -> tuple[str, Principal] | None:
        """A new session for `credential` (its id and principal), or None when the
        credential is not accepted. Always a new id: one planted before login is useless."""
        principal = await self.authenticate(credential)
        if principal is None:
            return None
        session_id = new_session_id()
        await self.store.create(_handle(session_id), _seal(session_id, credential), self.ttl)
        return session_id, principal

    async def credential(self, session_id: str) -> str | None:
        """The credential of a live session (its idle TTL started again), else None."""
        sealed = await self.store.read(_handle(session_id), self.ttl)
        return None if sealed is None else _open(session_id, sealed)

    async def resume(self, session_id: str) -> tuple[str, Principal] | None:
        """The credential and principal of a live session whose credential is still
        accepted; a session whose credential is not is ended."""
        credential = await self.credential(session_id)
        if credential is None:
            return None
        principal = await self.authenticate(credential)
        if principal is None:
            await self.logout(session_id)
            return None
        return credential, principal

    async def logout(self, session_id: str) -> None:
        await self.store.delete(_handle(session_id))

    async def csrf_token(self, session_id: str) -> str:
        mac = hmac.new(await self._key(), b"csrf " + session_id.encode(), hashlib.sha256)
        return mac.hexdigest()

    async def csrf_ok(self, session_id: str, token: str) -> bool:
        return bool(token) and hmac.compare_digest(await self.csrf_token(session_id), token)

    async def _key(self) -> bytes:
        if self._secret is None:
            self._secret = await self.store.secret()
        return self._secret
