"""`http.request` against a real local HTTP server."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
import structlog

from batchd.core.config import Settings
from batchd.core.logs import get_logger
from batchd.worker.handler import (
    Code,
    Handler,
    ItemContext,
    PermanentError,
    RetryableError,
    WorkerInfo,
)
from batchd.worker.handlers import http_request_handler
from batchd.worker.handlers.http import BODY_LIMIT, host_key


@pytest.fixture
async def http() -> AsyncIterator[Handler]:
    handler = http_request_handler()
    assert handler.startup is not None
    assert handler.shutdown is not None
    settings = Settings(egress_allow="127.0.0.1")  # http_base, a local peer
    await handler.startup(WorkerInfo(worker_id="test", concurrency=3, settings=settings))
    yield handler
    await handler.shutdown()


def _ctx() -> ItemContext:
    logger: structlog.typing.FilteringBoundLogger = get_logger("test")
    return ItemContext(batch_id="b", custom_id="i", attempt=1, logger=logger)


async def _call(handler: Handler, **params: Any) -> dict[str, Any]:
    return dict(await handler.run(params, _ctx()))


async def test_get_returns_status_headers_and_body(http: Handler, http_base: str) -> None:
    out = await _call(http, url=f"{http_base}/echo?x=1", headers={"X-Test": "t"})
    assert out["status"] == 200
    assert out["headers"]["X-Reply"] == "yes"
    assert out["body_truncated"] is False
    body = json.loads(out["body"])
    assert body["method"] == "GET"
    assert body["query"] == {"x": "1"}
    assert body["x_test"] == "t"
    json.dumps(out)  # the output is JSON as it is


async def test_post_json_and_text_bodies(http: Handler, http_base: str) -> None:
    out = await _call(http, method="POST", url=f"{http_base}/echo", json={"a": [1, 2]})
    sent = json.loads(out["body"])
    assert sent["content_type"] == "application/json"
    assert json.loads(sent["body"]) == {"a": [1, 2]}
    out = await _call(http, method="PUT", url=f"{http_base}/echo", body="plain")
    assert json.loads(out["body"])["body"] == "plain"


@pytest.mark.parametrize(
    ("status", "code", "message"),
    [
        (400, Code.INVALID_ARGUMENT, "HTTP 400 Bad Request"),
        (401, Code.UNAUTHENTICATED, "HTTP 401 Unauthorized"),
        (403, Code.PERMISSION_DENIED, "HTTP 403 Forbidden"),
        (404, Code.NOT_FOUND, "HTTP 404 Not Found"),
        (409, Code.ABORTED, "HTTP 409 Conflict"),
        (422, Code.FAILED_PRECONDITION, "HTTP 422 Unprocessable Entity"),
    ],
)
async def test_client_errors_fail_permanently(
    http: Handler, http_base: str, status: int, code: int, message: str
) -> None:
    with pytest.raises(PermanentError) as caught:
        await _call(http, url=f"{http_base}/status/{status}")
    assert caught.value.code == code
    assert caught.value.message == message


@pytest.mark.parametrize(
    ("status", "code"),
    [(408, Code.DEADLINE_EXCEEDED), (429, Code.RESOURCE_EXHAUSTED), (500, Code.UNAVAILABLE)],
)
async def test_transient_statuses_are_retryable(
    http: Handler, http_base: str, status: int, code: int
) -> None:
    with pytest.raises(RetryableError) as caught:
        await _call(http, url=f"{http_base}/status/{status}")
    assert caught.value.code == code
    assert caught.value.message.startswith(f"HTTP {status} ")
    assert caught.value.retry_after is None


@pytest.mark.parametrize(
    ("header", "expected"),
    [("7", 7.0), ("Wed, 21 Oct 2015 07:28:00 GMT", 0.0), ("soon", None)],
)
async def test_retry_after_is_parsed(
    http: Handler, http_base: str, header: str, expected: float | None
) -> None:
    with pytest.raises(RetryableError) as caught:
        await _call(http, url=f"{http_base}/status/503?retry_after={header}")
    assert caught.value.retry_after == expected


async def test_timeout_is_retryable(http: Handler, http_base: str) -> None:
    with pytest.raises(RetryableError) as caught:
        await _call(http, url=f"{http_base}/slow", timeout=0.2)
    assert caught.value.code == Code.DEADLINE_EXCEEDED
    assert caught.value.message == "HTTP request timed out after 0.2s"


async def test_connection_refused_is_retryable(http: Handler, free_port: int) -> None:
    with pytest.raises(RetryableError) as caught:
        await _call(http, url=f"http://127.0.0.1:{free_port}/")
    assert caught.value.code == Code.UNAVAILABLE


async def test_large_bodies_are_cut(http: Handler, http_base: str) -> None:
    out = await _call(http, url=f"{http_base}/large")
    assert out["body_truncated"] is True
    assert len(out["body"].encode()) <= BODY_LIMIT
    # Cut on a character boundary: no replacement character, a prefix of the real body.
    assert ("a" + "é" * 40_000).startswith(out["body"])
    assert len(out["body"].encode()) > BODY_LIMIT - 4


@pytest.mark.parametrize("charset", ["utf-8", "latin-1", "utf-16"])
async def test_bodies_are_decoded_in_their_charset(
    http: Handler, http_base: str, charset: str
) -> None:
    out = await _call(http, url=f"{http_base}/charset/{charset}")
    assert out["body"] == "héllo"


@pytest.mark.parametrize("charset", ["no-such-charset", "base64", "rot13", "idna"])
@pytest.mark.parametrize("large", [False, True])
async def test_a_charset_that_is_no_text_encoding_reads_as_utf8(
    http: Handler, http_base: str, charset: str, large: bool
) -> None:
    """A server's charset names no codec, one that is not bytes to text, or one that
    refuses to replace bad bytes (idna): the body reads as UTF-8; the item succeeds."""
    out = await _call(http, url=f"{http_base}/charset/{charset}?utf8=1&large={int(large)}")
    assert out["body_truncated"] is large
    if large:
        assert out["body"] == "a" * BODY_LIMIT
    else:
        assert out["body"] == "héllo"


async def test_pool_is_sized_to_the_worker(http: Handler) -> None:
    session = http.run.__self__._session  # type: ignore[attr-defined]
    assert session.connector.limit == 3


async def test_run_before_startup_is_an_error() -> None:
    with pytest.raises(RuntimeError, match="startup"):
        await _call(http_request_handler(), url="http://127.0.0.1/")


@pytest.mark.parametrize(
    ("url", "key"),
    [
        ("https://API.Example.com/v1/items?id=1", "host:api.example.com:443"),
        ("http://api.example.com/v2", "host:api.example.com:80"),
        ("http://user:secret@api.example.com:8080/x#top", "host:api.example.com:8080"),
        ("http://api.example.com:8080?q=/other", "host:api.example.com:8080"),
        ("http://[::1]:9000/", "host:::1:9000"),
        ("https://bücher.example/a", "host:bücher.example:443"),
        ("not a url", None),
        ("http:///path-only", None),
    ],
)
def test_items_are_rate_keyed_by_destination(url: str, key: str | None) -> None:
    # Twice: the second answer comes from what the first remembered.
    assert host_key({"url": url}) == key
    assert host_key({"url": url}) == key


def test_an_item_without_a_url_has_no_key() -> None:
    assert host_key({}) is None
    assert host_key({"url": 5}) is None
