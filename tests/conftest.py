"""Session fixtures shared by the whole suite.

- ``redis_server``: a private Valkey for the session (no persistence), on a free
  loopback port in a temporary directory; ``.url``, ``.port``, ``.stop()``,
  ``.start()``, ``.restart()``, ``.kill()`` and ``with redis_server.stopped():``.
  Tests share it and isolate themselves by unique batch ids: nothing is flushed
  between tests.
- ``redis_url``: its ``redis://127.0.0.1:PORT/0`` URL.
- ``redis``: a client of it for one test, closed after.
- ``redis_server_factory``: starts extra private servers for one test (e.g. with
  ``appendonly=True`` for crash tests, ``auth`` and ACL ``extra_args``, ``tls``) and
  stops them when the test ends.
- ``free_port``: a free loopback TCP port.

The process code lives in tests/support/ (``import support.redis_server``).
"""

from __future__ import annotations

import os
import sys
from collections.abc import AsyncIterator, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import Redis

# tests/ is not a package: make tests/support importable as `support` from any
# test module, whatever directory pytest is started from.
_TESTS_DIR = str(Path(__file__).resolve().parent)
if _TESTS_DIR not in sys.path:
    sys.path.insert(0, _TESTS_DIR)

# The servers tests start, subprocesses included, open no /metrics listener on its
# default port: many run at once, beside other checkouts' test runs. A test that wants
# one asks for it.
os.environ.setdefault("BATCHD_METRICS_PORT", "0")

from support.net import find_free_port  # noqa: E402
from support.redis_server import (  # noqa: E402
    RedisServer,
    RedisServerFactory,
    start_redis_server,
)


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = start_redis_server(tmp_path_factory.mktemp("redis"))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def redis_url(redis_server: RedisServer) -> str:
    return redis_server.url


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[Redis]:
    client = Redis.from_url(redis_url)
    yield client
    await client.aclose()


@pytest.fixture
def redis_server_factory(tmp_path: Path) -> Iterator[RedisServerFactory]:
    servers: list[RedisServer] = []

    def factory(
        *, appendonly: bool = False, extra_args: Sequence[str] = (), **options: Any
    ) -> RedisServer:
        directory = tmp_path / f"redis-{len(servers)}"
        server = start_redis_server(
            directory, appendonly=appendonly, extra_args=extra_args, **options
        )
        servers.append(server)
        return server

    try:
        yield factory
    finally:
        for server in servers:
            server.stop()


@pytest.fixture
def free_port() -> int:
    return find_free_port()
