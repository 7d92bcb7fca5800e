"""The egress guard: where a handler may connect on an item's behalf.

Item params choose URLs, so every outbound HTTP connection of `http.request` and of
`image.resize` goes through `egress_session`, whose connector refuses, before any packet
is sent, the addresses of the house: loopback, private (RFC 1918), link-local,
unique-local, shared (CGNAT), multicast, unspecified, broadcast and reserved ranges, and
the same hidden in IPv4-mapped, IPv4-compatible, NAT64 and 6to4 IPv6 forms.
`BATCHD_EGRESS_ALLOW` (CIDRs and `host[:port]`s) opens chosen destinations.

Names are resolved once per connection by `EgressResolver`; every address of the answer
is checked and the connector connects to those checked addresses only, so a name that
answers differently the next time (DNS rebinding) gains nothing. A literal IP in a URL
is checked by `EgressConnector.connect`, as is every redirect's target (aiohttp follows
redirects through the same connector), at most `MAX_REDIRECTS` of them.

With `BATCHD_EGRESS_PROXY` the proxy connects: the guard checks each target's literal IP
or resolved name before handing the request over, and the proxy's own policy applies to
what it then dials. See docs/security.md, "Egress".
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.client_reqrep import ClientRequest
from aiohttp.tracing import Trace
from yarl import URL

from batchd.core.config import Settings
from batchd.worker.nameserver import NameserverResolver

__all__ = [
    "ALLOW_VARIABLE",
    "MAX_REDIRECTS",
    "EgressConnector",
    "EgressPolicy",
    "EgressRefused",
    "EgressResolver",
    "denied_reason",
    "egress_session",
]

ALLOW_VARIABLE = "BATCHD_EGRESS_ALLOW"
MAX_REDIRECTS = 5
# Targets whose check an egress connector keeps (a batch calls a few hosts, mostly).
TARGETS_KEPT = 1024

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network

# Refused unless allowed, with the reason a refusal names. The first match wins, so a
# narrower range comes before the one containing it.
_DENIED: tuple[tuple[Network, str], ...] = tuple(
    (ipaddress.ip_network(net), reason)
    for net, reason in (
        ("0.0.0.0/8", "unspecified"),
        ("10.0.0.0/8", "private"),
        ("100.64.0.0/10", "shared address space (CGNAT)"),
        ("127.0.0.0/8", "loopback"),
        ("169.254.0.0/16", "link-local"),
        ("172.16.0.0/12", "private"),
        ("192.0.0.0/24", "reserved"),
        ("192.168.0.0/16", "private"),
        ("198.18.0.0/15", "reserved"),
        ("224.0.0.0/4", "multicast"),
        ("255.255.255.255/32", "broadcast"),
        ("240.0.0.0/4", "reserved"),
        ("::/128", "unspecified"),
        ("::1/128", "loopback"),
        ("fc00::/7", "unique-local"),
        ("fe80::/10", "link-local"),
        ("fec0::/10", "site-local"),
        ("ff00::/8", "multicast"),
        ("2001::/32", "Teredo"),
        ("64:ff9b:1::/48", "local NAT64"),
    )
)
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_V4_COMPATIBLE = ipaddress.ip_network("::/96")


class EgressRefused(aiohttp.ClientConnectionError):
    """A destination the guard refuses; nothing was sent to it."""

    def __init__(self, destination: str, reason: str) -> None:
        self.destination = destination
        self.reason = reason
        super().__init__(
            f"destination {destination} is not allowed ({reason}); allow it with {ALLOW_VARIABLE}"
        )

    def __str__(self) -> str:
        return str(self.args[0])


def denied_reason(address: Address) -> str | None:
    """Why `address` is refused by default (None: a public address)."""
    embedded = _embedded_ipv4(address)
    if embedded is not None:
        reason = denied_reason(embedded)
        return None if reason is None else f"{reason}, as IPv6"
    for network, reason in _DENIED:
        if address.version == network.version and address in network:
            return reason
    if not address.is_global or address.is_reserved or address.is_multicast:
        return "reserved"
    return None


def _embedded_ipv4(address: Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 one stands for (mapped, compatible, NAT64, 6to4)."""
    if not isinstance(address, ipaddress.IPv6Address):
        return None
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address.sixtofour is not None:
        return address.sixtofour
    if address in _NAT64 or (address in _V4_COMPATIBLE and int(address) > 1):
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return None


def literal_address(host: str) -> Address | None:
    """The address a URL's host names literally, legacy IPv4 spellings (127.1,
    0x7f000001, 2130706433) included, as the socket layer would read them."""
    host = host.strip("[]")
    try:
        return ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        pass
    if host and all(c in "0123456789abcdefxABCDEFX." for c in host) and host[0].isdigit():
        try:
            return ipaddress.IPv4Address(socket.inet_aton(host))
        except OSError:
            return None
    return None


