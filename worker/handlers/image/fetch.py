"""Downloads of `image.resize` sources given as http(s) URLs, capped in size.

Errors map as in `http.request`: a 4xx answer fails the item for good (404 NOT_FOUND,
403 PERMISSION_DENIED, ...), 408, 429, 5xx, timeouts and connection errors are retried
(429 and 503 also slow the source's host down), and a body larger than the cap fails
the item (INVALID_ARGUMENT) as soon as the cap is passed, without reading the rest.

Downloads go through the egress guard (worker/egress.py): a source in a refused range
fails PERMISSION_DENIED before any packet is sent to it, with the same message whatever
listens there, so the handler is no port scanner. Redirects: at most five.
"""

from __future__ import annotations

import aiohttp

from batchd.worker.egress import MAX_REDIRECTS
from batchd.worker.handler import Code, PermanentError

# The status mapping is http.request's own, so that both handlers treat a peer alike.
from batchd.worker.handlers.http import client_error, raise_for_status

__all__ = ["FETCH_TIMEOUT", "fetch"]

FETCH_TIMEOUT = 60.0  # seconds for the whole download, body included
_READ_SIZE = 256 * 1024


async def fetch(session: aiohttp.ClientSession, url: str, max_bytes: int) -> bytes:
    """The body at `url`, at most `max_bytes` long (else PermanentError)."""
    try:
        async with session.get(
            url, timeout=aiohttp.ClientTimeout(total=FETCH_TIMEOUT), max_redirects=MAX_REDIRECTS
        ) as response:
            raise_for_status(response)
            if (response.content_length or 0) > max_bytes:
                raise _too_large(max_bytes, response.content_length)
            parts: list[bytes] = []
            size = 0
            async for data in response.content.iter_chunked(_READ_SIZE):
                size += len(data)
                if size > max_bytes:
                    raise _too_large(max_bytes, None)
                parts.append(data)
            return b"".join(parts)
    except (TimeoutError, aiohttp.ClientError) as exc:
        raise client_error(exc, "download of the source", FETCH_TIMEOUT) from exc


def _too_large(max_bytes: int, announced: int | None) -> PermanentError:
    size = f"{announced:,} bytes" if announced is not None else "larger"
    return PermanentError(
        f"source is {size}, more than the limit of {max_bytes:,} bytes",
        code=Code.INVALID_ARGUMENT,
    )
