"""docs/security.md's shell blocks run as written, in a scratch directory, against real
`batchd-server` processes on private Valkeys, loopback only: the Transport section's
mTLS server and the CLI calling it with its certificate; "Authentication and roles"'s
`batchd-admin token` commands and the server they key; the JWT section's server, with
its JWKS served by a local HTTP peer and a token signed by that peer's key; and each of
the Redis section's URLs (an ACL user, requirepass, TLS with a client certificate) used
by `batchd-admin`. The grpcurl blocks of the Transport section are
tests/e2e/test_readme_grpcurl.py's.

What a production deployment names is this run's: `--host 0.0.0.0` listens on
127.0.0.1 and a free port, redis.internal is the private Valkey, /etc/batchd/ files the
test's certificates, idp.example.com's JWKS URL the local peer's (its issuer is a name
the token carries, kept as written)."""

from __future__ import annotations

import json
import re
import shlex
import shutil
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import jwt
import pytest
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric import rsa
from support.certs import Certificates, make_certificates
from support.net import find_free_port
from support.polling import poll
from support.readme_session import (
    DOCS,
    Ran,
    Shell,
    listening,
    read_session,
    sh_blocks_after,
    with_venv,
)
from support.redis_server import (
    RedisServer,
    RedisServerError,
    RedisServerFactory,
    ServerTls,
    find_server_executable,
)

from batchd.client import TLS, AsyncClient, BatchState

SECURITY = (DOCS / "security.md").read_text()
ANY_HOST = "--host 0.0.0.0"


def commands(heading: str, index: int = 0) -> list[str]:
    """The commands of the section's `index`th ```sh block (comment lines dropped)."""
    steps = read_session(sh_blocks_after(SECURITY, heading)[index], "")
    return [s.command for s in steps if words(s.command)]


def words(command: str) -> list[str]:
    return shlex.split(command, comments=True)


async def run_ok(shell: Shell, command: str) -> Ran:
    ran = await shell.run(command, within=30)
    assert ran.status == 0, ran.context
    return ran


def text_of(path: Path) -> str:
    return path.read_text()


@asynccontextmanager
async def server_job(shell: Shell, command: str, log: Path) -> AsyncIterator[int]:
    """`command` (a `batchd-server ... --host 0.0.0.0`) started as a job, listening on
    127.0.0.1 and a free port instead; yields the port once it accepts connections, and
    the server must exit 0 on SIGTERM at the end."""
    assert ANY_HOST in command, command
    port = find_free_port()
    shell.replacements[ANY_HOST] = f"--host 127.0.0.1 --port {port}"
    job = await shell.start(command, log)
    number = len(shell.jobs)

    async def up() -> bool | None:
        assert job.returncode is None, text_of(log)
        return await listening(port)

    await poll(up, within=30)
    yield port
    assert await shell.stop_job(number) == 0, text_of(log)


async def has_handler(client: AsyncClient, name: str) -> bool | None:
    return True if name in {h.name for h in await client.handlers()} else None


async def run_batch(client: AsyncClient) -> str:
    """A noop batch of two, run to its end; its id."""
    submitted = await client.submit("noop", [("a", {}), ("b", {})])
    async for progress in client.watch(submitted.batch.batch_id):
        final = progress
    assert final.state is BatchState.COMPLETED
    return submitted.batch.batch_id


# --- Transport (TLS, mTLS) ------------------------------------------------------


def hand_files(directory: Path, certs: Certificates) -> Path:
    """The files the CLI block names, in the directory it runs in."""
    directory.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(certs.ca.cert, directory / "ca.pem")
    shutil.copyfile(certs.client.cert, directory / "client.pem")
    shutil.copyfile(certs.client.key, directory / "client.key")
    return directory