@dataclass(frozen=True)
class EgressPolicy:
    """Refuse the ranges above unless a network or a `host[:port]` entry allows them."""

    networks: tuple[Network, ...] = ()
    hosts: Mapping[str, frozenset[int] | None] = field(default_factory=dict)

    @classmethod
    def parse(cls, allow: str, *, also: Iterable[str] = ()) -> EgressPolicy:
        """From BATCHD_EGRESS_ALLOW's value (and `also`, entries of the same form).
        Raises ValueError naming a bad entry."""
        networks: list[Network] = []
        hosts: dict[str, set[int] | None] = {}
        for raw in [*allow.split(","), *also]:
            entry = raw.strip()
            if not entry:
                continue
            try:
                networks.append(ipaddress.ip_network(entry, strict=False))
                continue
            except ValueError:
                pass
            host, port = _host_port(entry)
            if port is None:
                hosts[host] = None
            elif host not in hosts or hosts[host] is not None:
                hosts.setdefault(host, set())
                ports = hosts[host]
                assert ports is not None
                ports.add(port)
        return cls(
            networks=tuple(networks),
            hosts={h: None if p is None else frozenset(p) for h, p in hosts.items()},
        )

    def check(self, host: str, port: int, address: Address) -> None:
        """Raise EgressRefused unless (`host`, `port`) may be reached at `address`."""
        reason = denied_reason(address)
        if reason is None or self._allows(host, port, address):
            return
        name = _normal(host)
        where = _join(name, port)
        if str(address) != name:
            where += f" ({address})"
        raise EgressRefused(where, reason)

    def _allows(self, host: str, port: int, address: Address) -> bool:
        name = _normal(host)
        if name in self.hosts:
            ports = self.hosts[name]
            if ports is None or port in ports:
                return True
        embedded = _embedded_ipv4(address)
        candidates = (address,) if embedded is None else (address, embedded)
        return any(a.version == n.version and a in n for a in candidates for n in self.networks)


class EgressResolver(AbstractResolver):
    """Resolves through `inner` and refuses an answer with any refused address: the
    connector then connects only to addresses checked here."""

    def __init__(self, policy: EgressPolicy, inner: AbstractResolver) -> None:
        self._policy = policy
        self._inner = inner

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        results = await self._inner.resolve(host, port, family)
        for result in results:
            self._policy.check(host, port, ipaddress.ip_address(result["host"].split("%")[0]))
        return results

    async def close(self) -> None:
        await self._inner.close()


class EgressConnector(aiohttp.TCPConnector):
    """A TCPConnector that checks every request's target before connecting: a literal
    IP here (aiohttp does not resolve those), a name through the resolver when a proxy
    will connect in its stead (without one, the resolver checks at connection time)."""

    def __init__(
        self, policy: EgressPolicy, resolver: EgressResolver, *, proxied: bool, **kwargs: Any
    ) -> None:
        super().__init__(resolver=resolver, **kwargs)
        self._policy = policy
        self._guard = resolver
        self._proxied = proxied
        # (host, port) targets seen: True for a literal address the policy allows, False
        # for a name. Both verdicts are the fixed policy's on the host's spelling; a
        # refused address is never kept, so it is refused again each time.
        self._seen: dict[tuple[str, int], bool] = {}

    async def connect(
        self,
        req: ClientRequest,
        traces: list[Trace],
        timeout: aiohttp.ClientTimeout,  # noqa: ASYNC109 -- aiohttp's signature
    ) -> aiohttp.connector.Connection:
        host, port = req.url.raw_host or "", req.url.port or 0
        literal = self._seen.get((host, port))
        if literal is None:
            address = literal_address(host)
            if address is not None:
                self._policy.check(host, port, address)
            literal = address is not None
            if len(self._seen) >= TARGETS_KEPT:
                self._seen.clear()
            self._seen[host, port] = literal
        if not literal and self._proxied:
            await self._guard.resolve(host, port, socket.AF_UNSPEC)
        return await super().connect(req, traces, timeout)


def egress_session(
    settings: Settings,
    *,
    limit: int,
    headers: Mapping[str, str],
    trace_configs: Sequence[aiohttp.TraceConfig] = (),
) -> aiohttp.ClientSession:
    """A cookie-less session whose every connection goes through the egress guard.
    `trace_configs`: aiohttp's request hooks (tracing's client spans)."""
    proxy = settings.egress_proxy.strip()
    also = []
    if proxy:
        url = URL(proxy)
        if url.scheme != "http" or not url.host:
            raise ValueError(f"BATCHD_EGRESS_PROXY={proxy!r}: expected http://host:port")
        also.append(_join(url.host, url.port or 80))  # the operator's proxy is reachable
    policy = EgressPolicy.parse(settings.egress_allow, also=also)
    inner: AbstractResolver = (
        NameserverResolver(settings.egress_nameservers)
        if settings.egress_nameservers.strip()
        else aiohttp.ThreadedResolver()
    )
    resolver = EgressResolver(policy, inner)
    connector = EgressConnector(policy, resolver, proxied=bool(proxy), limit=limit)
    return aiohttp.ClientSession(
        connector=connector,
        cookie_jar=aiohttp.DummyCookieJar(),
        headers=dict(headers),
        proxy=proxy or None,
        trace_configs=list(trace_configs) or None,
    )


def _host_port(entry: str) -> tuple[str, int | None]:
    """`host`, `host:port`, `[v6]` or `[v6]:port` as (host, port)."""
    if entry.startswith("["):
        host, _, rest = entry[1:].partition("]")
        port = rest.removeprefix(":") or None
    elif entry.count(":") == 1:
        host, port = entry.split(":")
    else:
        host, port = entry, None
    if not host or (port is not None and not port.isdigit()):
        raise ValueError(f"{ALLOW_VARIABLE}: {entry!r} is neither a CIDR nor host[:port]")
    return _normal(host), None if port is None else int(port)


def _normal(host: str) -> str:
    host = host.strip("[]").rstrip(".").lower()
    address = literal_address(host)
    return str(address) if address is not None and ":" in host else host


def _join(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
