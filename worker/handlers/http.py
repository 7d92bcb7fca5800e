"""`http.request`: one outbound HTTP call per item.

Every item of a worker process goes through one aiohttp `ClientSession`, opened by the
startup hook with a connection pool as large as the worker's concurrency, and closed by
the shutdown hook. The session keeps no cookies: items must not see each other's.

How a response or an error maps to the item's fate:

    2xx, 3xx (after redirects)      SUCCEEDED: status, headers, body (text, capped)
    408                             retry, DEADLINE_EXCEEDED
    429                             retry, RESOURCE_EXHAUSTED (Retry-After honoured), and
                                    slow down (SlowDown)
    503                             retry, UNAVAILABLE (Retry-After honoured), slow down
    other 5xx                       retry, UNAVAILABLE (Retry-After honoured)
    other 4xx                       fail, 400 INVALID_ARGUMENT, 401 UNAUTHENTICATED,
                                    403 PERMISSION_DENIED, 404 NOT_FOUND, 409 ABORTED,
                                    otherwise FAILED_PRECONDITION
    timeout                         retry, DEADLINE_EXCEEDED
    connection error                retry, UNAVAILABLE
    invalid URL, TLS certificate    fail, INVALID_ARGUMENT / FAILED_PRECONDITION
    more than 5 redirects           fail, FAILED_PRECONDITION
    a destination the egress guard  fail, PERMISSION_DENIED naming BATCHD_EGRESS_ALLOW
      refuses (worker/egress.py)      (nothing was sent to it)

Items are rate-limit keyed by destination, `host:<host>:<port>` (`rate_key`), when their
batch names no rate_limit_key: a 429 or 503 then slows every batch calling that host
down, on every worker, with no limit configured (docs/design.md, "Flow control").
"""

from __future__ import annotations

import codecs
import email.utils
import time
from collections.abc import Mapping
from http import HTTPStatus
from typing import Any

import aiohttp
from yarl import URL

from batchd.core.domain import BatchOptions, RetryPolicy
from batchd.worker.egress import MAX_REDIRECTS, EgressRefused
from batchd.worker.handler import (
    Code,
    Handler,
    HandlerError,
    ItemContext,
    PermanentError,
    RetryableError,
    SlowDown,
    WorkerInfo,
)

__all__ = [
    "BODY_LIMIT",
    "PARAMS_SCHEMA",
    "client_error",
    "host_key",
    "http_request_handler",
    "raise_for_status",
]

# Response bodies are cut to this many bytes (then `body_truncated` is true).
BODY_LIMIT = 64 * 1024
DEFAULT_TIMEOUT = 30.0
USER_AGENT = "batchd-http-request/0.1"

PARAMS_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "method": {
            "type": "string",
            "enum": ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"],
            "default": "GET",
        },
        "url": {"type": "string", "pattern": "^[Hh][Tt][Tt][Pp][Ss]?://.+", "maxLength": 8192},
        "headers": {"type": "object", "additionalProperties": {"type": "string"}},
        "json": {"description": "A JSON request body (sets Content-Type: application/json)."},
        "body": {"type": "string", "description": "A text request body."},
        "timeout": {
            "type": "number",
            "exclusiveMinimum": 0,
            "maximum": 600,
            "default": DEFAULT_TIMEOUT,
            "description": "Seconds for the whole call, body included.",
        },
    },
    "required": ["url"],
    "additionalProperties": False,
    # json and body exclude each other, said so that the validator looks only when json
    # is there: a compiled `"not": {"required": [...]}` fails its inner schema, raising
    # and catching an exception, for every item that is fine.
    "dependencies": {"json": {"properties": {"body": False}}},
}

_PERMANENT_CODES: dict[int, Code] = {
    400: Code.INVALID_ARGUMENT,
    401: Code.UNAUTHENTICATED,
    403: Code.PERMISSION_DENIED,
    404: Code.NOT_FOUND,
    409: Code.ABORTED,
}


