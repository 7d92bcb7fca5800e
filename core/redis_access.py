"""Reaching the servers' Redis: the one factory every batchd client is built by, a URL
fit for a log line, and the start-up check that tells wrong credentials from an outage.

Redis URLs carry their credentials (`redis://user:password@host:6379/0`, `rediss://…`
for TLS, `unix://:password@/path/to.sock`); anything that logs or prints one goes
through `redact`. A `redis+sentinel://` URL names Sentinels instead of a server:

    redis+sentinel://[user:password@]host:26379[,host2:26379...]/service[/db]
        [?sentinel_username=...&sentinel_password=...]

`connect` then asks the Sentinels for the service's primary before each new connection,
so clients follow a failover without a restart (redis-py's `Sentinel.master_for`). The
authority's credentials are the primary's; the Sentinels' own, if they ask for any, are
the query's. See docs/operations.md, "Redis high availability".

Wrong credentials are a configuration error, not an outage: redis-py raises
`AuthenticationError`, a `ConnectionError`, which the server's health check and the
worker's outage handling would otherwise wait out forever.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar, overload
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit

from redis.asyncio import Redis
from redis.asyncio.connection import AbstractConnection
from redis.asyncio.sentinel import MasterNotFoundError, Sentinel, SentinelConnectionPool
from redis.exceptions import AuthenticationError, RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

__all__ = [
    "CHECK_TIMEOUT",
    "SENTINEL_PORT",
    "SENTINEL_SCHEME",
    "SentinelTarget",
    "command_timeouts",
    "connect",
    "parse_sentinel_url",
    "redact",
    "redis_access_problem",
]

# Seconds the start-up check waits for Redis; past that it leaves Redis to the outage
# handling, as it does a refused connection.
CHECK_TIMEOUT = 5.0
_HIDDEN = "***"
_SECRETS = frozenset({"password", "sentinel_password"})

SENTINEL_SCHEME = "redis+sentinel"
SENTINEL_PORT = 26379
# Seconds a Sentinel gets to accept a connection and answer: one that does not is
# skipped for the next, so a Sentinel lost with its host does not stall the lookup.
SENTINEL_TIMEOUT = 2.0
_SENTINEL_PARAMETERS = frozenset({"sentinel_username", "sentinel_password"})

R = TypeVar("R", bound=Redis)


@dataclass(frozen=True)
class SentinelTarget:
    """What a `redis+sentinel://` URL names: the Sentinels, the service they watch, the
    primary's database and credentials, and the Sentinels' own credentials."""

    sentinels: Sequence[tuple[str, int]]
    service: str
    db: int = 0
    username: str | None = None
    password: str | None = None
    sentinel_username: str | None = None
    sentinel_password: str | None = None


def parse_sentinel_url(url: str) -> SentinelTarget | None:
    """The Sentinels and service a `redis+sentinel://` URL names; None for any other URL.
    ValueError (naming what is wrong, never the password) for a malformed one."""
    parts = urlsplit(url)
    if parts.scheme == "rediss+sentinel":
        raise ValueError("TLS to Sentinels and the primary (rediss+sentinel://) is not supported")
    if parts.scheme != SENTINEL_SCHEME:
        return None
    userinfo, _, hosts = parts.netloc.rpartition("@")
    user, colon, password = userinfo.partition(":")
    sentinels = [_address(address) for address in hosts.split(",")]
    path = [segment for segment in parts.path.split("/") if segment]
    if not path or len(path) > 2:
        raise ValueError(
            f"a {SENTINEL_SCHEME}:// URL names the service after its Sentinels, then an "
            "optional database: /mymaster or /mymaster/0"
        )
    try:
        db = int(path[1]) if len(path) == 2 else 0
    except ValueError:
        raise ValueError(f"database {path[1]!r}: a number") from None
    query = dict(parse_qsl(parts.query, keep_blank_values=True))
    unknown = sorted(set(query) - _SENTINEL_PARAMETERS)
    if unknown:
        raise ValueError(
            f"unknown parameter(s) {', '.join(unknown)} of a {SENTINEL_SCHEME}:// URL: "
            f"it takes {', '.join(sorted(_SENTINEL_PARAMETERS))}"
        )
    return SentinelTarget(
        sentinels=sentinels,
        service=unquote(path[0]),
        db=db,
        username=unquote(user) or None,
        password=unquote(password) if colon else None,
        sentinel_username=query.get("sentinel_username") or None,
        sentinel_password=query.get("sentinel_password") or None,
    )


def _address(text: str) -> tuple[str, int]:
    if text.startswith("["):  # an IPv6 address, in brackets
        host, _, rest = text[1:].partition("]")
        _, colon, port = rest.partition(":")
    else:
        host, colon, port = text.partition(":")
    if not host:
        raise ValueError(f"Sentinel address {text!r}: host[:port]")
    if not colon:
        return host, SENTINEL_PORT
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"Sentinel address {text!r}: the port must be a number below 65536")
    return host, int(port)


def command_timeouts(seconds: float) -> dict[str, float | None]:
    """The options of `connect` that bound a command's wait for its reply and a new
    connection's opening at `seconds` (`Settings.redis_timeout`; 0 or less: no bound).
    Without them a connection whose peer went silent (a network partition: no reset,
    no reply) holds its command forever; with them the command fails with redis-py's
    TimeoutError and its connection is dropped, so the next one starts afresh."""
    bound = seconds if seconds > 0 else None
    return {"socket_timeout": bound, "socket_connect_timeout": bound}


@overload
def connect(url: str, *, redis_class: type[R], **options: Any) -> R: ...
@overload
def connect(url: str, **options: Any) -> Redis: ...
def connect(url: str, *, redis_class: type[Redis] = Redis, **options: Any) -> Redis:
    """A client (of `redis_class`) of the Redis that `url` names. For a sentinel URL,
    of the service's current primary: each new connection asks the Sentinels where it
    is, and one open to a primary demoted in a failover is closed (redis-py turns its
    ReadOnlyError into a ConnectionError). `options` go to every connection to Redis
    (the Sentinels' take their timeouts from SENTINEL_TIMEOUT). Opens no connection.
    ValueError for a URL batchd cannot use."""
    target = parse_sentinel_url(url)
    if target is None:
        client: Redis = redis_class.from_url(url, **options)
        return _bound_sends(client)
    credentials = {"username": target.sentinel_username, "password": target.sentinel_password}
    sentinel = Sentinel(
        target.sentinels,
        sentinel_kwargs={
            **{k: v for k, v in credentials.items() if v is not None},
            "socket_connect_timeout": SENTINEL_TIMEOUT,
            "socket_timeout": SENTINEL_TIMEOUT,
        },
    )
    primary = {"username": target.username, "password": target.password}
    primary_client: Redis = sentinel.master_for(
        target.service,
        redis_class=redis_class,
        connection_pool_class=_PrimaryPool,
        db=target.db,
        **{k: v for k, v in primary.items() if v is not None},
        **options,
    )
    return _bound_sends(primary_client)


def _bound_sends(client: R) -> R:
    """`client`, whose connections bound a command's send with `asyncio.timeout` rather
    than redis-py's `asyncio.wait_for`: under Python 3.11, wait_for swallows a
    cancellation that arrives as its send completes, and the cancelled task (a worker's
    poll loop being stopped, say) runs on. Reads keep redis-py's bound."""
    pool = client.connection_pool
    if pool.connection_kwargs.get("socket_timeout"):
        pool.connection_class = _send_bounded(pool.connection_class)
    return client


_BOUNDED: dict[type[AbstractConnection], type[AbstractConnection]] = {}


def _send_bounded(cls: type[AbstractConnection]) -> type[AbstractConnection]:
    if issubclass(cls, _SendBound):
        return cls
    if cls not in _BOUNDED:
        _BOUNDED[cls] = type(f"SendBounded{cls.__name__}", (_SendBound, cls), {})
    return _BOUNDED[cls]


class _SendBound(AbstractConnection):
    """A connection that opens (and health-checks) itself as redis-py does, then sends
    with its socket_timeout as an `asyncio.timeout` (see `_bound_sends`)."""

    async def send_packed_command(
        self, command: bytes | str | Iterable[bytes], check_health: bool = True
    ) -> None:
        if not self.is_connected:
            await self.connect()  # type: ignore[no-untyped-call]  # handshake bounded as reads
        elif check_health:
            await self.check_health()  # type: ignore[no-untyped-call]
        bound, self.socket_timeout = self.socket_timeout, None  # no wait_for below
        try:
            async with asyncio.timeout(bound):
                await super().send_packed_command(command, check_health=False)
        except TimeoutError:
            raise RedisTimeoutError("Timeout writing to socket") from None
        finally:
            self.socket_timeout = bound


class _PrimaryPool(SentinelConnectionPool):
    """The connections to a service's primary; closing them all (as the client's
    `aclose` does) closes the connections to the Sentinels too, which redis-py leaves
    open."""

    async def disconnect(self, inuse_connections: bool = True) -> None:
        await super().disconnect(inuse_connections)
        if inuse_connections:
            for sentinel in self.sentinel_manager.sentinels:
                await sentinel.aclose()


def redact(url: str) -> str:
    """`url` with its password (in the authority or a `password=` parameter) replaced by
    ***; the rest, user name included, as it was."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return _HIDDEN  # not a URL: it could be anything, a password too
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, _, hostport = netloc.rpartition("@")
        user, colon, _ = userinfo.partition(":")
        netloc = f"{user}{':' + _HIDDEN if colon else ''}@{hostport}"
    query = parts.query
    if query:
        pairs = parse_qsl(query, keep_blank_values=True)
        query = urlencode([(k, _HIDDEN if k in _SECRETS else v) for k, v in pairs], safe="*/")
    # By hand: urlunsplit drops the // of a unix URL, whose authority is empty.
    shown = f"{parts.scheme}://{netloc}{parts.path}"
    return shown + (f"?{query}" if query else "") + (f"#{parts.fragment}" if parts.fragment else "")


async def redis_access_problem(url: str) -> str | None:
    """What is wrong with `url`'s credentials or TLS set-up, in a sentence naming the
    URL (redacted), or None: they work, or Redis cannot be reached now (an outage, which
    the caller waits out as it would later on)."""
    try:
        redis = connect(url, socket_connect_timeout=CHECK_TIMEOUT, socket_timeout=CHECK_TIMEOUT)
    except ValueError as exc:
        return f"the Redis URL {redact(url)} is not one batchd can use: {exc}"
    try:
        await redis.ping()
    except MasterNotFoundError as exc:
        # The Sentinels' own errors are folded into its message.
        if AuthenticationError.__name__ in str(exc):
            return (
                f"the Sentinels of {redact(url)} refused the credentials: check the "
                "sentinel_username and sentinel_password of the Redis URL"
            )
        return None
    except RedisError as exc:
        refused = _refusal(exc)
        if refused is not None:
            return (
                f"Redis at {redact(url)} refused the credentials ({refused}): check the user "
                "and password in the Redis URL"
            )
        if _tls_refused(exc):
            return (
                f"Redis at {redact(url)} failed the TLS handshake ({exc}): check the rediss:// "
                "URL's ssl_ca_certs, ssl_certfile and ssl_keyfile"
            )
        return None
    except OSError:
        return None
    finally:
        await redis.aclose()
    return None


def _refusal(exc: BaseException) -> AuthenticationError | None:
    """The AuthenticationError in `exc`: redis-py wraps it in a ConnectionError on a
    unix socket."""
    if isinstance(exc, AuthenticationError):
        return exc
    if isinstance(exc.__cause__, AuthenticationError):
        return exc.__cause__
    return None


def _tls_refused(exc: BaseException) -> bool:
    """A certificate the client rejected (or the server's rejection of the client's):
    that does not heal by waiting."""
    return "CERTIFICATE_VERIFY_FAILED" in str(exc) or "certificate" in str(exc).lower()
