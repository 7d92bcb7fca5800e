"""Traces through the real client, a traced server, Redis and a traced worker: one trace
per batch, from its SubmitBatch or UploadBatch call to each item's attempt and the
handler's HTTP requests, with the spans in an in-memory exporter."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

import grpc
import pytest
from aiohttp import web
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode
from redis.asyncio import Redis
from support.http_peer import serving
from support.polling import poll

from batchd.client import AsyncClient, BatchdError, BatchState
from batchd.core.config import Settings
from batchd.core.keys import Keys
from batchd.core.otel import Tracing
from batchd.server.app import BatchdServer, start_server
from batchd.v1 import batch_pb2, batch_service_pb2, batch_service_pb2_grpc
from batchd.worker.app import build_worker


@dataclass
class Service:
    client: AsyncClient
    server: BatchdServer
    keys: Keys


@pytest.fixture(scope="module")
def exporter() -> InMemorySpanExporter:
    return InMemorySpanExporter()


@pytest.fixture(scope="module")
def tracing(exporter: InMemorySpanExporter) -> Tracing:
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return Tracing(provider)


@pytest.fixture(scope="module")
async def peer() -> AsyncIterator[tuple[str, list[str]]]:
    """A local HTTP peer answering 200, and the traceparent headers it received."""
    received: list[str] = []

    async def ok(request: web.Request) -> web.Response:
        received.append(request.headers.get("traceparent", ""))
        return web.json_response({"ok": True})

    app = web.Application()
    app.router.add_route("*", "/ok", ok)
    async with serving(app) as base:
        yield base, received


@contextlib.asynccontextmanager
async def _service(redis_url: str, prefix: str, tracing: Tracing | None) -> AsyncIterator[Service]:
    settings = Settings(
        redis_url=redis_url,
        host="127.0.0.1",
        key_prefix=prefix,
        egress_allow="127.0.0.1",
        watch_min_interval=0.01,
        watch_min_heartbeat=0.01,
        metrics_port=0,  # no /metrics listener: two servers run at once
    )
    server = await start_server(settings, port=0, tracing=tracing)
    worker = build_worker(settings, poll_delay=0.02, tracing=tracing)
    task = asyncio.create_task(worker.async_run())
    await worker.started.wait()
    try:
        async with AsyncClient(f"127.0.0.1:{server.port}") as client:
            yield Service(client, server, Keys(prefix))
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await worker.close()
        await server.stop(grace=0)


@pytest.fixture(scope="module")
async def traced(redis_url: str, tracing: Tracing) -> AsyncIterator[Service]:
    async with _service(redis_url, "traced:", tracing) as service:
        yield service


async def _finished(client: AsyncClient, batch_id: str) -> None:
    """Watches the batch to its end (a server-streaming call through the traced server)."""
    async for progress in client.watch(batch_id, min_interval=0.01):
        last = progress
    assert last.state == BatchState.COMPLETED


async def _spans_of(
    exporter: InMemorySpanExporter, batch_id: str, chunks: int, items: int
) -> tuple[list[ReadableSpan], list[ReadableSpan]]:
    """The batch's chunk and item spans, once the worker has ended them all."""

    def of_batch() -> tuple[list[ReadableSpan], list[ReadableSpan]]:
        spans = exporter.get_finished_spans()
        chunk_spans = [
            s
            for s in spans
            if s.kind is SpanKind.CONSUMER and _attr(s, "batchd.batch_id") == batch_id
        ]
        chunk_ids = {_span_id(s) for s in chunk_spans}
        item_spans = [s for s in spans if s.parent is not None and s.parent.span_id in chunk_ids]
        return chunk_spans, item_spans

    async def complete() -> tuple[list[ReadableSpan], list[ReadableSpan]] | None:
        chunk_spans, item_spans = of_batch()
        return (chunk_spans, item_spans) if len(item_spans) >= items else None

    chunk_spans, item_spans = await poll(complete)
    assert len({_attr(s, "batchd.chunk") for s in chunk_spans}) == chunks
    return chunk_spans, item_spans


def _attr(span: ReadableSpan, name: str) -> object:
    return (span.attributes or {}).get(name)


def _span_id(span: ReadableSpan) -> int:
    context = span.get_span_context()
    assert context is not None
    return context.span_id


