"""`batchd` as a real process against a real TLS (and mTLS) server: the TLS flags, their
BATCHD_TLS_* variables, and one clear line when a file or the handshake fails."""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from support.certs import Certificates, make_certificates
from support.in_process_server import running_server

from batchd.server.app import BatchdServer

GUARD = 30.0


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certificates:
    return make_certificates(tmp_path_factory.mktemp("certs"))


@pytest.fixture
async def mtls_server(redis_url: str, certs: Certificates) -> AsyncIterator[BatchdServer]:
    async with running_server(
        redis_url,
        tls_cert_file=str(certs.server.cert),
        tls_key_file=str(certs.server.key),
        tls_client_ca_file=str(certs.ca.cert),
    ) as server:
        yield server


@pytest.fixture
async def tls_server(redis_url: str, certs: Certificates) -> AsyncIterator[BatchdServer]:
    async with running_server(
        redis_url, tls_cert_file=str(certs.server.cert), tls_key_file=str(certs.server.key)
    ) as server:
        yield server


async def batchd(
    server: BatchdServer, *args: str, env: dict[str, str] | None = None
) -> tuple[int, str, str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("BATCHD_TLS")}
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "batchd.cli.main",
        "--target",
        f"127.0.0.1:{server.port}",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**environ, **(env or {})},
    )
    out, err = await asyncio.wait_for(process.communicate(), GUARD)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def test_tls_flags_reach_a_tls_server(tls_server: BatchdServer, certs: Certificates) -> None:
    code, _, err = await batchd(tls_server, "list", "--limit", "1", "--tls-ca", str(certs.ca.cert))
    assert (code, err) in {(0, ""), (0, "no batches\n")}


async def test_mtls_through_the_variables(mtls_server: BatchdServer, certs: Certificates) -> None:
    env = {
        "BATCHD_TLS_CA": str(certs.ca.cert),
        "BATCHD_TLS_CERT": str(certs.client.cert),
        "BATCHD_TLS_KEY": str(certs.client.key),
    }
    code, _, err = await batchd(mtls_server, "list", "--limit", "1", env=env)
    assert code == 0, err


@pytest.mark.slow
async def test_mtls_without_a_client_certificate_says_so(
    mtls_server: BatchdServer, certs: Certificates
) -> None:
    code, _, err = await batchd(mtls_server, "list", "--tls-ca", str(certs.ca.cert))
    assert code == 2
    assert err.splitlines()[-1] == (
        f"error: UNAVAILABLE: 127.0.0.1:{mtls_server.port} closed the connection — if it "
        "requires a client certificate (mTLS), give --tls-cert and --tls-key"
    )


@pytest.mark.slow
async def test_an_untrusted_server_names_the_flag_to_check(
    tls_server: BatchdServer, certs: Certificates
) -> None:
    code, _, err = await batchd(tls_server, "list", "--tls-ca", str(certs.other_ca.cert))
    assert code == 2
    assert err.splitlines()[-1] == (
        f"error: UNAVAILABLE: TLS handshake with 127.0.0.1:{tls_server.port} failed "
        "(CERTIFICATE_VERIFY_FAILED: unable to get local issuer certificate) — its "
        f"certificate is not signed by a CA in {certs.other_ca.cert}: check --tls-ca"
    )


@pytest.mark.slow
async def test_plaintext_to_a_tls_server_suggests_tls(tls_server: BatchdServer) -> None:
    code, _, err = await batchd(tls_server, "list")
    assert code == 2
    assert err.splitlines()[-1].endswith("if it serves TLS, add --tls or --tls-ca")


async def test_a_missing_file_is_one_line(tls_server: BatchdServer, tmp_path: Path) -> None:
    missing = tmp_path / "nope.pem"
    code, _, err = await batchd(tls_server, "list", "--tls-ca", str(missing))
    assert (code, err) == (
        2,
        f"error: --tls-ca {missing}: cannot read it: No such file or directory\n",
    )
    code, _, err = await batchd(
        tls_server, "list", "--tls-cert", str(missing), env={"BATCHD_TLS_CA": str(missing)}
    )
    assert (code, err) == (
        2,
        "error: --tls-cert and --tls-key go together: give both, or neither\n",
    )
