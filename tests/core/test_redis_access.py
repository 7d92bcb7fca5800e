"""Reaching Redis: the password hidden wherever a URL carries it in logs; the worker's
client reads a URL as redis-py reads it; a redis+sentinel:// URL names Sentinels, and
its client follows the primary they name through a failover."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path
from typing import cast

import pytest
from redis.asyncio.connection import SSLConnection
from redis.exceptions import ConnectionError as RedisConnectionError
from support.polling import poll
from support.sentinel import sentinel_group

from batchd.core.redis_access import (
    SentinelTarget,
    connect,
    parse_sentinel_url,
    redact,
    redis_access_problem,
)
from batchd.worker.arq_worker import arq_pool


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


def test_the_workers_client_carries_credentials_and_tls() -> None:
    pool = arq_pool(
        "rediss://al%40ice:p%3Aw@redis.internal:6380/2"
        "?ssl_ca_certs=/ca.pem&ssl_certfile=/c.pem&ssl_keyfile=/c.key&ssl_check_hostname=true"
    )
    options = pool.connection_pool.connection_kwargs
    assert (options["host"], options["port"], options["db"]) == ("redis.internal", 6380, 2)
    assert (options["username"], options["password"]) == ("al@ice", "p:w")  # decoded
    assert issubclass(pool.connection_pool.connection_class, SSLConnection)
    assert (options["ssl_ca_certs"], options["ssl_certfile"], options["ssl_keyfile"]) == (
        "/ca.pem",
        "/c.pem",
        "/c.key",
    )
    assert options["ssl_check_hostname"] is True
    assert options["retry"] is not None


def test_the_workers_client_of_a_unix_socket_with_a_password() -> None:
    for url in ("unix://:pw@/run/valkey.sock", "unix:///run/valkey.sock?password=pw"):
        options = arq_pool(url).connection_pool.connection_kwargs
        assert (options["path"], options["password"]) == ("/run/valkey.sock", "pw")


def test_a_sentinel_url_names_the_sentinels_the_service_and_both_credentials() -> None:
    target = parse_sentinel_url(
        "redis+sentinel://al%40ice:p%3Aw@10.0.0.1:26380,sentinel-b,[::1]:26381,[::2]/main/3"
        "?sentinel_username=watch&sentinel_password=s%26cret"
    )
    assert target == SentinelTarget(
        sentinels=[("10.0.0.1", 26380), ("sentinel-b", 26379), ("::1", 26381), ("::2", 26379)],
        service="main",
        db=3,
        username="al@ice",
        password="p:w",
        sentinel_username="watch",
        sentinel_password="s&cret",
    )
    assert parse_sentinel_url("redis+sentinel://h/main") == SentinelTarget([("h", 26379)], "main")
    assert parse_sentinel_url("redis://h:6379/0") is None


@pytest.mark.parametrize(
    ("url", "complaint"),
    [
        ("redis+sentinel://h:26379", "names the service"),
        ("redis+sentinel://h:26379/main/0/extra", "names the service"),
        ("redis+sentinel://h:26379/main/zero", "database 'zero'"),
        ("redis+sentinel://h:port/main", "the port must be a number"),
        ("redis+sentinel://h:26379,/main", "host[:port]"),
        ("redis+sentinel://h/main?ssl_ca_certs=/ca.pem", "unknown parameter(s) ssl_ca_certs"),
        ("rediss+sentinel://h/main", "not supported"),
    ],
)
def test_a_malformed_sentinel_url_is_refused_naming_what_is_wrong(url: str, complaint: str) -> None:
    with pytest.raises(ValueError, match=re.escape(complaint)):
        connect(url)


def test_a_sentinel_urls_passwords_are_redacted() -> None:
    assert redact("redis+sentinel://u:pw@h1:26379,h2:26379/main/0?sentinel_password=spw") == (
        "redis+sentinel://u:***@h1:26379,h2:26379/main/0?sentinel_password=***"
    )


@pytest.mark.slow
async def test_a_sentinel_client_follows_a_failover(tmp_path: Path) -> None:
    with sentinel_group(tmp_path) as group:
        redis = connect(group.url)
        try:
            await redis.set("k", "v")
            await redis.wait(1, 5000)  # the replica has it
            group.primary.kill()

            async def read() -> bytes | None:
                try:
                    return cast(bytes | None, await redis.get("k"))
                except RedisConnectionError:
                    return None  # the old primary gone, no new one yet

            assert await poll(read) == b"v"  # from the promoted replica, same client
            assert group.primary_port() == group.replica.port
            await redis.set("k", "w")  # which takes writes
        finally:
            await redis.aclose()


async def test_the_start_up_check_takes_unreachable_sentinels_for_an_outage(
    free_port: int,
) -> None:
    assert await redis_access_problem(f"redis+sentinel://127.0.0.1:{free_port}/main") is None
    problem = await redis_access_problem("redis+sentinel://u:pw@h/main/x")
    assert problem is not None
    assert "redis+sentinel://u:***@h/main/x is not one batchd can use" in problem


async def test_a_client_with_a_timeout_stops_when_its_task_is_cancelled(redis_url: str) -> None:
    # redis-py sends under asyncio.wait_for when a socket_timeout is set, and Python
    # 3.11's wait_for swallows a cancellation that arrives just as the send completes:
    # the task would run on. The factory's clients send under asyncio.timeout instead.
    client = connect(redis_url, socket_timeout=5)

    async def commands() -> None:
        while True:
            await client.ping()

    try:
        for _ in range(200):
            task = asyncio.create_task(commands())
            await asyncio.sleep(0.001)
            task.cancel()
            done, _ = await asyncio.wait([task], timeout=5)
            assert done, "a cancelled task went on sending commands"
            assert task.cancelled()
    finally:
        await client.aclose()
