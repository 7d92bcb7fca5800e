"""Reaching the servers' Redis: a URL fit for a log line, and the start-up check that
tells wrong credentials from an outage.

Redis URLs carry their credentials (`redis://user:password@host:6379/0`, `rediss://…`
for TLS, `unix://:password@/path/to.sock`); anything that logs or prints one goes
through `redact`. Wrong credentials are a configuration error, not an outage: redis-py
raises `AuthenticationError`, a `ConnectionError`, which the server's health check and
the worker's outage handling would otherwise wait out forever.
"""

from __future__ import annotations

from urllib.parse import parse_qsl, urlencode, urlsplit

from redis.asyncio import Redis
from redis.exceptions import AuthenticationError, RedisError

__all__ = ["CHECK_TIMEOUT", "redact", "redis_access_problem"]

# Seconds the start-up check waits for Redis; past that it leaves Redis to the outage
# handling, as it does a refused connection.
CHECK_TIMEOUT = 5.0
_HIDDEN = "***"


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
        query = urlencode([(k, _HIDDEN if k == "password" else v) for k, v in pairs], safe="*/")
    # By hand: urlunsplit drops the // of a unix URL, whose authority is empty.
    shown = f"{parts.scheme}://{netloc}{parts.path}"
    return shown + (f"?{query}" if query else "") + (f"#{parts.fragment}" if parts.fragment else "")


async def redis_access_problem(url: str) -> str | None:
    """What is wrong with `url`'s credentials or TLS set-up, in a sentence naming the
    URL (redacted), or None: they work, or Redis cannot be reached now (an outage, which
    the caller waits out as it would later on)."""
    try:
        redis = Redis.from_url(
            url, socket_connect_timeout=CHECK_TIMEOUT, socket_timeout=CHECK_TIMEOUT
        )
    except ValueError as exc:
        return f"the Redis URL {redact(url)} is not one batchd can use: {exc}"
    try:
        await redis.ping()
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
