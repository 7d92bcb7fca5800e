"""A small DNS client: A and AAAA lookups over UDP at the nameservers of
`BATCHD_EGRESS_NAMESERVERS`, for sites whose workers must resolve through a resolver of
their choice rather than the system's. Used by the egress guard (worker/egress.py), which
checks every address it returns."""

from __future__ import annotations

import asyncio
import ipaddress
import secrets
import socket
import struct

from aiohttp.abc import AbstractResolver, ResolveResult

__all__ = ["NameserverResolver", "parse_nameservers"]

_A, _AAAA = 1, 28
_TIMEOUT = 3.0  # seconds per nameserver and query


def parse_nameservers(value: str) -> list[tuple[str, int]]:
    """`ip`, `ip:port`, `[v6]:port`, comma-separated; ValueError naming a bad one."""
    servers = []
    for raw in value.split(","):
        entry = raw.strip()
        if not entry:
            continue
        host, port = entry, 53
        if entry.startswith("[") and "]:" in entry:
            host, _, rest = entry[1:].partition("]:")
            port = int(rest)
        elif entry.count(":") == 1:
            host, rest = entry.split(":")
            port = int(rest)
        try:
            servers.append((str(ipaddress.ip_address(host.strip("[]"))), port))
        except ValueError:
            raise ValueError(f"BATCHD_EGRESS_NAMESERVERS: {entry!r} is not ip[:port]") from None
    return servers


class NameserverResolver(AbstractResolver):
    """Resolves with A/AAAA queries, trying each nameserver in turn."""

    def __init__(self, nameservers: str) -> None:
        self._servers = parse_nameservers(nameservers)

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        kinds = {socket.AF_INET: [_A], socket.AF_INET6: [_AAAA]}.get(family, [_A, _AAAA])
        results: list[ResolveResult] = []
        for kind in kinds:
            family = socket.AF_INET if kind == _A else socket.AF_INET6
            results.extend(
                ResolveResult(
                    hostname=host,
                    host=address,
                    port=port,
                    family=family,
                    proto=0,
                    flags=socket.AI_NUMERICHOST,
                )
                for address in await self._query(host.rstrip("."), kind)
            )
        if not results:
            raise OSError(socket.EAI_NONAME, f"{host}: no address")
        return results

    async def close(self) -> None:
        pass

    async def _query(self, name: str, kind: int) -> list[str]:
        last: Exception = OSError(socket.EAI_AGAIN, "no nameserver")
        for server in self._servers:
            try:
                return await asyncio.wait_for(_ask(server, name, kind), _TIMEOUT)
            except (OSError, TimeoutError, ValueError, IndexError, struct.error) as exc:
                last = exc
        raise OSError(socket.EAI_AGAIN, f"{name}: {last}")


class _Reply(asyncio.DatagramProtocol):
    def __init__(self, ident: int) -> None:
        self.ident = ident
        self.answer: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()

    def datagram_received(self, data: bytes, addr: object) -> None:
        if len(data) >= 2 and data[:2] == struct.pack("!H", self.ident) and not self.answer.done():
            self.answer.set_result(data)

    def error_received(self, exc: Exception) -> None:
        if not self.answer.done():
            self.answer.set_exception(exc)


async def _ask(server: tuple[str, int], name: str, kind: int) -> list[str]:
    ident = secrets.randbelow(1 << 16)
    question = b"".join(
        bytes([len(label)]) + label for label in (p.encode("idna") for p in name.split("."))
    )
    packet = struct.pack("!HHHHHH", ident, 0x0100, 1, 0, 0, 0) + question + b"\0"
    packet += struct.pack("!HH", kind, 1)
    loop = asyncio.get_running_loop()
    transport, protocol = await loop.create_datagram_endpoint(
        lambda: _Reply(ident), remote_addr=server
    )
    try:
        transport.sendto(packet)
        return _addresses(await protocol.answer, kind)
    finally:
        transport.close()


def _addresses(data: bytes, kind: int) -> list[str]:
    """The addresses of type `kind` in the answer section of reply `data`."""
    _, flags, questions, answers, _, _ = struct.unpack_from("!HHHHHH", data)
    if flags & 0x000F not in (0, 3):  # NOERROR, NXDOMAIN
        raise ValueError(f"nameserver answered rcode {flags & 0x000F}")
    offset = 12
    for _ in range(questions):
        offset = _skip_name(data, offset) + 4
    found = []
    for _ in range(answers):
        offset = _skip_name(data, offset)
        rtype, _, _, length = struct.unpack_from("!HHIH", data, offset)
        offset += 10
        rdata = data[offset : offset + length]
        offset += length
        if rtype == kind and len(rdata) == (4 if kind == _A else 16):
            found.append(str(ipaddress.ip_address(rdata)))
    return found


def _skip_name(data: bytes, offset: int) -> int:
    while True:
        length = data[offset]
        if length & 0xC0 == 0xC0:  # a pointer ends the name
            return offset + 2
        offset += 1 + length
        if length == 0:
            return offset