class _HttpRequest:
    """The handler's state: the worker process's one session."""

    def __init__(self) -> None:
        self._session: aiohttp.ClientSession | None = None

    async def startup(self, worker: WorkerInfo) -> None:
        self._session = worker.egress_session(headers={"User-Agent": USER_AGENT})

    async def shutdown(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def run(self, params: dict[str, Any], ctx: ItemContext) -> Mapping[str, Any]:
        if self._session is None:
            raise RuntimeError("http.request used before its startup hook ran")
        timeout = float(params.get("timeout", DEFAULT_TIMEOUT))
        body: dict[str, Any] = {}
        if "json" in params:
            body["json"] = params["json"]
        elif "body" in params:
            body["data"] = str(params["body"]).encode()
        try:
            async with self._session.request(
                str(params.get("method", "GET")),
                str(params["url"]),
                headers=params.get("headers"),
                timeout=_client_timeout(timeout),
                max_redirects=MAX_REDIRECTS,
                **body,
            ) as response:
                raise_for_status(response)
                text, truncated = await _read_text(response)
                return {
                    "status": response.status,
                    "headers": _headers(response),
                    "body": text,
                    "body_truncated": truncated,
                }
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise client_error(exc, "HTTP request", timeout) from exc


def http_request_handler() -> Handler:
    """A fresh `http.request` handler, with its own (not yet opened) session."""
    state = _HttpRequest()
    return Handler(
        name="http.request",
        description=(
            "Makes one HTTP request and returns {status, headers, body, body_truncated}; "
            f"bodies are cut at {BODY_LIMIT // 1024} KiB. 408, 429, 5xx, timeouts and "
            "connection errors are retried; other 4xx fail the item."
        ),
        params_schema=PARAMS_SCHEMA,
        default_options=BatchOptions(
            chunk_size=100,
            retry_policy=RetryPolicy(
                max_attempts=5, min_backoff=0.2, max_backoff=60.0, max_doublings=5
            ),
        ),
        run=state.run,
        startup=state.startup,
        shutdown=state.shutdown,
        rate_key=host_key,
    )


def host_key(params: Mapping[str, Any]) -> str | None:
    """`host:<host>:<port>` of the item's URL (None if it has none)."""
    url = params.get("url")
    if not isinstance(url, str):
        return None
    # Keyed by what comes before the path ("https://user@host:port"): the items of a
    # batch mostly call a few hosts, and parsing every URL whole showed in profiles.
    scheme, slashes, rest = url.partition("://")
    origin = scheme + slashes + rest.split("/", 1)[0].split("?", 1)[0].split("#", 1)[0]
    if origin in _ORIGIN_KEYS:
        return _ORIGIN_KEYS[origin]
    if len(_ORIGIN_KEYS) >= ORIGINS_KEPT:
        _ORIGIN_KEYS.clear()
    key = _ORIGIN_KEYS[origin] = _origin_key(origin)
    return key


def _origin_key(origin: str) -> str | None:
    try:
        url = URL(origin)
    except (ValueError, TypeError):
        return None
    if not url.host:
        return None
    return f"host:{url.host.lower()}:{url.port}"


# Origins whose keys host_key remembers at most (then it forgets them all).
ORIGINS_KEPT = 10_000
_ORIGIN_KEYS: dict[str, str | None] = {}


def _client_timeout(total: float) -> aiohttp.ClientTimeout:
    """The (frozen, shareable) ClientTimeout of `total` seconds: one per distinct timeout
    rather than one per request."""
    timeout = _TIMEOUTS.get(total)
    if timeout is None:
        if len(_TIMEOUTS) >= TIMEOUTS_KEPT:
            _TIMEOUTS.clear()
        timeout = _TIMEOUTS[total] = aiohttp.ClientTimeout(total=total)
    return timeout


# Distinct timeouts _client_timeout keeps at most (then it forgets them all).
TIMEOUTS_KEPT = 64
_TIMEOUTS: dict[float, aiohttp.ClientTimeout] = {}


def client_error(
    exc: TimeoutError | aiohttp.ClientError, what: str, timeout: float
) -> HandlerError:
    """The item's fate for an aiohttp failure of `what` ("HTTP request", ...): timeouts
    and connection errors are retried; a bad URL, a bad certificate and redirect loops
    are not, nor a destination the egress guard refuses."""
    if isinstance(exc, EgressRefused):
        return PermanentError(str(exc), code=Code.PERMISSION_DENIED)
    if isinstance(exc, TimeoutError):  # aiohttp's timeouts subclass it
        return RetryableError(f"{what} timed out after {timeout:g}s", code=Code.DEADLINE_EXCEEDED)
    if isinstance(exc, aiohttp.InvalidURL):
        return PermanentError(f"invalid URL: {exc}", code=Code.INVALID_ARGUMENT)
    if isinstance(exc, aiohttp.ClientConnectorCertificateError):
        return PermanentError(
            f"TLS certificate error: {exc.certificate_error}", code=Code.FAILED_PRECONDITION
        )
    if isinstance(exc, aiohttp.TooManyRedirects):
        return PermanentError("too many redirects", code=Code.FAILED_PRECONDITION)
    return RetryableError(f"{what} failed: {type(exc).__name__}: {exc}", code=Code.UNAVAILABLE)


def raise_for_status(response: aiohttp.ClientResponse) -> None:
    status = response.status
    if status < 400:
        return
    message = f"HTTP {status} {response.reason or _reason(status)}".rstrip()
    if status == 408:
        raise RetryableError(message, code=Code.DEADLINE_EXCEEDED)
    if status == 429:
        raise SlowDown(message, code=Code.RESOURCE_EXHAUSTED, retry_after=_retry_after(response))
    if status == 503:
        raise SlowDown(message, code=Code.UNAVAILABLE, retry_after=_retry_after(response))
    if status >= 500:
        raise RetryableError(message, code=Code.UNAVAILABLE, retry_after=_retry_after(response))
    raise PermanentError(message, code=_PERMANENT_CODES.get(status, Code.FAILED_PRECONDITION))


def _reason(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return ""


def _retry_after(response: aiohttp.ClientResponse) -> float | None:
    """Retry-After as seconds from now: either delta-seconds or an HTTP date."""
    value = response.headers.get("Retry-After", "").strip()
    if not value:
        return None
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:  # RFC 9110 dates are GMT
        return None
    return max(when.timestamp() - time.time(), 0.0)


def _headers(response: aiohttp.ClientResponse) -> dict[str, str]:
    """Response headers as a plain dict; repeated headers joined with ", "."""
    merged: dict[str, str] = {}
    for key, value in response.headers.items():
        name = str(key)  # not multidict's istr: a str subclass the output encoder refuses
        merged[name] = f"{merged[name]}, {value}" if name in merged else value
    return merged


async def _read_text(response: aiohttp.ClientResponse) -> tuple[str, bool]:
    """At most BODY_LIMIT bytes of the body, decoded; and whether more was left unread."""
    length = response.content_length
    if length is not None and length <= BODY_LIMIT:
        # Small, and said so: in one read (reading in chunks cost a tenth of the handler).
        return _decode(await response.read(), response.charset, final=True), False
    parts: list[bytes] = []
    size = 0
    async for data in response.content.iter_chunked(BODY_LIMIT):
        parts.append(data)
        size += len(data)
        if size > BODY_LIMIT:
            break
    raw = b"".join(parts)
    truncated = len(raw) > BODY_LIMIT
    # Not final when cut: a character split at the limit is dropped, not garbled.
    return _decode(raw[:BODY_LIMIT], response.charset, final=not truncated), truncated


def _decode(raw: bytes, charset: str | None, *, final: bool) -> str:
    """`raw` as text in the response's `charset`, bad bytes replaced; as UTF-8 when the
    charset names no codec, one that is not a text encoding (base64) or one that refuses
    to replace (idna). Not `final`: an incomplete character at the end is dropped."""
    try:
        return _decode_as(raw, charset or "utf-8", final)
    except (LookupError, UnicodeError):
        return _decode_as(raw, "utf-8", final)


def _decode_as(raw: bytes, codec: str, final: bool) -> str:
    if final:  # not an incremental decoder, looked up and built per response: it showed
        return raw.decode(codec, errors="replace")  # in the handler's profile
    # As bytes.decode does, refuse a codec that is no text encoding or will not replace
    # (an incremental decoder would hand back bytes, or fail an assertion).
    b" ".decode(codec, errors="replace")
    return codecs.getincrementaldecoder(codec)(errors="replace").decode(raw, final=False)