@pytest.mark.slow
@pytest.mark.timeout(60)
async def test_an_mtls_server_and_the_cli_calling_it(
    redis_server_factory: RedisServerFactory, tmp_path: Path
) -> None:
    (server,) = commands("## Transport (TLS, mTLS)", 0)
    (cli,) = commands("## Transport (TLS, mTLS)", 1)
    assert words(server)[-4:] == ["--host", "0.0.0.0", "--auth", "mtls"], server
    certs = make_certificates(tmp_path / "certs")
    # --auth mtls: the client certificate's identity (its URI SAN) is a principal.
    principals = tmp_path / "principals.json"
    identity = "spiffe://batchd.test/team-a"
    principals.write_text(json.dumps({identity: {"tenant": "acme", "role": "submitter"}}))
    redis = redis_server_factory()
    scratch = hand_files(tmp_path / "scratch", certs)
    env = {"BATCHD_REDIS_URL": redis.url, "BATCHD_MTLS_PRINCIPALS": str(principals)}
    async with Shell(scratch, env) as shell:
        shell.replacements["/etc/batchd/server.pem"] = str(certs.server.cert)
        shell.replacements["/etc/batchd/server.key"] = str(certs.server.key)
        shell.replacements["/etc/batchd/clients-ca.pem"] = str(certs.ca.cert)
        await shell.start("batchd-worker", tmp_path / "worker.log")
        async with server_job(shell, server, tmp_path / "server.log") as port:
            target = f"127.0.0.1:{port}"
            shell.replacements["batchd.internal:50051"] = target
            files = {"ca_file": "ca.pem", "cert_file": "client.pem", "key_file": "client.key"}
            tls = TLS(**{field: str(scratch / name) for field, name in files.items()})
            async with AsyncClient(target, tls=tls) as client:
                await poll(lambda: has_handler(client, "noop"), within=30)
                batch_id = await run_batch(client)

            ran = await run_ok(shell, cli)
            assert re.search(rf"^{batch_id} +COMPLETED +2/2 noop ", ran.out, re.M), ran.context

            # Without its certificate the handshake is refused, in one line naming the flag.
            bare = cli.replace("--tls-cert client.pem --tls-key client.key", "")
            ran = await shell.run(bare)
            assert ran.status == 2, ran.context
            assert ran.err.startswith("error: UNAVAILABLE: "), ran.context
            assert ran.err.count("\n") == 1, ran.context
            assert "--tls-cert" in ran.err, ran.context


# --- Authentication and roles ---------------------------------------------------

CREATED = re.compile(
    r"^created key ([0-9a-f]{12}) for tenant acme, role submitter .*\n(bd_\1_\S+)\n$"
)


@pytest.mark.slow
@pytest.mark.timeout(60)
async def test_api_keys_made_listed_revoked_and_a_server_they_key(
    redis_server_factory: RedisServerFactory, tmp_path: Path
) -> None:
    export, create, listed, revoke, server = commands("## Authentication and roles")
    assert words(revoke)[-1] == "3f9c2a1b7d0e"
    redis = redis_server_factory()
    scratch = with_venv(tmp_path / "scratch")  # the commands are the checkout's .venv/bin/
    async with Shell(scratch, {}) as shell:
        shell.replacements["redis://redis.internal:6379/0"] = redis.url
        await run_ok(shell, export)
        assert shell.env["BATCHD_REDIS_URL"] == redis.url

        # `create` prints the key once, as its last word; `list` shows it, not the key.
        ran = await run_ok(shell, create)
        made = CREATED.match(ran.out)
        assert made, ran.context
        key_id, key = made.groups()
        ran = await run_ok(shell, listed)
        assert ran.out.split("\n")[0].split() == [
            "ID", "TENANT", "ROLE", "NAME", "CREATED", "LAST", "USED"
        ], ran.context  # fmt: skip
        row = ran.out.split("\n")[1].split()
        assert row[:4] + row[5:] == [key_id, "acme", "submitter", "billing", "-"], ran.context
        assert key.rsplit("_", 1)[1] not in ran.out  # nor its secret
        shell.replacements["3f9c2a1b7d0e"] = key_id
        await run_ok(shell, revoke)
        ran = await run_ok(shell, listed)
        assert key_id not in ran.out, ran.context
        # Another key, live, for the server to take.
        ran = await run_ok(shell, create)
        made = CREATED.match(ran.out)
        assert made, ran.context
        live = made.group(2)

        await shell.start("batchd-worker", tmp_path / "worker.log")
        async with server_job(shell, server, tmp_path / "server.log") as port:
            target = f"127.0.0.1:{port}"
            async with AsyncClient(target, token=live) as client:
                await poll(lambda: has_handler(client, "noop"), within=30)
                await run_batch(client)
            shell.env["BATCHD_TARGET"] = target
            ran = await shell.run(f"batchd --token {live} list")
            assert (ran.status, ran.out.count(" COMPLETED ")) == (0, 1), ran.context
            for refused in [f"batchd --token {key} list", "batchd list"]:
                ran = await shell.run(refused)
                assert ran.status == 2, ran.context
                assert ran.err.startswith(
                    "error: UNAUTHENTICATED: the service did not accept the credentials"
                ), ran.context


