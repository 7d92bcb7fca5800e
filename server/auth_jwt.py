"""JWT authentication (`--auth jwt`): bearer tokens from an identity provider.

`JwtAuthenticator` checks a token's signature with a key of the provider's JWKS (a file,
or an https URL fetched with aiohttp), its `alg` against `jwt_algorithms`, its `iss`,
`aud`, `exp`, `nbf` and `iat`, and reads the caller's tenant and role from the claims
`jwt_tenant_claim` and `jwt_role_claim`. PyJWT does the cryptography. Any failure is
None, logged at debug with its reason and never the token. `--auth jwt` makes one with
`authenticator(settings)`. See docs/security.md, "JWT".
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import jwt
from jwt.algorithms import get_default_algorithms

from batchd.core.config import SettingError, Settings
from batchd.core.logs import get_logger
from batchd.server.principal import TENANT_PATTERN, Credentials, Principal, Role

__all__ = ["JwksError", "JwtAuthenticator", "JwtConfig", "authenticator"]

log = get_logger(__name__)

# Algorithms that verify with a public key. HMAC (HS*) would take a JWKS's public key
# for a shared secret, which anyone can read: never accepted, nor `none`.
ASYMMETRIC = frozenset(
    {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"}
)
# A token naming a key the JWKS lacks fetches the JWKS again, at most this often.
MIN_REFETCH_INTERVAL = 30.0
# A check waits this long at most for a JWKS fetch, then goes on with the keys it knows.
FETCH_TIMEOUT = 5.0
MAX_JWKS_BYTES = 1 << 20
# Longer bearer values are not parsed at all.
MAX_TOKEN_CHARS = 16 * 1024
# Claims a token must carry, whatever else it holds.
REQUIRED_CLAIMS = ["exp", "iss", "aud", "sub"]


class JwksError(Exception):
    """The JWKS could not be fetched or holds no usable key; the message says why."""


@dataclass(frozen=True)
class JwtConfig:
    """The jwt_* settings, checked: `from_settings` raises SettingError naming the one
    that is missing or wrong."""

    jwks: str
    issuer: str
    audience: str
    algorithms: frozenset[str]
    leeway: float
    refresh: float
    tenant_claim: str
    role_claim: str

    @classmethod
    def from_settings(cls, settings: Settings) -> JwtConfig:
        for name in ("jwt_issuer", "jwt_audience", "jwt_jwks"):
            if not getattr(settings, name).strip():
                raise SettingError(
                    f"--auth jwt needs --{name.replace('_', '-')} (BATCHD_{name.upper()})"
                )
        if settings.jwt_jwks_refresh <= 0:
            raise SettingError("BATCHD_JWT_JWKS_REFRESH: must be more than 0 seconds")
        if settings.jwt_leeway < 0:
            raise SettingError("BATCHD_JWT_LEEWAY: must be 0 seconds or more")
        for name in ("jwt_tenant_claim", "jwt_role_claim"):
            if not all(getattr(settings, name).strip().split(".")):
                raise SettingError(f"BATCHD_{name.upper()}: a claim name or a dotted path")
        return cls(
            jwks=_checked_jwks(settings.jwt_jwks.strip()),
            issuer=settings.jwt_issuer.strip(),
            audience=settings.jwt_audience.strip(),
            algorithms=_checked_algorithms(settings.jwt_algorithms),
            leeway=settings.jwt_leeway,
            refresh=settings.jwt_jwks_refresh,
            tenant_claim=settings.jwt_tenant_claim.strip(),
            role_claim=settings.jwt_role_claim.strip(),
        )

    @property
    def jwks_is_url(self) -> bool:
        return urlsplit(self.jwks).scheme in ("http", "https")


def _checked_jwks(jwks: str) -> str:
    """An https URL, a loopback http one (tests, development), or a file path."""
    parts = urlsplit(jwks)
    if parts.scheme == "https" or (parts.scheme == "http" and _is_loopback(parts.hostname)):
        return jwks
    if parts.scheme == "http":
        raise SettingError(
            "BATCHD_JWT_JWKS: an http URL is allowed only to a loopback address; use https"
        )
    if parts.scheme and len(parts.scheme) > 1:  # not a Windows drive letter
        raise SettingError("BATCHD_JWT_JWKS: an https URL or a file path")
    return jwks


def _is_loopback(host: str | None) -> bool:
    if host is None:
        return False
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _checked_algorithms(spec: str) -> frozenset[str]:
    names = [name.strip() for name in spec.split(",") if name.strip()]
    if not names:
        raise SettingError("BATCHD_JWT_ALGORITHMS: name at least one algorithm")
    supported = ASYMMETRIC & get_default_algorithms().keys()
    for name in names:
        if name not in supported:
            choices = ", ".join(sorted(supported))
            raise SettingError(
                f"BATCHD_JWT_ALGORITHMS: {name!r} is not accepted (one of {choices}: "
                "algorithms verified with the identity provider's public keys)"
            )
    return frozenset(names)


class _Rejected(Exception):
    """A token does not authenticate; the argument is the reason logged (no token)."""


def authenticator(settings: Settings) -> JwtAuthenticator:
    """The JWT authenticator `settings` describe; SettingError names a setting that is
    missing or wrong. Its JWKS is fetched by `await start()`, or for the first token."""
    return JwtAuthenticator(settings)


class JwtAuthenticator:
    """Authenticates a bearer JWT against the configured identity provider.

    `start()` loads the JWKS, raising JwksError when it cannot (without it, the first
    token loads it). Keys fetched `jwt_jwks_refresh` seconds ago or more are fetched
    again before the next token is checked; a fetch that fails keeps the keys known and
    is tried again after as long. A token naming a key the JWKS lacks fetches it again,
    at most every MIN_REFETCH_INTERVAL seconds, so such tokens cannot make the server
    hammer the provider. Fetches never block the event loop, and need no closing."""

    def __init__(self, settings: Settings, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.config = JwtConfig.from_settings(settings)
        self._clock = clock
        self._keys: Mapping[str, jwt.PyJWK] = {}
        self._last_attempt = -math.inf
        self._lock = asyncio.Lock()

    async def start(self) -> None:
        async with self._lock:
            await self._fetch()

    async def authenticate(self, credentials: Credentials) -> Principal | None:
        token = credentials.bearer
        if not token:
            return None
        try:
            return await self._verify(token)
        except _Rejected as exc:
            log.debug("jwt_rejected", reason=str(exc))
            return None

    async def _verify(self, token: str) -> Principal:
        if len(token) > MAX_TOKEN_CHARS:
            raise _Rejected("too_long")
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError as exc:
            raise _Rejected(f"malformed: {type(exc).__name__}") from None
        alg, kid = header.get("alg"), header.get("kid")
        if not isinstance(alg, str) or alg not in self.config.algorithms:
            raise _Rejected("alg_not_allowed")
        if not isinstance(kid, str) or not kid:
            raise _Rejected("no_kid")
        key = await self._key(kid)
        if key is None:
            raise _Rejected("unknown_kid")
        # A key verifies with its own algorithm only (the JWKS's `alg`, or its type's).
        if key.algorithm_name != alg:
            raise _Rejected("alg_not_the_keys")
        try:
            claims = jwt.decode(
                token,
                key=key,
                algorithms=[alg],
                issuer=self.config.issuer,
                audience=self.config.audience,
                leeway=self.config.leeway,
                options={"require": REQUIRED_CLAIMS, "enforce_minimum_key_length": True},
            )
        except jwt.PyJWTError as exc:
            raise _Rejected(type(exc).__name__) from None
        return self._principal(claims)

    def _principal(self, claims: Mapping[str, Any]) -> Principal:
        subject = claims["sub"]
        if not isinstance(subject, str) or not subject:
            raise _Rejected("no_subject")
        tenant = _claim(claims, self.config.tenant_claim)
        if not isinstance(tenant, str) or not TENANT_PATTERN.fullmatch(tenant):
            raise _Rejected("no_valid_tenant")
        role = _highest_role(_claim(claims, self.config.role_claim))
        if role is None:
            raise _Rejected("no_known_role")
        # Prefixed as API keys' (`key:`) and certificates' (`cert:`) are: no JWT can pass
        # for one of those in the audit log.
        return Principal(subject=f"jwt:{subject}", tenant=tenant, role=role)

    async def _key(self, kid: str) -> jwt.PyJWK | None:
        if self._clock() - self._last_attempt >= self.config.refresh:
            async with self._lock:
                if self._clock() - self._last_attempt >= self.config.refresh:
                    await self._fetch_or_log()
        return self._keys.get(kid) or await self._refetch_for(kid)

    async def _refetch_for(self, kid: str) -> jwt.PyJWK | None:
        """The key `kid` after fetching the JWKS again, unless it was fetched (or tried)
        less than MIN_REFETCH_INTERVAL seconds ago."""
        async with self._lock:
            if kid in self._keys:  # fetched while this call waited for the lock
                return self._keys[kid]
            if self._clock() - self._last_attempt < MIN_REFETCH_INTERVAL:
                return None
            await self._fetch_or_log()
            return self._keys.get(kid)

    async def _fetch_or_log(self) -> None:
        try:
            await self._fetch()
        except JwksError as exc:
            log.warning("jwks_fetch_failed", error=str(exc), keys_kept=len(self._keys))

    async def _fetch(self) -> None:
        """Replaces the keys with the JWKS's (the lock held)."""
        self._last_attempt = self._clock()
        raw = await (self._download() if self.config.jwks_is_url else self._read_file())
        keys = await asyncio.to_thread(_parse_jwks, raw, self.config.algorithms)
        if keys.keys() != self._keys.keys():
            log.info("jwks_loaded", kids=sorted(keys))
        self._keys = keys

    async def _read_file(self) -> bytes:
        try:
            raw = await asyncio.to_thread(Path(self.config.jwks).read_bytes)
        except OSError as exc:
            raise JwksError(f"cannot read {self.config.jwks}: {exc.strerror}") from None
        if len(raw) > MAX_JWKS_BYTES:
            raise JwksError(f"{self.config.jwks}: larger than {MAX_JWKS_BYTES} bytes")
        return raw

    async def _download(self) -> bytes:
        url = self.config.jwks
        timeout = aiohttp.ClientTimeout(total=FETCH_TIMEOUT)
        try:
            # A session per fetch (minutes apart), so there is nothing to close.
            async with (
                aiohttp.ClientSession(timeout=timeout, cookie_jar=aiohttp.DummyCookieJar()) as s,
                # No redirects: one could lead from https to plain http.
                s.get(url, allow_redirects=False) as response,
            ):
                if response.status != 200:
                    raise JwksError(f"{url}: HTTP {response.status}")
                raw = bytearray()
                async for chunk in response.content.iter_chunked(64 * 1024):
                    raw += chunk
                    if len(raw) > MAX_JWKS_BYTES:
                        raise JwksError(f"{url}: larger than {MAX_JWKS_BYTES} bytes")
                return bytes(raw)
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise JwksError(f"{url}: {type(exc).__name__}: {exc}") from None