def _trace_id(span: ReadableSpan) -> int:
    context = span.get_span_context()
    assert context is not None
    return context.trace_id


def _server_span(exporter: InMemorySpanExporter, rpc: str, batch_id: str) -> ReadableSpan:
    (span,) = [
        s
        for s in exporter.get_finished_spans()
        if s.kind is SpanKind.SERVER
        and s.name == f"/batchd.v1.BatchService/{rpc}"
        and _attr(s, "batchd.batch_id") == batch_id
    ]
    return span


def _assert_one_trace(
    call: ReadableSpan, chunks: Sequence[ReadableSpan], items: Sequence[ReadableSpan]
) -> None:
    trace_id = _trace_id(call)
    for chunk in chunks:
        assert _trace_id(chunk) == trace_id
        assert chunk.parent is not None
        assert chunk.parent.span_id == _span_id(call)
        assert chunk.parent.is_remote  # continued from the traceparent the batch kept
    for item in items:
        assert _trace_id(item) == trace_id


async def test_a_submitted_batch_is_one_trace(
    traced: Service, exporter: InMemorySpanExporter, redis: Redis
) -> None:
    items: list[tuple[str, dict[str, Any]]] = [(f"n{i}", {}) for i in range(5)]
    submitted = await traced.client.submit("noop", items, options={"chunk_size": 2})
    batch_id = submitted.batch.batch_id
    await _finished(traced.client, batch_id)
    chunks, item_spans = await _spans_of(exporter, batch_id, chunks=3, items=5)
    call = _server_span(exporter, "SubmitBatch", batch_id)
    _assert_one_trace(call, chunks, item_spans)
    assert sorted(str(_attr(s, "batchd.item.custom_id")) for s in item_spans) == [
        f"n{i}" for i in range(5)
    ]
    assert {_attr(s, "batchd.item.state") for s in item_spans} == {"SUCCEEDED"}
    assert {_attr(s, "batchd.chunk.end") for s in chunks} == {"done"}
    assert {s.name for s in chunks} == {"chunk noop"}
    stored = await redis.hget(traced.keys.meta(batch_id), "trace")  # type: ignore[misc]
    assert stored is not None
    assert stored.decode().split("-")[1] == f"{_trace_id(call):032x}"


async def test_an_uploaded_batch_is_one_trace(
    traced: Service, exporter: InMemorySpanExporter
) -> None:
    items: list[tuple[str, dict[str, Any]]] = [(f"u{i}", {}) for i in range(4)]
    submitted = await traced.client.upload(
        "noop", items, options={"chunk_size": 2}, items_per_message=1
    )
    batch_id = submitted.batch.batch_id
    await _finished(traced.client, batch_id)
    chunks, item_spans = await _spans_of(exporter, batch_id, chunks=2, items=4)
    _assert_one_trace(_server_span(exporter, "UploadBatch", batch_id), chunks, item_spans)


async def test_failed_attempts_are_error_spans(
    traced: Service, exporter: InMemorySpanExporter, peer: tuple[str, list[str]]
) -> None:
    base, _ = peer
    items = [("bad", {"url": f"{base}/missing"})]  # 404: FAILED at once
    submitted = await traced.client.submit("http.request", items)
    batch_id = submitted.batch.batch_id
    await _finished(traced.client, batch_id)
    _, (item,) = await _spans_of(exporter, batch_id, chunks=1, items=1)
    assert _attr(item, "batchd.item.state") == "FAILED"
    assert _attr(item, "batchd.item.error_code") == 5  # NOT_FOUND
    assert item.status.status_code is StatusCode.ERROR


async def test_a_block_is_one_span_with_its_item_count(
    traced: Service, exporter: InMemorySpanExporter
) -> None:
    items: list[tuple[str, dict[str, object]]] = [(f"i{i}", {}) for i in range(10)]
    options = {"chunk_size": 10, "block_size": 5}
    batch_id = (await traced.client.submit("noop", items, options=options)).batch.batch_id
    await _finished(traced.client, batch_id)
    _, blocks = await _spans_of(exporter, batch_id, chunks=1, items=2)
    assert [b.name for b in blocks] == ["block noop", "block noop"]
    for block in blocks:
        assert _attr(block, "batchd.block.items") == 5
        assert _attr(block, "batchd.block.succeeded") == 5
        assert _attr(block, "batchd.block.failed") == 0


