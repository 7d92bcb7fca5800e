"""The cost of traces on the `noop` path: the same upload-and-run of N `noop` items
(`bench.upload_noop.run`) against a fresh service with tracing off (`OTEL_TRACES_EXPORTER=
none`) and on (`otlp`, every span sent to an OTLP/gRPC sink in this process that counts
them and keeps nothing), in alternating pairs, in one run. Reports each run's items/s,
the spans the sink received, and the ratios on/off of the medians (end to end and at
steady state).

Off against the code before traces is a comparison of two checkouts:
docs/performance.md, "The cost of traces".

    .venv/bin/python -m bench.tracing_cost --items 200000 --pairs 3   # a full run
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

from batchd.core.embedded_redis import free_port
from bench.service import report, running_service
from bench.upload_noop import run

Request = trace_service_pb2.ExportTraceServiceRequest
Response = trace_service_pb2.ExportTraceServiceResponse


class _Sink(trace_service_pb2_grpc.TraceServiceServicer):
    """An OTLP trace receiver that counts the spans it is sent. A threaded server, so that
    it still answers the service's last exports while this process waits for it to stop."""

    def __init__(self) -> None:
        self.spans = 0
        self._lock = threading.Lock()

    def Export(self, request: Request, context: Any) -> Response:
        count = sum(len(scope.spans) for r in request.resource_spans for scope in r.scope_spans)
        with self._lock:
            self.spans += count
        return Response()


async def _measure(items: int, chunk_size: int, traced: bool) -> tuple[dict[str, float], int]:
    sink = _Sink()
    server = grpc.server(ThreadPoolExecutor(max_workers=2))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(sink, server)  # type: ignore[no-untyped-call]
    port = server.add_insecure_port(f"127.0.0.1:{free_port() if traced else 0}")
    server.start()
    env = (
        {
            "OTEL_TRACES_EXPORTER": "otlp",
            "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{port}",
            "OTEL_EXPORTER_OTLP_INSECURE": "true",
            "OTEL_SDK_DISABLED": "false",
        }
        if traced
        else {"OTEL_TRACES_EXPORTER": "none"}
    )
    try:
        with running_service(env=env) as service:
            figures = await run(items, chunk_size, service.port, service.redis_url)
        # The service's processes flushed their spans as they stopped.
    finally:
        server.stop(None)
    return figures, sink.spans


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--items", type=int, default=100_000)
    parser.add_argument("--chunk-size", type=int, default=1000)
    parser.add_argument("--pairs", type=int, default=2, help="on/off pairs, alternating")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)
    runs: dict[bool, list[dict[str, float]]] = {True: [], False: []}
    spans: list[int] = []
    for pair in range(args.pairs):
        # Alternate which goes first, so that a drift of the machine's speed splits evenly.
        for traced in (True, False) if pair % 2 == 0 else (False, True):
            figures, received = asyncio.run(_measure(args.items, args.chunk_size, traced))
            runs[traced].append(figures)
            if traced:
                spans.append(received)
    out: dict[str, float] = {"items": args.items, "pairs": args.pairs}
    for name, key in (("", "items_per_second"), ("steady_", "steady_items_per_second")):
        medians = {}
        for traced, label in ((True, "on"), (False, "off")):
            rates = [figures[key] for figures in runs[traced] if key in figures]
            for n, rate in enumerate(rates):
                out[f"{label}_{n}_{name}items_per_second"] = rate
            if rates:
                medians[label] = out[f"{label}_median_{name}items_per_second"] = statistics.median(
                    rates
                )
        if len(medians) == 2:
            out[f"{name}ratio_on_to_off"] = medians["on"] / medians["off"]
    out["spans_received_min"] = min(spans)
    report(out, args.json)


if __name__ == "__main__":
    main()
