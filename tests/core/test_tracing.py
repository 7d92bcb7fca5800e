"""Which OTEL_* variables turn tracing on (batchd.core.tracing), and a process asked to
trace without the otel extra: it says so once and runs untraced."""

from __future__ import annotations

import sys

import pytest
import structlog
from opentelemetry.sdk.resources import SERVICE_NAME
from opentelemetry.sdk.trace.export import ConsoleSpanExporter

from batchd.core.tracing import exporters_asked, tracing_from_env


@pytest.mark.parametrize(
    ("environ", "asked"),
    [
        ({}, []),  # unset: off, unlike the SDK's own default of otlp
        ({"OTEL_TRACES_EXPORTER": ""}, []),
        ({"OTEL_TRACES_EXPORTER": "none"}, []),
        ({"OTEL_TRACES_EXPORTER": "otlp,none"}, []),
        ({"OTEL_TRACES_EXPORTER": "otlp"}, ["otlp"]),
        ({"OTEL_TRACES_EXPORTER": " otlp , console "}, ["otlp", "console"]),
        ({"OTEL_TRACES_EXPORTER": "otlp", "OTEL_SDK_DISABLED": "true"}, []),
        ({"OTEL_TRACES_EXPORTER": "otlp", "OTEL_SDK_DISABLED": "TRUE"}, []),
        ({"OTEL_TRACES_EXPORTER": "otlp", "OTEL_SDK_DISABLED": "false"}, ["otlp"]),
    ],
)
def test_the_exporters_variable_turns_tracing_on(environ: dict[str, str], asked: list[str]) -> None:
    assert exporters_asked(environ) == asked


def test_off_builds_nothing() -> None:
    assert tracing_from_env("batchd-worker", {}) is None


def test_on_builds_a_provider_named_after_the_command(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OTEL_SERVICE_NAME", raising=False)
    monkeypatch.delenv("OTEL_RESOURCE_ATTRIBUTES", raising=False)
    tracing = tracing_from_env("batchd-worker", {"OTEL_TRACES_EXPORTER": "console"})
    assert tracing is not None
    try:
        assert tracing.provider.resource.attributes[SERVICE_NAME] == "batchd-worker"
    finally:
        tracing.shutdown()


def test_otel_service_name_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_SERVICE_NAME", "batch-east")
    tracing = tracing_from_env("batchd-server", {"OTEL_TRACES_EXPORTER": "console"})
    assert tracing is not None
    try:
        assert tracing.provider.resource.attributes[SERVICE_NAME] == "batch-east"
    finally:
        tracing.shutdown()


def test_an_unknown_exporter_is_said_and_skipped() -> None:
    with structlog.testing.capture_logs() as logs:
        tracing = tracing_from_env("batchd-server", {"OTEL_TRACES_EXPORTER": "zipkin,console"})
    assert tracing is not None
    try:
        processors = tracing.provider._active_span_processor._span_processors
        assert [type(p.span_exporter) for p in processors] == [ConsoleSpanExporter]  # type: ignore[attr-defined]
    finally:
        tracing.shutdown()
    (warning,) = [log for log in logs if log["event"] == "trace_exporter_unavailable"]
    assert warning["exporter"] == "zipkin"
    # Nothing left to send to: untraced.
    assert tracing_from_env("batchd-server", {"OTEL_TRACES_EXPORTER": "zipkin"}) is None


def test_without_the_extra_it_says_so_once_and_runs_untraced(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # What an install without batchd[otel] meets: opentelemetry cannot be imported.
    monkeypatch.delitem(sys.modules, "batchd.core.otel", raising=False)
    monkeypatch.setitem(sys.modules, "opentelemetry", None)
    with structlog.testing.capture_logs() as logs:
        assert tracing_from_env("batchd-worker", {"OTEL_TRACES_EXPORTER": "otlp"}) is None
    (warning,) = logs
    assert warning["event"] == "tracing_unavailable"
    assert warning["log_level"] == "warning"
    assert warning["install"] == "pip install 'batchd[otel]'"
    assert "opentelemetry is not installed" in warning["reason"]