# --- JWT ------------------------------------------------------------------------

IDP_JWKS = "https://idp.example.com/realms/acme/protocol/openid-connect/certs"


@asynccontextmanager
async def identity_provider(jwks: dict[str, Any]) -> AsyncIterator[str]:
    """A local HTTP peer serving `jwks` at the path of the docs' JWKS URL; yields its
    URL."""
    path = IDP_JWKS.removeprefix("https://idp.example.com")

    async def certs(request: web.Request) -> web.Response:
        return web.json_response(jwks)

    app = web.Application()
    app.router.add_get(path, certs)
    runner = web.AppRunner(app)
    await runner.setup()
    port = find_free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield f"http://127.0.0.1:{port}{path}"
    finally:
        await runner.cleanup()


def token(key: rsa.RSAPrivateKey, **claims: Any) -> str:
    """A JWT as the docs' provider issues it: its issuer and audience, a nested role."""
    now = int(time.time())
    payload = {
        "iss": "https://idp.example.com/realms/acme",
        "aud": "batchd",
        "sub": "billing-job",
        "tenant": "acme",
        "realm_access": {"batchd_role": "submitter"},
        "iat": now,
        "exp": now + 300,
        **claims,
    }
    return jwt.encode(payload, key, algorithm="RS256", headers={"kid": "acme-1"})


@pytest.mark.slow
@pytest.mark.timeout(60)
async def test_a_jwt_server_takes_the_providers_tokens(
    redis_server_factory: RedisServerFactory, tmp_path: Path
) -> None:
    (server,) = commands("## JWT")
    assert IDP_JWKS in server
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    public = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key()))
    jwks = {"keys": [{**public, "kid": "acme-1", "use": "sig", "alg": "RS256"}]}
    redis = redis_server_factory()
    async with (
        identity_provider(jwks) as url,
        Shell(tmp_path, {"BATCHD_REDIS_URL": redis.url}) as shell,
    ):
        shell.replacements[IDP_JWKS] = url
        await shell.start("batchd-worker", tmp_path / "worker.log")
        async with server_job(shell, server, tmp_path / "server.log") as port:
            target = f"127.0.0.1:{port}"
            async with AsyncClient(target, token=token(key)) as client:
                await poll(lambda: has_handler(client, "noop"), within=30)
                batch_id = await run_batch(client)
            shell.env["BATCHD_TARGET"] = target
            shell.env["BATCHD_TOKEN"] = token(key)
            ran = await run_ok(shell, "batchd list")
            assert re.search(rf"^{batch_id} +COMPLETED ", ran.out, re.M), ran.context
            # A reader may read, not submit; another issuer, audience or key is refused.
            shell.env["BATCHD_TOKEN"] = token(key, realm_access={"batchd_role": "reader"})
            await run_ok(shell, "batchd list")
            ran = await shell.run('echo \'{"custom_id": "a"}\' | batchd submit noop -')
            assert ran.status == 2, ran.context
            assert ran.err.startswith("error: PERMISSION_DENIED: this call needs the submitter")
            other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
            for bad in [
                token(key, iss="https://idp.example.com/realms/other"),
                token(key, aud="another"),
                token(other),
            ]:
                shell.env["BATCHD_TOKEN"] = bad
                ran = await shell.run("batchd list")
                assert ran.status == 2, ran.context
                assert ran.err.startswith("error: UNAUTHENTICATED: "), ran.context


