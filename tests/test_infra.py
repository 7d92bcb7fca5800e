"""The shared test fixtures start real, private servers."""

from __future__ import annotations

import socket

import redis.asyncio as aioredis
from support.redis_server import RedisServer, RedisServerFactory, ping

SHARED_REDIS_PORT = 6379


async def test_session_server_answers_ping(redis_server: RedisServer, redis_url: str) -> None:
    assert redis_server.port != SHARED_REDIS_PORT
    assert redis_url == f"redis://127.0.0.1:{redis_server.port}/0"
    client = aioredis.Redis.from_url(redis_url)
    try:
        assert await client.ping() is True
        info = await client.info("persistence")
        assert info["aof_enabled"] == 0
    finally:
        await client.aclose()


def test_restart_keeps_port_and_directory(redis_server_factory: RedisServerFactory) -> None:
    server = redis_server_factory()
    port, directory, pid = server.port, server.directory, server.pid

    server.stop()
    assert not server.is_running()
    assert not ping(port)

    server.start()
    assert (server.port, server.directory) == (port, directory)
    assert server.pid != pid
    assert ping(port)


async def test_aof_server_keeps_acknowledged_writes_across_kill(
    redis_server_factory: RedisServerFactory,
) -> None:
    server = redis_server_factory(appendonly=True)
    client = aioredis.Redis.from_url(server.url)
    try:
        await client.set("infra:survivor", b"yes")
        server.kill()
        server.start()
        await client.connection_pool.disconnect()
        assert await client.get("infra:survivor") == b"yes"
    finally:
        await client.aclose()


def test_stopped_block_restarts_server(redis_server_factory: RedisServerFactory) -> None:
    server = redis_server_factory()
    with server.stopped():
        assert not ping(server.port)
    assert ping(server.port)


def test_free_port_can_be_bound(free_port: int) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", free_port))
