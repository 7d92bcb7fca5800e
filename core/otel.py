"""A process's OpenTelemetry tracing: its tracer provider and batchd's spans.

Imported only when tracing is on (`batchd.core.tracing` decides, from the OTEL_*
variables), as it needs the `otel` extra. One `Tracing` per server or worker, handed
down explicitly rather than read from OpenTelemetry's global provider, so that one
process (a test) can run a traced server beside an untraced one. docs/operations.md,
"Traces", says what a batch's trace holds.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from contextvars import Token
from importlib.metadata import entry_points
from typing import Any, Final

import aiohttp
import grpc
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.instrumentation.aiohttp_client import create_trace_config
from opentelemetry.instrumentation.grpc import aio_server_interceptor
from opentelemetry.instrumentation.grpc.filters import negate, service_name
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter
from opentelemetry.trace import Span, SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from yarl import URL

from batchd.core.domain import ClaimedChunk, ItemOutcome, ItemState
from batchd.core.logs import get_logger

__all__ = ["Tracing", "from_env"]

# An item's span, and the token that makes it current until the attempt ends.
_ItemScope = tuple[Span, Token[Context]]

log = get_logger(__name__)

# The W3C trace context (traceparent) is what a batch keeps of its trace: a worker's
# chunk run continues it, whatever OTEL_PROPAGATORS says for calls.
_W3C: Final = TraceContextTextMapPropagator()
_TRACEPARENT: Final = "traceparent"
# Health checks come every second or so from every load balancer: no spans for them.
_UNTRACED_SERVICE: Final = "grpc.health.v1.Health"
# OTLP's protocols, as OTEL_EXPORTER_OTLP_PROTOCOL names them -> the exporters'
# entry-point names (the otel extra installs the gRPC one).
_OTLP_EXPORTERS: Final = {"grpc": "otlp_proto_grpc", "http/protobuf": "otlp_proto_http"}


def from_env(
    default_service_name: str, exporters: Sequence[str], environ: Mapping[str, str]
) -> Tracing | None:
    """A provider sending spans, in batches, to each exporter named (those that cannot
    be had are said once and skipped; None if that leaves none). The SDK reads the rest
    of the OTEL_* variables itself: the resource, the sampler, the batch processor's and
    the exporters' settings."""
    span_exporters = [
        exporter for name in exporters if (exporter := _exporter(name, environ)) is not None
    ]
    if not span_exporters:
        return None
    resource = Resource.create()
    if str(resource.attributes.get(SERVICE_NAME, "")).startswith("unknown_service"):
        resource = resource.merge(Resource({SERVICE_NAME: default_service_name}))
    provider = TracerProvider(resource=resource)
    for exporter in span_exporters:
        provider.add_span_processor(BatchSpanProcessor(exporter))
    log.info(
        "tracing_on",
        exporters=[type(exporter).__name__ for exporter in span_exporters],
        service_name=resource.attributes.get(SERVICE_NAME),
    )
    return Tracing(provider)


def _exporter(name: str, environ: Mapping[str, str]) -> SpanExporter | None:
    if name == "otlp":
        protocol = (
            environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
            or environ.get("OTEL_EXPORTER_OTLP_PROTOCOL")
            or "grpc"
        ).strip()
        name = _OTLP_EXPORTERS.get(protocol, protocol)
    found = entry_points(group="opentelemetry_traces_exporter", name=name)
    if not found:
        log.warning("trace_exporter_unavailable", exporter=name, reason="not installed")
        return None
    try:
        exporter: SpanExporter = next(iter(found)).load()()
    except Exception as exc:  # its settings (OTEL_EXPORTER_*) are wrong: say so, go on
        log.warning("trace_exporter_unavailable", exporter=name, reason=str(exc))
        return None
    return exporter


