"""Each tenant's callback signing secret from the settings: the file's, the default
tenant's from its own setting (which wins), and a refusal naming the setting for a
secret too short or a file that is not a JSON object of strings."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from batchd.core.callbacks import CallbackSecrets
from batchd.core.config import SettingError, Settings

LONG = "0123456789abcdef"


def test_no_setting_gives_no_secret() -> None:
    secrets = CallbackSecrets.from_settings(Settings())
    assert secrets.for_tenant("default") is None
    assert secrets.setting_for("default") == "BATCHD_CALLBACK_SECRET"
    assert secrets.setting_for("acme") == "BATCHD_CALLBACK_SECRETS_FILE"


def test_the_file_gives_each_tenant_its_own_and_the_setting_wins_for_default(
    tmp_path: Path,
) -> None:
    path = tmp_path / "secrets.json"
    path.write_text(json.dumps({"acme": "a" + LONG, "default": "d" + LONG}))
    secrets = CallbackSecrets.from_settings(
        Settings(callback_secrets_file=str(path), callback_secret="s" + LONG)
    )
    assert secrets.for_tenant("acme") == ("a" + LONG).encode()
    assert secrets.for_tenant("default") == ("s" + LONG).encode()
    assert secrets.for_tenant("globex") is None


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("not json", "BATCHD_CALLBACK_SECRETS_FILE="),
        ('["a"]', "expected a JSON object of tenant -> secret"),
        ('{"acme": 7}', "expected a JSON object of tenant -> secret"),
        ('{"acme": "short"}', "BATCHD_CALLBACK_SECRETS_FILE: the secret of tenant 'acme'"),
    ],
)
def test_a_bad_file_is_refused_naming_the_setting(
    tmp_path: Path, content: str, message: str
) -> None:
    path = tmp_path / "secrets.json"
    path.write_text(content)
    with pytest.raises(SettingError, match=message):
        CallbackSecrets.from_settings(Settings(callback_secrets_file=str(path)))


def test_a_missing_file_and_a_short_secret_are_refused() -> None:
    with pytest.raises(SettingError, match="BATCHD_CALLBACK_SECRETS_FILE="):
        CallbackSecrets.from_settings(Settings(callback_secrets_file="/nonexistent/secrets"))
    with pytest.raises(SettingError, match=r"BATCHD_CALLBACK_SECRET: .* shorter than 16"):
        CallbackSecrets.from_settings(Settings(callback_secret="short"))
