"""Redis with credentials and TLS: a server and a worker run a batch as an ACL user of a
private Valkey whose default user is off (and over rediss:// where a TLS-capable server
binary is at hand); credentials Redis refuses stop batchd-server, batchd-worker and
batchd-admin in one line that shows no password."""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from support.certs import make_certificates
from support.in_process_worker import running_worker
from support.processes import SUPPORT_DIR
from support.redis_server import (
    RedisServer,
    RedisServerError,
    RedisServerFactory,
    ServerTls,
    find_server_executable,
)

from batchd.client import AsyncClient, BatchState
from batchd.core.config import SettingError, Settings
from batchd.server.app import start_server

USER, PASSWORD = "alice", "s3cret:pw"  # a ':' in it: percent-encoded in the URL
# alice may do anything; the default user (no password) is off.
ACL = ("--user", USER, "on", f">{PASSWORD}", "~*", "&*", "+@all", "--user", "default", "off")


@pytest.fixture
def acl_redis(redis_server_factory: RedisServerFactory) -> RedisServer:
    return redis_server_factory(extra_args=ACL, auth=(USER, PASSWORD))


@contextlib.asynccontextmanager
async def service(url: str) -> AsyncIterator[AsyncClient]:
    """An in-process server and worker over `url`, and a client of the server."""
    settings = Settings(
        redis_url=url, host="127.0.0.1", key_prefix=f"creds-{secrets.token_hex(4)}:"
    )
    server = await start_server(settings, port=0, metrics_port=0)
    try:
        async with (
            running_worker(settings, poll_delay=0.02),
            AsyncClient(f"127.0.0.1:{server.port}") as client,
        ):
            yield client
    finally:
        await server.stop(grace=0)


async def runs_a_batch(client: AsyncClient) -> None:
    submitted = await client.submit("noop", [(f"n-{i}", {}) for i in range(30)])
    async for progress in client.watch(submitted.batch.batch_id, min_interval=0.05):
        last = progress
    assert last.state == BatchState.COMPLETED
    assert last.counts.succeeded == 30


@pytest.mark.slow
async def test_a_batch_runs_as_an_acl_user(acl_redis: RedisServer) -> None:
    assert acl_redis.url.startswith("redis://alice:s3cret%3Apw@")
    async with service(acl_redis.url) as client:
        await runs_a_batch(client)


def run_command(module: str, *args: str, url: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BATCHD_")}
    env["BATCHD_METRICS_PORT"] = "0"
    env.update(
        BATCHD_REDIS_URL=url,
        BATCHD_HOST="127.0.0.1",
        BATCHD_PORT="0",
        PYTHONPATH=os.pathsep.join([str(SUPPORT_DIR), env.get("PYTHONPATH", "")]),
    )
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.slow
@pytest.mark.parametrize(
    ("credentials", "said"),
    [
        (f"{USER}:wrong-password@", "invalid username-password pair"),
        ("", "Authentication required"),
    ],
    ids=["wrong password", "none"],
)
@pytest.mark.parametrize(
    "module", ["batchd.server.main", "batchd.worker.main", "batchd.server.admin"]
)
def test_refused_credentials_are_one_line_at_start(
    acl_redis: RedisServer, module: str, credentials: str, said: str
) -> None:
    url = f"redis://{credentials}127.0.0.1:{acl_redis.port}/0"
    args = ("token", "list") if module.endswith("admin") else ()
    result = run_command(module, *args, url=url)
    assert result.returncode == 1, result.stderr
    (line,) = result.stderr.strip().splitlines()  # one line: no traceback, no log noise
    assert said in line
    shown = f"redis://{USER}:***@" if credentials else "redis://127.0.0.1"
    assert shown in line
    assert "wrong-password" not in result.stdout + result.stderr


def test_batchd_admin_creates_a_key_as_an_acl_user(acl_redis: RedisServer) -> None:
    result = run_command(
        "batchd.server.admin", "token", "create", "--tenant", "acme", "--role", "reader",
        url=acl_redis.url,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "created key" in result.stdout


def tls_server(factory: RedisServerFactory, directory: Path) -> tuple[RedisServer, Path]:
    """A TLS-only server with the ACL user, and the CA of another authority; skips when
    neither the bundled server nor one on PATH was built with TLS."""
    certs = make_certificates(directory)
    tls = ServerTls(cert=certs.server.cert, key=certs.server.key, ca=certs.ca.cert)
    candidates = dict.fromkeys(
        [find_server_executable(), shutil.which("redis-server"), shutil.which("valkey-server")]
    )
    for executable in filter(None, candidates):
        try:
            server = factory(extra_args=ACL, auth=(USER, PASSWORD), tls=tls, executable=executable)
        except RedisServerError as exc:
            if "TLS" not in str(exc):
                raise
            continue
        return server, certs.other_ca.cert
    pytest.skip("no Valkey/Redis server here was built with TLS")


@pytest.mark.slow
async def test_a_batch_runs_over_rediss(
    redis_server_factory: RedisServerFactory, tmp_path: Path
) -> None:
    server, _ = tls_server(redis_server_factory, tmp_path / "certs")
    url = f"{server.url}&ssl_check_hostname=true"
    assert url.startswith("rediss://alice:")
    async with service(url) as client:
        await runs_a_batch(client)


async def test_an_untrusted_redis_certificate_is_a_start_up_error(
    redis_server_factory: RedisServerFactory, tmp_path: Path
) -> None:
    server, other_ca = tls_server(redis_server_factory, tmp_path / "certs")
    url = server.url.replace(str(server.tls.ca if server.tls else ""), str(other_ca))
    settings = Settings(redis_url=url, host="127.0.0.1")
    with pytest.raises(SettingError, match="failed the TLS handshake") as refused:
        await start_server(settings, port=0, metrics_port=0)
    assert PASSWORD not in str(refused.value)
    assert "s3cret" not in str(refused.value)
