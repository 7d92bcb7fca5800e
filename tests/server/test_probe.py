"""`batchd-health` against real servers: SERVING is 0, anything else 1 with one line
saying why; the `liveness` name stays SERVING while Redis is away."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from support.certs import Certificates, make_certificates
from support.in_process_server import running_server
from support.net import find_free_port
from support.polling import poll

from batchd.core.config import Settings
from batchd.server.app import LIVENESS_SERVICE, SERVICE_NAME, BatchdServer, start_server
from batchd.server.probe import check_grpc, main

# The console script installed beside this interpreter (scripts/bootstrap installs it).
PROBE = str(Path(sys.executable).with_name("batchd-health"))


async def probe(*args: str) -> tuple[int, str]:
    """Runs batchd-health in a process of its own: its exit status and its one line."""
    process = await asyncio.create_subprocess_exec(
        PROBE, *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    out, _ = await process.communicate()
    return process.returncode or 0, out.decode().strip()


def run_main(*args: str) -> int:
    """main() in this process (a thread: it blocks), its exit status."""
    try:
        main(list(args))
    except SystemExit as exit:
        return int(exit.code or 0)
    return 0


async def test_a_serving_server_is_healthy(server: BatchdServer) -> None:
    addr = f"127.0.0.1:{server.port}"
    assert await asyncio.to_thread(check_grpc, addr) is None
    assert await asyncio.to_thread(check_grpc, addr, LIVENESS_SERVICE) is None
    assert await asyncio.to_thread(check_grpc, addr, SERVICE_NAME) is None
    assert await asyncio.to_thread(run_main, "--addr", addr) == 0


async def test_an_unknown_service_name_is_unhealthy(server: BatchdServer) -> None:
    problem = await asyncio.to_thread(check_grpc, f"127.0.0.1:{server.port}", "no.such.Service")
    assert problem is not None
    assert "no health status for service 'no.such.Service'" in problem


async def test_nothing_listening_is_unhealthy(capsys: pytest.CaptureFixture[str]) -> None:
    addr = f"127.0.0.1:{find_free_port()}"
    assert await asyncio.to_thread(run_main, "--addr", addr, "--timeout", "1") == 1
    line = capsys.readouterr().err.strip()
    assert line.startswith(f"unhealthy: {addr}: unreachable")
    assert "\n" not in line


def test_url_and_grpc_options_do_not_mix(capsys: pytest.CaptureFixture[str]) -> None:
    assert run_main("--url", "http://127.0.0.1:1/healthz", "--service", "liveness") == 2
    assert "--url" in capsys.readouterr().err


@pytest.mark.slow
async def test_the_console_script_follows_redis(
    redis_server_factory: Callable[..., object],
) -> None:
    redis = redis_server_factory()
    settings = Settings(redis_url=redis.url, host="127.0.0.1")  # type: ignore[attr-defined]
    running = await start_server(settings, port=0, metrics_port=0)
    addr = f"127.0.0.1:{running.port}"
    try:
        assert await probe("--addr", addr) == (0, f"healthy: {addr}")
        redis.stop()  # type: ignore[attr-defined]

        async def not_serving() -> bool | None:
            async with grpc.aio.insecure_channel(addr) as channel:
                reply = await health_pb2_grpc.HealthStub(channel).Check(  # type: ignore[attr-defined]
                    health_pb2.HealthCheckRequest(service="")
                )
            return True if reply.status == health_pb2.HealthCheckResponse.NOT_SERVING else None

        await poll(not_serving)
        assert await probe("--addr", addr) == (1, f"unhealthy: {addr}: NOT_SERVING")
        # Alive all the same: a restart would not bring Redis back.
        assert await probe("--addr", addr, "--service", "liveness") == (
            0,
            f"healthy: {addr} (liveness)",
        )
    finally:
        await running.stop(grace=0)
    status, line = await probe("--addr", addr, "--timeout", "1")
    assert status == 1
    assert line.startswith(f"unhealthy: {addr}: unreachable (UNAVAILABLE")


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certificates:
    return make_certificates(tmp_path_factory.mktemp("certs"))


@pytest.mark.slow
async def test_the_console_script_speaks_tls_and_mtls(redis_url: str, certs: Certificates) -> None:
    async with running_server(
        redis_url,
        tls_cert_file=str(certs.server.cert),
        tls_key_file=str(certs.server.key),
        tls_client_ca_file=str(certs.ca.cert),
    ) as server:
        addr = f"127.0.0.1:{server.port}"
        client = ("--tls-cert", str(certs.client.cert), "--tls-key", str(certs.client.key))
        assert await probe("--addr", addr, "--tls-ca", str(certs.ca.cert), *client) == (
            0,
            f"healthy: {addr}",
        )
        # Plaintext to a TLS port, or TLS without a client certificate to an mTLS one.
        assert (await probe("--addr", addr, "--timeout", "2"))[0] == 1
        assert (await probe("--addr", addr, "--tls-ca", str(certs.ca.cert), "--timeout", "2"))[
            0
        ] == 1
        status, line = await probe("--addr", addr, "--tls-ca", "/nonexistent/ca.pem")
        assert (status, line) == (
            1,
            "unhealthy: /nonexistent/ca.pem: cannot read it: No such file or directory",
        )


def test_a_client_certificate_needs_its_key(capsys: pytest.CaptureFixture[str]) -> None:
    assert run_main("--tls-cert", "client.pem") == 2
    assert "--tls-cert and --tls-key go together" in capsys.readouterr().err