def _parse_jwks(raw: bytes, algorithms: frozenset[str]) -> dict[str, jwt.PyJWK]:
    """The signing keys of a JWKS document by `kid`: those with a kid, meant for
    signatures, of an allowed algorithm. Symmetric (`oct`) keys are skipped."""
    try:
        document = json.loads(raw)
    except ValueError:
        raise JwksError("the JWKS is not JSON") from None
    entries = document.get("keys") if isinstance(document, dict) else None
    if not isinstance(entries, list):
        raise JwksError('the JWKS has no "keys" list')
    keys: dict[str, jwt.PyJWK] = {}
    for entry in entries:
        if not isinstance(entry, dict) or entry.get("kty") == "oct":
            continue
        kid = entry.get("kid")
        if not isinstance(kid, str) or not kid or entry.get("use", "sig") != "sig":
            continue
        try:
            key = jwt.PyJWK(entry)
        except Exception:  # a malformed or unsupported key: the others still serve
            continue
        if key.algorithm_name in algorithms:
            keys.setdefault(kid, key)
    if not keys:
        raise JwksError("the JWKS holds no signing key of an allowed algorithm")
    return keys


def _claim(claims: Mapping[str, Any], name: str) -> Any:
    """A claim by name, or by dotted path into nested objects (`realm_access.role`); a
    claim named with the dots themselves (`https://example.com/tenant`) wins."""
    if name in claims:
        return claims[name]
    value: Any = claims
    for part in name.split("."):
        if not isinstance(value, Mapping) or part not in value:
            return None
        value = value[part]
    return value


def _highest_role(value: Any) -> Role | None:
    """The role a claim names: a name, or the highest known one of a list of names."""
    names = value if isinstance(value, list) else [value]
    roles = []
    for name in names:
        if isinstance(name, str):
            with contextlib.suppress(ValueError):
                roles.append(Role.parse(name))
    return max(roles, default=None)
