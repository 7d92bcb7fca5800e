"""Each tenant's callback signing secret, from the operator's settings.

`callback_secrets_file` is a JSON object of tenant -> secret; `callback_secret` is the
default tenant's (the one of batches submitted without authentication) and wins over
the file's entry for it. Servers read them to refuse a callback that could not be
signed; workers to sign. Both read them once, at start.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from batchd.core.config import SettingError, Settings
from batchd.core.domain import DEFAULT_TENANT

__all__ = ["MIN_SECRET_LENGTH", "SECRETS_FILE_SETTING", "SECRET_SETTING", "CallbackSecrets"]

SECRET_SETTING: Final = "BATCHD_CALLBACK_SECRET"
SECRETS_FILE_SETTING: Final = "BATCHD_CALLBACK_SECRETS_FILE"
# Shorter secrets are refused at start: an HMAC key should not be guessable.
MIN_SECRET_LENGTH: Final = 16


@dataclass(frozen=True)
class CallbackSecrets:
    by_tenant: Mapping[str, bytes] = field(default_factory=dict)

    @classmethod
    def from_settings(cls, settings: Settings) -> CallbackSecrets:
        """The secrets the settings give; SettingError naming the setting at fault."""
        found: dict[str, str] = {}
        path = settings.callback_secrets_file.strip()
        if path:
            try:
                data = json.loads(Path(path).read_text(encoding="utf-8"))
            except (OSError, ValueError) as exc:
                raise SettingError(f"{SECRETS_FILE_SETTING}={path!r}: {exc}") from None
            if not isinstance(data, dict) or not all(
                isinstance(k, str) and isinstance(v, str) for k, v in data.items()
            ):
                raise SettingError(
                    f"{SECRETS_FILE_SETTING}={path!r}: expected a JSON object of "
                    "tenant -> secret (strings)"
                )
            found.update(data)
        if settings.callback_secret:
            found[DEFAULT_TENANT] = settings.callback_secret
        for tenant, secret in found.items():
            if len(secret) < MIN_SECRET_LENGTH:
                where = SECRET_SETTING if tenant == DEFAULT_TENANT else SECRETS_FILE_SETTING
                raise SettingError(
                    f"{where}: the secret of tenant {tenant!r} is shorter than "
                    f"{MIN_SECRET_LENGTH} characters"
                )
        return cls({tenant: secret.encode() for tenant, secret in found.items()})

    def for_tenant(self, tenant: str) -> bytes | None:
        return self.by_tenant.get(tenant)

    def setting_for(self, tenant: str) -> str:
        """The setting that would give `tenant` a secret (for a refusal's message)."""
        return SECRET_SETTING if tenant == DEFAULT_TENANT else SECRETS_FILE_SETTING
