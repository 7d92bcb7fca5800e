"""Redis URLs in logs: the password hidden wherever the URL carries it; ARQ's settings
read a URL as redis-py reads it."""

from __future__ import annotations

import pytest

from batchd.core.redis_access import redact
from batchd.worker.arq_worker import redis_settings


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("redis://127.0.0.1:6379/0", "redis://127.0.0.1:6379/0"),
        ("redis://alice:s3cret@host:6379/0", "redis://alice:***@host:6379/0"),
        ("redis://:s3cret@host/0", "redis://:***@host/0"),
        (
            "rediss://u:p%40ss@host:6380/0?ssl_ca_certs=/ca.pem",
            "rediss://u:***@host:6380/0?ssl_ca_certs=/ca.pem",
        ),
        ("unix://:s3cret@/run/valkey.sock", "unix://:***@/run/valkey.sock"),
        (
            "unix:///run/valkey.sock?db=0&password=s3cret",
            "unix:///run/valkey.sock?db=0&password=***",
        ),
        ("redis://user@host/0", "redis://user@host/0"),
    ],
)
def test_redact_hides_the_password(url: str, shown: str) -> None:
    assert redact(url) == shown


def test_arq_settings_carry_credentials_and_tls() -> None:
    settings = redis_settings(
        "rediss://al%40ice:p%3Aw@redis.internal:6380/2"
        "?ssl_ca_certs=/ca.pem&ssl_certfile=/c.pem&ssl_keyfile=/c.key&ssl_check_hostname=true"
    )
    assert (settings.host, settings.port, settings.database) == ("redis.internal", 6380, 2)
    assert (settings.username, settings.password) == ("al@ice", "p:w")  # decoded
    assert settings.ssl
    assert (settings.ssl_ca_certs, settings.ssl_certfile, settings.ssl_keyfile) == (
        "/ca.pem",
        "/c.pem",
        "/c.key",
    )
    assert settings.ssl_check_hostname is True
    assert settings.retry is not None


def test_arq_settings_of_a_unix_socket_with_a_password() -> None:
    for url in ("unix://:pw@/run/valkey.sock", "unix:///run/valkey.sock?password=pw"):
        settings = redis_settings(url)
        assert (settings.unix_socket_path, settings.password) == ("/run/valkey.sock", "pw")
        assert not settings.ssl
