"""Authentication as real processes: batchd-server refusing to serve the network without
it, batchd-admin managing keys, the batchd command presenting one."""

from __future__ import annotations

import asyncio
import os
import sys
import uuid

import pytest
from redis.asyncio import Redis
from support.in_process_server import HOST

from batchd.core.credentials import CredentialStore
from batchd.core.keys import Keys
from batchd.server.app import BatchdServer
from batchd.server.auth import UNAUTHENTICATED_MESSAGE


async def run(*argv: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        *argv,
        env={**os.environ, **(env or {})},
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    async with asyncio.timeout(60):
        out, err = await process.communicate()
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


def admin(*argv: str, redis_url: str, prefix: str) -> list[str]:
    return ["-m", "batchd.server.admin", "--redis-url", redis_url, "--key-prefix", prefix, *argv]


async def test_the_server_refuses_the_network_without_auth(redis_url: str, free_port: int) -> None:
    code, _, err = await run(
        "-m", "batchd.server.main", "--host", "0.0.0.0", "--port", str(free_port),
        env={"BATCHD_REDIS_URL": redis_url},
    )  # fmt: skip
    assert code != 0
    assert "--auth" in err
    assert "--insecure" in err
    assert "Traceback" not in err


@pytest.mark.slow
async def test_insecure_serves_the_network_with_a_warning(redis_url: str, free_port: int) -> None:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "batchd.server.main", "--host", "0.0.0.0",
        "--port", str(free_port),
        env={**os.environ, "BATCHD_REDIS_URL": redis_url, "BATCHD_INSECURE": "1"},
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        assert process.stderr is not None
        async with asyncio.timeout(30):
            while b"WARNING" not in (line := await process.stderr.readline()):
                assert line, "the server ended without the warning"
        assert b"authentication off (--insecure)" in line
    finally:
        process.terminate()
        await process.wait()


@pytest.mark.slow
async def test_admin_creates_lists_and_revokes_keys(redis_url: str) -> None:
    prefix = f"test-{uuid.uuid4().hex[:8]}:"
    code, out, _ = await run(
        *admin("token", "create", "--tenant", "acme", "--role", "operator", "--name", "ci",
               redis_url=redis_url, prefix=prefix)
    )  # fmt: skip
    assert code == 0
    key = out.split()[-1]
    key_id = key.split("_", 2)[1]
    redis = Redis.from_url(redis_url)
    try:
        found = await CredentialStore(redis, Keys(prefix)).lookup(key)
    finally:
        await redis.aclose()
    assert found is not None
    assert (found.tenant, found.role, found.name) == ("acme", "operator", "ci")

    code, out, _ = await run(*admin("token", "list", redis_url=redis_url, prefix=prefix))
    assert code == 0
    assert key_id in out
    assert "acme" in out
    assert "operator" in out
    assert key.split("_", 2)[2] not in out

    code, out, _ = await run(*admin("token", "revoke", key_id, redis_url=redis_url, prefix=prefix))
    assert (code, out.strip()) == (0, f"revoked {key_id}")
    code, out, err = await run(*admin("token", "list", redis_url=redis_url, prefix=prefix))
    assert key_id not in out
    code, _, err = await run(*admin("token", "revoke", key_id, redis_url=redis_url, prefix=prefix))
    assert code == 1
    assert f"no key {key_id}" in err


@pytest.mark.parametrize(
    ("flag", "value", "complaint"),
    [("--tenant", "ACME!", "bad tenant"), ("--role", "boss", "unknown role")],
)
async def test_admin_says_what_is_wrong_with_a_key_request(
    redis_url: str, flag: str, value: str, complaint: str
) -> None:
    argv = {"--tenant": "acme", "--role": "reader", flag: value}
    code, _, err = await run(
        *admin("token", "create", *(x for kv in argv.items() for x in kv),
               redis_url=redis_url, prefix="test-unused:")
    )  # fmt: skip
    assert code == 2
    assert complaint in err
    assert "Traceback" not in err


@pytest.mark.slow
async def test_the_cli_presents_its_token_and_says_what_to_do_without_one(
    redis_url: str, secured: BatchdServer
) -> None:
    redis = Redis.from_url(redis_url)
    try:
        reader, _ = await CredentialStore(redis).create("acme", "reader")
    finally:
        await redis.aclose()
    cli = ["-m", "batchd.cli.main", "--target", f"{HOST}:{secured.port}"]
    no_token = {"BATCHD_TOKEN": ""}

    code, out, _ = await run(*cli, "handlers", "--token", reader, env=no_token)
    assert code == 0
    assert "test.echo" in out
    code, _, _ = await run(*cli, "handlers", env={"BATCHD_TOKEN": reader})
    assert code == 0

    code, _, err = await run(*cli, "handlers", env=no_token)
    assert code == 2
    assert err.splitlines() == [
        f"error: UNAUTHENTICATED: {UNAUTHENTICATED_MESSAGE} — pass a key with --token or "
        "BATCHD_TOKEN"
    ]
    code, _, err = await run(*cli, "cancel", "some-batch", "--token", reader, env=no_token)
    assert code == 2
    assert err.splitlines() == [
        "error: PERMISSION_DENIED: this call needs the operator role; the caller has reader "
        "— use a key with that role (batchd-admin token create --role ...)"
    ]
