"""The egress guard against real peers on loopback: refused destinations see no packet.

Only loopback is ever dialled. Refusals of other ranges are shown by the guard's own
error (PERMISSION_DENIED naming BATCHD_EGRESS_ALLOW and the range): it is raised before
any connection, and nothing listens there to connect to.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import ssl
import struct
import sys
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from support.certs import Certificates, make_certificates
from support.connect_proxy import ConnectProxy
from support.processes import SUPPORT_DIR

from batchd.core.config import Settings
from batchd.testing import call_handler
from batchd.worker.egress import MAX_REDIRECTS, EgressPolicy, EgressRefused, egress_session
from batchd.worker.handler import Code, HandlerError
from batchd.worker.handlers import http_request_handler
from batchd.worker.handlers.image import image_resize_handler


class Listener:
    """A TCP server on `host` that counts the connections it accepts and answers each
    request with `reply` (a whole HTTP response)."""

    def __init__(self, host: str = "127.0.0.1", reply: bytes = b"") -> None:
        self.host = host
        self.reply = reply or b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"
        self.accepted = 0
        self.heads: list[bytes] = []
        self.port = 0
        self._server: asyncio.Server | None = None

    async def __aenter__(self) -> Listener:
        self._server = await asyncio.start_server(self._serve, self.host, 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        try:
            self.heads.append(await reader.readuntil(b"\r\n\r\n"))
            writer.write(self.reply)
            await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


async def http_call(url: str, **settings: Any) -> Mapping[str, Any]:
    return await call_handler(
        http_request_handler(), {"url": url, "timeout": 10}, settings=Settings.of(**settings)
    )


async def refused(url: str, **settings: Any) -> HandlerError:
    with pytest.raises(HandlerError) as caught:
        await http_call(url, **settings)
    error = caught.value
    assert error.code == Code.PERMISSION_DENIED, error.message
    assert "is not allowed" in error.message
    assert "BATCHD_EGRESS_ALLOW" in error.message
    return error


LOOPBACK_FORMS = [
    "127.0.0.1",
    "localhost",
    "LOCALHOST",
    "127.1",
    "0x7f000001",
    "2130706433",
    "127.0.0.2",
    "[::ffff:127.0.0.1]",
    "[::ffff:7f00:1]",
    "[::127.0.0.1]",
    "[64:ff9b::7f00:1]",
    "[2002:7f00:1::]",
    "0.0.0.0",
]


@pytest.mark.parametrize("host", LOOPBACK_FORMS)
async def test_loopback_in_any_form_is_refused_and_never_contacted(host: str) -> None:
    async with Listener("0.0.0.0") as listener:
        await refused(f"http://{host}:{listener.port}/")
        assert listener.accepted == 0
        # The listener does count: allowed, the same call reaches it.
        await http_call(f"http://127.0.0.1:{listener.port}/", egress_allow="127.0.0.1")
        assert listener.accepted == 1


async def test_ipv6_loopback_is_refused_and_never_contacted() -> None:
    if not socket.has_ipv6:
        pytest.skip("no IPv6")
    try:
        listener = await Listener("::1").__aenter__()
    except OSError:
        pytest.skip("no ::1")
    try:
        error = await refused(f"http://[::1]:{listener.port}/")
        assert "(loopback)" in error.message
        assert listener.accepted == 0
    finally:
        await listener.__aexit__()


@pytest.mark.parametrize(
    ("host", "reason"),
    [
        ("169.254.169.254", "link-local"),
        ("10.0.0.1", "private"),
        ("172.16.0.1", "private"),
        ("192.168.1.1", "private"),
        ("100.64.0.1", "CGNAT"),
        ("224.0.0.1", "multicast"),
        ("255.255.255.255", "broadcast"),
        ("240.0.0.1", "reserved"),
        ("[fc00::1]", "unique-local"),
        ("[fe80::1]", "link-local"),
        ("[ff02::1]", "multicast"),
        ("[::]", "unspecified"),
        ("[::ffff:169.254.169.254]", "link-local, as IPv6"),
        ("[64:ff9b::a00:1]", "private, as IPv6"),
        ("[2002:c0a8:101::]", "private, as IPv6"),
    ],
)
async def test_other_internal_ranges_are_refused(host: str, reason: str) -> None:
    error = await refused(f"http://{host}:8080/latest/meta-data/")
    assert f"{reason})" in error.message


async def test_message_names_destination_and_setting() -> None:
    error = await refused("http://127.0.0.1:8080/")
    assert error.message == (
        "destination 127.0.0.1:8080 is not allowed (loopback); allow it with BATCHD_EGRESS_ALLOW"
    )
    error = await refused("http://localhost:8080/")
    assert error.message.startswith("destination localhost:8080 (")


async def test_allow_entries_open_chosen_destinations() -> None:
    async with Listener() as listener:
        port = listener.port
        for allow in ["127.0.0.0/8", "127.0.0.1", f"127.0.0.1:{port}", "10.0.0.0/8, 127.0.0.1/32"]:
            await http_call(f"http://127.0.0.1:{port}/", egress_allow=allow)
        await http_call(f"http://localhost:{port}/", egress_allow=f"localhost:{port}")
        await refused(f"http://127.0.0.1:{port}/", egress_allow=f"127.0.0.1:{port + 1}")
        await refused(f"http://127.0.0.1:{port}/", egress_allow="localhost")
        await refused(f"http://127.0.0.1:{port}/", egress_allow="10.0.0.0/8")
        assert listener.accepted == 5


async def test_one_session_checks_every_request_of_a_target_it_has_seen() -> None:
    # The connector keeps its verdict per target: what it allowed stays allowed, what it
    # refused is refused at every request, and neither leaks into another target's.
    async with Listener() as allowed, Listener() as other:
        settings = Settings.of(egress_allow=f"127.0.0.1:{allowed.port}")
        async with egress_session(settings, limit=4, headers={}) as session:
            for _ in range(3):
                async with session.get(f"http://127.0.0.1:{allowed.port}/") as response:
                    assert await response.text() == "ok"
                for host in ("127.0.0.1", "localhost"):
                    with pytest.raises(EgressRefused):
                        await session.get(f"http://{host}:{other.port}/")
        assert (allowed.accepted, other.accepted) == (3, 0)


def test_bad_allow_entry_names_the_setting() -> None:
    with pytest.raises(ValueError, match="BATCHD_EGRESS_ALLOW"):
        EgressPolicy.parse("localhost:http")


@asynccontextmanager
async def app_server(app: web.Application) -> AsyncIterator[int]:
    runner = web.AppRunner(app, shutdown_timeout=1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield runner.addresses[0][1]
    finally:
        await runner.cleanup()


async def test_redirect_to_a_refused_destination_is_refused() -> None:
    async with Listener() as target:

        async def hop(request: web.Request) -> web.Response:
            raise web.HTTPFound(f"http://127.0.0.1:{target.port}/internal")

        app = web.Application()
        app.router.add_get("/", hop)
        async with app_server(app) as port:
            error = await refused(f"http://127.0.0.1:{port}/", egress_allow=f"127.0.0.1:{port}")
        assert f"127.0.0.1:{target.port}" in error.message
        assert target.accepted == 0


async def test_redirects_are_capped() -> None:
    hops: list[int] = []

    async def loop(request: web.Request) -> web.Response:
        n = int(request.query.get("n", "0"))
        hops.append(n)
        raise web.HTTPFound(f"/?n={n + 1}")

    app = web.Application()
    app.router.add_get("/", loop)
    async with app_server(app) as port:
        with pytest.raises(HandlerError) as caught:
            await http_call(f"http://127.0.0.1:{port}/", egress_allow="127.0.0.1")
    assert caught.value.code == Code.FAILED_PRECONDITION
    assert caught.value.message == "too many redirects"
    assert hops == list(range(MAX_REDIRECTS))  # the first request and its redirects


class RebindingNameserver(asyncio.DatagramProtocol):
    """A real DNS server on loopback: A queries for any name are answered `first`, then
    `then` ever after; AAAA queries get no address."""

    def __init__(self, first: str, then: str) -> None:
        self.answers = [first, then]
        self.a_queries = 0
        self.transport: Any = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        ident, _, _, _, _, _ = struct.unpack_from("!HHHHHH", data)
        end = data.index(b"\0", 12) + 1
        question = data[12 : end + 4]
        (kind,) = struct.unpack_from("!H", data, end)
        answers = b""
        count = 0
        if kind == 1:
            address = self.answers[min(self.a_queries, 1)]
            self.a_queries += 1
            answers = struct.pack("!HHHIH", 0xC00C, 1, 1, 0, 4) + socket.inet_aton(address)
            count = 1
        header = struct.pack("!HHHHHH", ident, 0x8180, 1, count, 0, 0)
        assert self.transport is not None
        self.transport.sendto(header + question + answers, addr)


async def test_a_name_rebound_to_loopback_is_refused() -> None:
    # 127.0.0.2 plays the public address the name first answers: it is allowed.
    loop = asyncio.get_running_loop()
    transport, dns = await loop.create_datagram_endpoint(
        lambda: RebindingNameserver("127.0.0.2", "127.0.0.1"), local_addr=("127.0.0.1", 0)
    )
    dns_port = transport.get_extra_info("sockname")[1]
    settings = {"egress_allow": "127.0.0.2", "egress_nameservers": f"127.0.0.1:{dns_port}"}
    try:
        async with Listener("127.0.0.2") as outside, Listener("127.0.0.1") as inside:
            handler = http_request_handler()
            params = {"url": f"http://rebind.test:{outside.port}/", "timeout": 10}
            out = await call_handler(handler, params, settings=Settings.of(**settings))
            assert out["status"] == 200
            assert outside.accepted == 1
            # The next lookup answers loopback: the connection is refused, not made.
            error = await refused(f"http://rebind.test:{inside.port}/", **settings)
            assert f"rebind.test:{inside.port} (127.0.0.1)" in error.message
            assert inside.accepted == 0
            assert dns.a_queries == 2
    finally:
        transport.close()


async def test_requests_go_through_the_proxy() -> None:
    async with Listener() as proxy, Listener() as target:
        settings = {
            "egress_proxy": f"http://127.0.0.1:{proxy.port}",
            "egress_allow": f"127.0.0.1:{target.port}",
        }
        out = await http_call(f"http://127.0.0.1:{target.port}/via", **settings)
        assert out["body"] == "ok"
        assert proxy.heads[0].startswith(f"GET http://127.0.0.1:{target.port}/via ".encode())
        assert target.accepted == 0
        # The guard still checks targets: a refused one never reaches the proxy.
        await refused("http://127.0.0.1:9/", egress_proxy=settings["egress_proxy"])
        await refused("http://localhost:9/", egress_proxy=settings["egress_proxy"])
        assert proxy.accepted == 1


async def test_image_fetch_refusal_tells_no_port_state(tmp_path: Path) -> None:
    (tmp_path / "in").mkdir()
    settings = Settings.of(
        image_processes=1,
        image_input_dir=str(tmp_path / "in"),
        image_output_dir=str(tmp_path / "out"),
    )
    messages = set()
    async with Listener() as open_port:
        closed = socket.socket()
        closed.bind(("127.0.0.1", 0))  # bound, never listening: a closed port
        for port in (open_port.port, closed.getsockname()[1]):
            params = {
                "source": f"http://127.0.0.1:{port}/a.png",
                "output": "a",
                "variants": [{"name": "v", "width": 4}],
            }
            with pytest.raises(HandlerError) as caught:
                await call_handler(image_resize_handler(), params, settings=settings)
            assert caught.value.code == Code.PERMISSION_DENIED
            messages.add(caught.value.message.replace(str(port), "PORT"))
        closed.close()
        assert open_port.accepted == 0
    assert len(messages) == 1


@asynccontextmanager
async def https_server(certs: Certificates) -> AsyncIterator[tuple[int, list[str]]]:
    """An HTTPS server on 127.0.0.1 with `certs.server` (its CA: `certs.ca`): its port and
    the paths it was asked for."""
    asked: list[str] = []

    async def answer(request: web.Request) -> web.Response:
        asked.append(request.path)
        return web.Response(text="secure")

    app = web.Application()
    app.router.add_get("/{tail:.*}", answer)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(certs.server.cert, certs.server.key)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=context)
    await site.start()
    try:
        yield site._server.sockets[0].getsockname()[1], asked  # type: ignore[union-attr]
    finally:
        await runner.cleanup()


async def egress_calls(env: Mapping[str, str], *urls: str) -> list[dict[str, Any]]:
    """`http.request` of each URL in a process of its own (support/egress_call.py)."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "egress_call",
        *urls,
        env={
            **os.environ,
            "PYTHONPATH": os.pathsep.join([str(SUPPORT_DIR), os.environ.get("PYTHONPATH", "")]),
            **env,
        },
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await process.communicate()
    assert process.returncode == 0, err.decode()
    return [json.loads(line) for line in out.decode().splitlines()]