# --- Redis ----------------------------------------------------------------------

USER, PASSWORD = "batchd", "s3cret"
ACL = ("--user", USER, "on", f">{PASSWORD}", "~*", "&*", "+@all", "--user", "default", "off")


def tls_redis(factory: RedisServerFactory, tls: ServerTls) -> RedisServer:
    """A TLS-only server with the ACL user; skips when neither the bundled server nor one
    on PATH was built with TLS."""
    candidates = dict.fromkeys(
        [find_server_executable(), shutil.which("redis-server"), shutil.which("valkey-server")]
    )
    for executable in filter(None, candidates):
        try:
            return factory(extra_args=ACL, auth=(USER, PASSWORD), tls=tls, executable=executable)
        except RedisServerError as exc:
            if "TLS" not in str(exc):
                raise
    pytest.skip("no Valkey/Redis server here was built with TLS")


async def reaches(shell: Shell, export: str, redis: RedisServer) -> None:
    """`export` run with redis.internal standing for `redis`, and batchd-admin (which
    reads the URL as the servers and workers do) using it."""
    shown = re.search(r"@(redis\.internal:\d+)/", export)
    assert shown, export
    shell.replacements[shown.group(1)] = f"127.0.0.1:{redis.port}"
    await run_ok(shell, export)
    del shell.replacements[shown.group(1)]
    ran = await run_ok(shell, "batchd-admin token create --tenant acme --role reader")
    assert ran.out.startswith("created key "), ran.context


@pytest.mark.slow
async def test_a_redis_url_with_a_user_or_only_a_password(
    redis_server_factory: RedisServerFactory, tmp_path: Path
) -> None:
    acl_user, password_only, _ = commands("## Redis")
    async with Shell(tmp_path, {}) as shell:
        await reaches(shell, acl_user, redis_server_factory(extra_args=ACL, auth=(USER, PASSWORD)))
        requirepass = ("--requirepass", PASSWORD)
        redis = redis_server_factory(extra_args=requirepass, auth=("default", PASSWORD))
        await reaches(shell, password_only, redis)
        # The password is what lets it in.
        shell.env["BATCHD_REDIS_URL"] = shell.env["BATCHD_REDIS_URL"].replace(PASSWORD, "nope")
        ran = await shell.run("batchd-admin token list")
        assert ran.status != 0, ran.context
        assert "invalid username-password pair" in ran.err, ran.context
        assert "nope" not in ran.out + ran.err


@pytest.mark.slow
async def test_a_rediss_url_with_a_ca_and_a_client_certificate(
    redis_server_factory: RedisServerFactory, tmp_path: Path
) -> None:
    *_, over_tls = commands("## Redis")
    certs = make_certificates(tmp_path / "certs")
    client = (certs.client.cert, certs.client.key)
    tls = ServerTls(cert=certs.server.cert, key=certs.server.key, ca=certs.ca.cert, client=client)
    redis = tls_redis(redis_server_factory, tls)
    async with Shell(tmp_path, {}) as shell:
        shell.replacements["/etc/batchd/redis-ca.pem"] = str(certs.ca.cert)
        shell.replacements["/etc/batchd/redis-client.pem"] = str(certs.client.cert)
        shell.replacements["/etc/batchd/redis-client.key"] = str(certs.client.key)
        await reaches(shell, over_tls, redis)
        # The server asks for the client certificate (tls-auth-clients): without it, no way in.
        url = shell.env["BATCHD_REDIS_URL"]
        shell.env["BATCHD_REDIS_URL"] = url.split("&ssl_certfile=")[0]
        ran = await shell.run("batchd-admin token list")
        assert ran.status != 0, ran.context
        # (the server's alert, or the reset after it)
        assert ran.err.startswith("batchd-admin: cannot reach Redis at rediss://"), ran.context
