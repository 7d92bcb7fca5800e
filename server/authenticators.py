"""The ways a caller may authenticate (`--auth`): API keys (`tokens`), JWT (`jwt`, in
batchd.server.auth_jwt) and client certificates (`mtls`). Each is an `Authenticator`
(batchd.server.principal); `build_authenticators` makes those the settings name, in
their order, and refuses a setting that cannot work, naming it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

from cachetools import TTLCache
from redis.asyncio import Redis

from batchd.core.config import SettingError, Settings
from batchd.core.credentials import ApiKey, CredentialStore, digest, key_id
from batchd.core.keys import Keys
from batchd.core.logs import get_logger
from batchd.server.auth_jwt import authenticator as jwt_authenticator
from batchd.server.principal import TENANT_PATTERN, Authenticator, Credentials, Principal, Role
from batchd.server.tls import peer_identity

__all__ = [
    "MODES",
    "MtlsAuthenticator",
    "TokenAuthenticator",
    "build_authenticators",
    "parse_modes",
    "peer_identity",
]

log = get_logger(__name__)

MODES = ("tokens", "jwt", "mtls")
# Distinct keys a server remembers at once; more only cost more Redis lookups.
CACHE_SIZE = 10_000


def parse_modes(text: str) -> tuple[str, ...]:
    """The authentication modes of `--auth` (empty: none); SettingError names a bad one."""
    modes = tuple(dict.fromkeys(m.strip() for m in text.split(",") if m.strip()))
    if modes in {(), ("none",)}:
        return ()
    for mode in modes:
        if mode not in MODES:
            raise SettingError(
                f"--auth {text!r}: unknown mode {mode!r} (none, or a comma-separated "
                f"list of {', '.join(MODES)})"
            )
    return modes


class TokenAuthenticator:
    """API keys (batchd.core.credentials), each looked up in Redis at most once per
    `cache_seconds` per server, unknown ones included: a revoked key stops working on
    every replica within `cache_seconds` of its revocation."""

    def __init__(self, store: CredentialStore, cache_seconds: float) -> None:
        self.store = store
        self.cache: TTLCache[str, ApiKey | None] | None = (
            TTLCache(CACHE_SIZE, cache_seconds) if cache_seconds > 0 else None
        )

    async def authenticate(self, credentials: Credentials) -> Principal | None:
        key = credentials.bearer
        if not key or key_id(key) is None:
            return None
        record = await self._lookup(key)
        if record is None:
            return None
        try:
            role = Role.parse(record.role)
        except ValueError:  # written by hand, or by a later version
            log.warning("api_key_unusable", key_id=record.key_id, role=record.role)
            return None
        return Principal(subject=f"key:{record.key_id}", tenant=record.tenant, role=role)

    async def _lookup(self, key: str) -> ApiKey | None:
        hashed = digest(key)  # the cache holds digests, not keys
        if self.cache is not None and hashed in self.cache:
            return self.cache[hashed]
        record = await self.store.lookup(key)
        if self.cache is not None:
            self.cache[hashed] = record
        if record is not None:
            await self.store.touch(record.key_id)  # once per cache period at most
        return record


class MtlsAuthenticator:
    """Client certificates: the verified certificate's identity (`peer_identity`) names
    the caller, and the principals file its tenant and role. A subject not in the file
    does not authenticate."""

    def __init__(self, principals: Mapping[str, Principal]) -> None:
        self.principals = dict(principals)

    @classmethod
    def from_file(cls, path: str) -> MtlsAuthenticator:
        """Reads `{"<identity>": {"tenant": "acme", "role": "submitter"}, ...}`."""
        if not path:
            raise SettingError("--auth mtls needs --mtls-principals (BATCHD_MTLS_PRINCIPALS)")
        try:
            data = json.loads(Path(path).read_text())
        except (OSError, ValueError) as exc:
            raise SettingError(f"--mtls-principals {path}: {exc}") from None
        if not isinstance(data, dict):
            raise SettingError(f"--mtls-principals {path}: expected a JSON object")
        principals = {}
        for identity, entry in data.items():
            where = f"--mtls-principals {path}: {identity!r}"
            if not isinstance(entry, dict):
                raise SettingError(f"{where}: expected {{tenant, role}}")
            tenant = entry.get("tenant")
            if not isinstance(tenant, str) or not TENANT_PATTERN.fullmatch(tenant):
                raise SettingError(f"{where}: bad tenant {tenant!r}")
            try:
                role = Role.parse(str(entry.get("role", "")))
            except ValueError as exc:
                raise SettingError(f"{where}: {exc}") from None
            principals[identity] = Principal(subject=f"cert:{identity}", tenant=tenant, role=role)
        return cls(principals)

    async def authenticate(self, credentials: Credentials) -> Principal | None:
        if credentials.peer_identity is None:
            return None
        return self.principals.get(credentials.peer_identity)


def build_authenticators(settings: Settings, redis: Redis) -> list[Authenticator]:
    """The authenticators of `settings.auth`, in order (none: authentication off)."""
    found: list[Authenticator] = []
    for mode in parse_modes(settings.auth):
        if mode == "tokens":
            store = CredentialStore(redis, Keys(settings.key_prefix))
            found.append(TokenAuthenticator(store, settings.auth_cache_seconds))
        elif mode == "mtls":
            found.append(MtlsAuthenticator.from_file(settings.mtls_principals))
        else:
            found.append(jwt_authenticator(settings))  # its JWKS loads with the first token
    return found