@pytest.mark.slow
async def test_https_goes_through_the_proxy_in_a_connect_tunnel(tmp_path: Path) -> None:
    certs = make_certificates(tmp_path)
    async with (
        https_server(certs) as (port, asked),
        https_server(certs) as (refused_port, refused_asked),
        ConnectProxy() as proxy,
    ):
        env = {
            "BATCHD_EGRESS_PROXY": f"http://127.0.0.1:{proxy.port}",
            "BATCHD_EGRESS_ALLOW": f"127.0.0.1:{port}",
        }
        # The worker checks HTTPS targets against the system's CAs; SSL_CERT_FILE
        # names the bundle OpenSSL reads instead: here, the tests' CA.
        trusting = {**env, "SSL_CERT_FILE": str(certs.ca.cert)}
        answers = await egress_calls(
            trusting,
            f"https://127.0.0.1:{port}/through",
            f"https://127.0.0.1:{refused_port}/refused",
            f"https://localhost:{refused_port}/refused",
        )
        ok, refused_ip, refused_name = answers
        assert ok["output"]["status"] == 200, ok
        assert ok["output"]["body"] == "secure"
        assert asked == ["/through"]
        assert proxy.connects == [f"127.0.0.1:{port}"]  # one tunnel, to the target
        # Targets the guard refuses: PERMISSION_DENIED, and no CONNECT for them.
        for answer in (refused_ip, refused_name):
            assert answer["code"] == "PERMISSION_DENIED", answer
            assert "is not allowed" in answer["message"]
            assert "BATCHD_EGRESS_ALLOW" in answer["message"]
        assert refused_asked == []
        assert proxy.accepted == 1
        # Certificates are still checked through the tunnel: without the CA, refused.
        (untrusted,) = await egress_calls(env, f"https://127.0.0.1:{port}/untrusted")
        assert "output" not in untrusted, untrusted
        assert "certificate" in untrusted["message"].lower(), untrusted
        assert proxy.connects == [f"127.0.0.1:{port}"] * 2
        assert asked == ["/through"]