async def test_an_http_request_is_a_child_of_its_item(
    traced: Service, exporter: InMemorySpanExporter, peer: tuple[str, list[str]]
) -> None:
    base, received = peer
    items = [("h", {"url": f"{base}/ok?key=secret"})]
    submitted = await traced.client.submit("http.request", items)
    batch_id = submitted.batch.batch_id
    await _finished(traced.client, batch_id)
    _, (item,) = await _spans_of(exporter, batch_id, chunks=1, items=1)

    async def client_span() -> ReadableSpan | None:
        found = [
            s
            for s in exporter.get_finished_spans()
            if s.kind is SpanKind.CLIENT
            and s.parent is not None
            and s.parent.span_id == _span_id(item)
        ]
        return found[0] if found else None

    request = await poll(client_span)
    assert _trace_id(request) == _trace_id(item)
    # The peer was told of the trace, and the span keeps no query string.
    assert f"{_trace_id(item):032x}-{_span_id(request):016x}" in received[-1]
    assert all("secret" not in str(value) for value in (request.attributes or {}).values())


async def test_a_caller_s_trace_is_continued_and_its_sampling_decision_kept(
    traced: Service, exporter: InMemorySpanExporter, redis: Redis
) -> None:
    """A call carrying a traceparent: the batch's trace is the caller's. Unsampled (flags
    00), nothing of the batch is recorded."""
    caller_trace = "4bf92f3577b34da6a3ce929d0e0e4736"
    async with grpc.aio.insecure_channel(f"127.0.0.1:{traced.server.port}") as channel:
        stub = batch_service_pb2_grpc.BatchServiceStub(channel)
        ids = []
        for flags in ("01", "00"):
            request = batch_service_pb2.SubmitBatchRequest(
                handler="noop", items=[batch_pb2.Item(custom_id=f"c{n}") for n in range(3)]
            )
            metadata = (("traceparent", f"00-{caller_trace}-00f067aa0ba902b7-{flags}"),)
            response = await stub.SubmitBatch(request, metadata=metadata)
            ids.append(response.batch.batch_id)
    sampled, unsampled = ids
    for batch_id in ids:
        await _finished(traced.client, batch_id)
    chunks, items = await _spans_of(exporter, sampled, chunks=1, items=3)
    assert {_trace_id(s) for s in [*chunks, *items]} == {int(caller_trace, 16)}
    stored = await redis.hget(traced.keys.meta(unsampled), "trace")  # type: ignore[misc]
    assert stored.decode().endswith("-00")
    assert not [
        s for s in exporter.get_finished_spans() if _attr(s, "batchd.batch_id") == unsampled
    ]


async def test_a_refused_call_keeps_its_status_and_its_span_says_so(
    traced: Service, exporter: InMemorySpanExporter
) -> None:
    with pytest.raises(BatchdError) as refused:
        await traced.client.submit("noop", [("a", {}), ("a", {})])  # a duplicate custom_id
    assert refused.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert refused.value.field_violations  # the rich details came through

    async def span() -> ReadableSpan | None:
        calls = [
            s
            for s in exporter.get_finished_spans()
            if s.name == "/batchd.v1.BatchService/SubmitBatch"
            and _attr(s, "rpc.grpc.status_code") == grpc.StatusCode.INVALID_ARGUMENT.value[0]
        ]
        return calls[-1] if calls else None

    # The caller's fault: the code on the span, which the server does not mark ERROR.
    assert (await poll(span)).status.status_code is StatusCode.UNSET


async def test_tracing_off_stores_no_trace_context_and_makes_no_spans(
    redis_url: str, exporter: InMemorySpanExporter, redis: Redis
) -> None:
    async with _service(redis_url, "untraced:", None) as untraced:
        before = len(exporter.get_finished_spans())
        submitted = await untraced.client.submit("noop", [("a", {}), ("b", {})])
        batch_id = submitted.batch.batch_id
        await _finished(untraced.client, batch_id)
        assert not await redis.hexists(untraced.keys.meta(batch_id), "trace")  # type: ignore[misc]
        assert len(exporter.get_finished_spans()) == before