class Tracing:
    """`provider`: where batchd's spans go (the process's provider, or a test's)."""

    def __init__(self, provider: TracerProvider) -> None:
        self.provider = provider
        self.tracer = provider.get_tracer("batchd")
        self._item_names: dict[str, str] = {}  # handler -> its item spans' name

    # -- the server ---------------------------------------------------------------
    def server_interceptor(self) -> grpc.aio.ServerInterceptor:
        """A server span per call, continuing the caller's trace context if it sent one."""
        interceptor: grpc.aio.ServerInterceptor = aio_server_interceptor(
            tracer_provider=self.provider, filter_=negate(service_name(_UNTRACED_SERVICE))
        )
        return interceptor

    @staticmethod
    def batch_call(batch_id: str) -> str:
        """Called as a call makes batch `batch_id`: names the batch on the call's span
        and returns that span's W3C traceparent ("" without a span), what the batch
        stores for the workers to continue."""
        span = trace.get_current_span()
        if not span.get_span_context().is_valid:
            return ""
        span.set_attribute("batchd.batch_id", batch_id)
        carrier: dict[str, str] = {}
        _W3C.inject(carrier)
        return carrier.get(_TRACEPARENT, "")

    # -- the worker ---------------------------------------------------------------
    @contextmanager
    def chunk_span(self, claimed: ClaimedChunk, start_ns: int, worker_id: str) -> Iterator[Span]:
        """The span of one run of a chunk, current while it runs (its items' spans are
        its children), in the trace its batch stored; a root span if it stored none.
        `start_ns`: when its claim was asked for."""
        parent = _batch_context(claimed.trace_parent)
        with self.tracer.start_as_current_span(
            f"chunk {claimed.handler}",
            context=parent,
            kind=SpanKind.CONSUMER,
            start_time=start_ns,
            attributes={
                "batchd.batch_id": claimed.batch_id,
                "batchd.chunk": claimed.chunk,
                "batchd.handler": claimed.handler,
                "batchd.chunk.items": len(claimed.items),
                "batchd.worker_id": worker_id,
            },
        ) as span:
            yield span

    def start_item(self, claimed: ClaimedChunk, item: tuple[int, str, bytes]) -> _ItemScope:
        """Starts the span of one attempt of an item and makes it current (the handler's
        instrumented calls are its children) until `end_item`. Two plain calls rather
        than a context manager: this runs once per item."""
        index, custom_id, _ = item
        span = self.tracer.start_span(
            self._item_names.get(claimed.handler) or self._item_name(claimed.handler),
            attributes={
                "batchd.item.index": index,
                "batchd.item.custom_id": custom_id,
                "batchd.item.attempt": claimed.attempts.get(index, 0) + 1,
            },
            record_exception=False,
            set_status_on_exception=False,
        )
        return span, otel_context.attach(trace.set_span_in_context(span))

    @staticmethod
    def end_item(scope: _ItemScope, outcome: ItemOutcome | None) -> None:
        """Ends the attempt's span with what it led to (None: cut short, the worker
        stopping): the state, and for an attempt that did not succeed its error code (not
        its message, which may quote the item); status ERROR when the item FAILED."""
        span, token = scope
        otel_context.detach(token)
        if outcome is not None:
            span.set_attribute("batchd.item.state", outcome.state.name)
            if outcome.state is not ItemState.SUCCEEDED:
                span.set_attribute("batchd.item.error_code", outcome.error_code)
            if outcome.state is ItemState.FAILED:
                span.set_status(Status(StatusCode.ERROR))
        span.end()

    def start_block(self, claimed: ClaimedChunk, items: int) -> _ItemScope:
        """Starts the span of one `run_many` call (a block of `items` items) and makes it
        current until `end_block`: one span per block, not per item."""
        span = self.tracer.start_span(
            f"block {claimed.handler}",
            attributes={"batchd.block.items": items},
            record_exception=False,
            set_status_on_exception=False,
        )
        return span, otel_context.attach(trace.set_span_in_context(span))

    @staticmethod
    def end_block(scope: _ItemScope, outcomes: Sequence[ItemOutcome] | None) -> None:
        """Ends the block's span with how many of its items succeeded, are to be retried
        and failed (None: cut short); status ERROR when every item FAILED."""
        span, token = scope
        otel_context.detach(token)
        if outcomes is not None:
            states = Counter(outcome.state for outcome in outcomes)
            span.set_attribute("batchd.block.succeeded", states[ItemState.SUCCEEDED])
            span.set_attribute("batchd.block.retried", states[ItemState.PENDING])
            span.set_attribute("batchd.block.failed", states[ItemState.FAILED])
            if outcomes and states[ItemState.FAILED] == len(outcomes):
                span.set_status(Status(StatusCode.ERROR))
        span.end()

    def _item_name(self, handler: str) -> str:
        name = self._item_names[handler] = f"item {handler}"
        return name

    def client_trace_configs(self) -> list[aiohttp.TraceConfig]:
        """For a handler's aiohttp session: a client span per request, child of the
        item's, its traceparent sent along. URLs lose their query and fragment (item
        params may carry keys in them), and any user and password."""
        return [create_trace_config(url_filter=_without_query, tracer_provider=self.provider)]

    def install_global(self) -> None:
        """Makes the provider OpenTelemetry's global one, for code that asks the API for
        a tracer (a third-party handler's); once per process, by its command."""
        trace.set_tracer_provider(self.provider)

    def shutdown(self) -> None:
        """Exports the spans still buffered; at the end of the process."""
        self.provider.shutdown()


def _batch_context(traceparent: str) -> Context | None:
    if not traceparent:
        return None
    return _W3C.extract({_TRACEPARENT: traceparent})


def _without_query(url: Any) -> str:
    return str(URL(str(url)).with_user(None).with_query(None).with_fragment(None))
