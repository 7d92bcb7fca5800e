"""TLS and mTLS on the gRPC port: a real server with certificates the tests make, real
clients (the batchd clients and bare grpc channels), loopback only."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from support.certs import Certificates, make_certificates
from support.in_process_server import running_server

from batchd.client import TLS, AsyncClient, BatchdError, Client, TLSFileError
from batchd.core.config import Settings
from batchd.core.store import BatchStore
from batchd.server.app import BatchdServer, server_options
from batchd.server.tls import TLSConfigError, load_server_tls, peer_identity

HOST = "127.0.0.1"


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certificates:
    return make_certificates(tmp_path_factory.mktemp("certs"))


@pytest.fixture
async def tls_server(
    redis_url: str, store: BatchStore, certs: Certificates
) -> AsyncIterator[BatchdServer]:
    async with running_server(
        redis_url, tls_cert_file=str(certs.server.cert), tls_key_file=str(certs.server.key)
    ) as server:
        yield server


@pytest.fixture
async def mtls_server(
    redis_url: str, store: BatchStore, certs: Certificates
) -> AsyncIterator[BatchdServer]:
    async with running_server(
        redis_url,
        tls_cert_file=str(certs.server.cert),
        tls_key_file=str(certs.server.key),
        tls_client_ca_file=str(certs.ca.cert),
    ) as server:
        yield server


def target(server: BatchdServer, host: str = HOST) -> str:
    return f"{host}:{server.port}"


async def refused(client: AsyncClient) -> BatchdError:
    async with client:
        with pytest.raises(BatchdError) as caught:
            await client.handlers()
    assert caught.value.code == grpc.StatusCode.UNAVAILABLE
    return caught.value


# --- TLS ---------------------------------------------------------------------


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])
async def test_a_client_trusting_the_ca_is_answered(
    tls_server: BatchdServer, certs: Certificates, host: str
) -> None:
    async with AsyncClient(target(tls_server, host), tls=TLS(ca_file=certs.ca.cert)) as client:
        assert "test.echo" in [h.name for h in await client.handlers()]


async def test_the_blocking_client_too(tls_server: BatchdServer, certs: Certificates) -> None:
    def call() -> list[str]:
        with Client(target(tls_server), tls=TLS(ca_file=str(certs.ca.cert))) as client:
            return [h.name for h in client.handlers()]

    assert "test.echo" in await asyncio.to_thread(call)


@pytest.mark.slow
async def test_a_plaintext_client_is_refused(tls_server: BatchdServer) -> None:
    error = await refused(AsyncClient(target(tls_server)))
    assert "Socket closed" in error.message


@pytest.mark.slow
async def test_a_client_trusting_another_ca_is_refused(
    tls_server: BatchdServer, certs: Certificates
) -> None:
    error = await refused(AsyncClient(target(tls_server), tls=TLS(ca_file=certs.other_ca.cert)))
    assert "CERTIFICATE_VERIFY_FAILED" in error.message


@pytest.mark.slow
async def test_system_roots_do_not_trust_a_private_ca(tls_server: BatchdServer) -> None:
    error = await refused(AsyncClient(target(tls_server), tls=True))
    assert "CERTIFICATE_VERIFY_FAILED" in error.message


@pytest.mark.slow
async def test_server_name_checks_the_certificate_for_another_name(
    tls_server: BatchdServer, certs: Certificates
) -> None:
    good = TLS(ca_file=certs.ca.cert, server_name="localhost")
    async with AsyncClient(target(tls_server), tls=good) as client:
        await client.handlers()
    wrong = TLS(ca_file=certs.ca.cert, server_name="elsewhere.test")
    await refused(AsyncClient(target(tls_server), tls=wrong))


# --- mTLS --------------------------------------------------------------------


async def test_mtls_answers_a_client_certificate_from_the_ca(
    mtls_server: BatchdServer, certs: Certificates
) -> None:
    tls = TLS(ca_file=certs.ca.cert, cert_file=certs.client.cert, key_file=certs.client.key)
    async with AsyncClient(target(mtls_server), tls=tls) as client:
        await client.handlers()


@pytest.mark.slow
async def test_mtls_refuses_a_client_without_a_certificate(
    mtls_server: BatchdServer, certs: Certificates
) -> None:
    await refused(AsyncClient(target(mtls_server), tls=TLS(ca_file=certs.ca.cert)))


@pytest.mark.slow
async def test_mtls_refuses_a_certificate_from_another_ca(
    mtls_server: BatchdServer, certs: Certificates
) -> None:
    tls = TLS(
        ca_file=certs.ca.cert,
        cert_file=certs.other_client.cert,
        key_file=certs.other_client.key,
    )
    await refused(AsyncClient(target(mtls_server), tls=tls))


# --- the client's TLS arguments ----------------------------------------------


def test_client_tls_files_are_checked_when_the_client_is_made(
    certs: Certificates, tmp_path: Path
) -> None:
    with pytest.raises(TLSFileError) as missing:
        Client("127.0.0.1:1", tls=TLS(ca_file=tmp_path / "nope.pem"))
    assert (missing.value.field, missing.value.reason) == (
        "ca_file",
        "cannot read it: No such file or directory",
    )
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate\n")
    with pytest.raises(TLSFileError, match="no PEM certificate"):
        Client("127.0.0.1:1", tls=TLS(ca_file=garbage))
    wrong_key = TLS(cert_file=certs.client.cert, key_file=certs.other_client.key)
    with pytest.raises(TLSFileError, match="not the key of cert_file"):
        Client("127.0.0.1:1", tls=wrong_key)
    with pytest.raises(ValueError, match="go together"):
        TLS(cert_file=certs.client.cert)
    with pytest.raises(ValueError, match="not both"):
        Client("127.0.0.1:1", tls=True, credentials=grpc.ssl_channel_credentials())


# --- the server's TLS settings -----------------------------------------------


def settings(**values: Any) -> Settings:
    return Settings(redis_url="redis://127.0.0.1:1", host=HOST, **values)


def test_no_tls_files_is_plaintext() -> None:
    assert load_server_tls(settings()) is None


def test_tls_settings_are_checked(certs: Certificates, tmp_path: Path) -> None:
    cert, key, ca = str(certs.server.cert), str(certs.server.key), str(certs.ca.cert)
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("-----BEGIN CERTIFICATE-----\nnope\n-----END CERTIFICATE-----\n")
    cases = {
        "BATCHD_TLS_CERT_FILE (--tls-cert-file) is set but BATCHD_TLS_KEY_FILE": {
            "tls_cert_file": cert
        },
        "BATCHD_TLS_KEY_FILE (--tls-key-file) is set but BATCHD_TLS_CERT_FILE": {
            "tls_key_file": key
        },
        "BATCHD_TLS_CLIENT_CA_FILE (--tls-client-ca-file) is set, but mTLS needs": {
            "tls_client_ca_file": ca
        },
        f"cannot read {tmp_path}/nope.pem: No such file or directory": {
            "tls_cert_file": str(tmp_path / "nope.pem"),
            "tls_key_file": key,
        },
        f"{garbage} holds no PEM certificate": {"tls_cert_file": str(garbage), "tls_key_file": key},
        f"{cert} holds no PEM private key": {"tls_cert_file": cert, "tls_key_file": cert},
        f"{certs.client.key} is not the key of the certificate in {cert}": {
            "tls_cert_file": cert,
            "tls_key_file": str(certs.client.key),
        },
        f"BATCHD_TLS_CLIENT_CA_FILE (--tls-client-ca-file): {garbage} holds no PEM": {
            "tls_cert_file": cert,
            "tls_key_file": key,
            "tls_client_ca_file": str(garbage),
        },
    }
    for expected, values in cases.items():
        with pytest.raises(TLSConfigError) as caught:
            load_server_tls(settings(**values))
        assert expected in str(caught.value), values
    loaded = load_server_tls(settings(tls_cert_file=cert, tls_key_file=key, tls_client_ca_file=ca))
    assert loaded is not None
    assert loaded.mutual


def test_an_encrypted_key_is_refused_without_a_prompt(certs: Certificates, tmp_path: Path) -> None:
    from cryptography.hazmat.primitives import serialization

    key = serialization.load_pem_private_key(certs.server.key.read_bytes(), None)
    encrypted = tmp_path / "encrypted.key"
    encrypted.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"secret"),
        )
    )
    with pytest.raises(TLSConfigError, match="is encrypted"):
        load_server_tls(settings(tls_cert_file=str(certs.server.cert), tls_key_file=str(encrypted)))


async def test_start_server_refuses_bad_tls_settings(redis_url: str, certs: Certificates) -> None:
    with pytest.raises(TLSConfigError, match="TLS needs both"):
        async with running_server(redis_url, tls_cert_file=str(certs.server.cert)):
            pass


# --- keepalive and connection age ---------------------------------------------


def test_server_options_carry_the_keepalive_settings() -> None:
    options = dict(server_options(settings(grpc_keepalive_time=30.0, grpc_max_connection_age=0.0)))
    assert options["grpc.keepalive_time_ms"] == 30_000
    assert options["grpc.keepalive_timeout_ms"] == 20_000
    assert options["grpc.max_connection_age_ms"] == 2**31 - 1  # 0: never
    assert options["grpc.max_connection_age_grace_ms"] == 300_000
    assert options["grpc.max_connection_idle_ms"] == 900_000
    assert options["grpc.keepalive_permit_without_calls"] == 1
    assert options["grpc.max_concurrent_streams"] == 1000


# --- peer_identity -----------------------------------------------------------


async def test_peer_identity_of_a_verified_client_certificate(certs: Certificates) -> None:
    """URI SAN first, then DNS SAN, then CN; None without mTLS."""
    seen: list[str | None] = []

    async def who(request: bytes, context: grpc.aio.ServicerContext[bytes, bytes]) -> bytes:
        seen.append(peer_identity(context))
        return b""

    handler = grpc.method_handlers_generic_handler(
        "test.Identity", {"Who": grpc.unary_unary_rpc_method_handler(who)}
    )

    async def ask(port: int, credentials: grpc.ChannelCredentials | None) -> None:
        address = f"{HOST}:{port}"
        channel = (
            grpc.aio.insecure_channel(address)
            if credentials is None
            else grpc.aio.secure_channel(address, credentials)
        )
        async with channel:
            call: grpc.aio.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary(
                "/test.Identity/Who"
            )
            await call(b"", timeout=10)

    ca = certs.ca.cert.read_bytes()
    for client_ca in (str(certs.ca.cert), ""):
        tls = load_server_tls(
            settings(
                tls_cert_file=str(certs.server.cert),
                tls_key_file=str(certs.server.key),
                tls_client_ca_file=client_ca,
            )
        )
        assert tls is not None
        server = grpc.aio.server()
        server.add_generic_rpc_handlers([handler])
        port = server.add_secure_port(f"{HOST}:0", tls.credentials())
        await server.start()
        try:
            for issued in (certs.client, certs.client_cn_only):
                key, chain = issued.key.read_bytes(), issued.cert.read_bytes()
                await ask(port, grpc.ssl_channel_credentials(ca, key, chain))
            if not client_ca:
                await ask(port, grpc.ssl_channel_credentials(ca))
        finally:
            await server.stop(0)
    plain = grpc.aio.server()
    plain.add_generic_rpc_handlers([handler])
    port = plain.add_insecure_port(f"{HOST}:0")
    await plain.start()
    try:
        await ask(port, None)
    finally:
        await plain.stop(0)
    assert seen == [
        "spiffe://batchd.test/team-a",  # mTLS: the URI SAN
        "cn-only",  # mTLS, no SAN: the CN
        None,  # TLS without a client CA asks for no certificate
        None,
        None,
        None,  # plaintext
    ]


async def test_mtls_auth_makes_the_certificate_the_principal(
    redis_url: str, store: BatchStore, certs: Certificates, tmp_path: Path
) -> None:
    # --auth mtls: the verified client certificate is the caller; its tenant and role
    # come from the principals file. A certificate the file does not name, however well
    # signed, is UNAUTHENTICATED; a role too low is PERMISSION_DENIED.
    principals = tmp_path / "principals.json"
    principals.write_text(
        '{"spiffe://batchd.test/team-a": {"tenant": "team-a", "role": "submitter"}}'
    )
    async with running_server(
        redis_url,
        auth="mtls",
        mtls_principals=str(principals),
        tls_cert_file=str(certs.server.cert),
        tls_key_file=str(certs.server.key),
        tls_client_ca_file=str(certs.ca.cert),
    ) as server:
        team_a = TLS(ca_file=certs.ca.cert, cert_file=certs.client.cert, key_file=certs.client.key)
        async with AsyncClient(target(server), tls=team_a) as client:
            submitted = await client.submit("test.echo", [{"custom_id": "a", "params": {"n": 1}}])
            page = await client.list_page()
            assert [b.batch_id for b in page.items] == [submitted.batch.batch_id]
            with pytest.raises(BatchdError) as denied:
                await client.cancel(submitted.batch.batch_id)
            assert denied.value.code == grpc.StatusCode.PERMISSION_DENIED
        unnamed = TLS(
            ca_file=certs.ca.cert,
            cert_file=certs.client_cn_only.cert,
            key_file=certs.client_cn_only.key,
        )
        async with AsyncClient(target(server), tls=unnamed) as client:
            with pytest.raises(BatchdError) as refused_call:
                await client.list_page()
            assert refused_call.value.code == grpc.StatusCode.UNAUTHENTICATED
