"""A worker without a workload's extra serves the other handlers and says which extra to
install; a module missing from batchd itself stays an error."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Mapping
from typing import Any

import pytest

from batchd.worker import registry
from batchd.worker.handler import Handler, ItemContext
from batchd.worker.registry import HandlerLoadError, MissingExtra, load_handlers

# batchd-worker's start, as its console script runs it, with Pillow not importable (a
# None in sys.modules makes `import PIL` raise ModuleNotFoundError, as if it were not
# installed) and the worker's run replaced: what it would serve is printed instead.
START_WITHOUT_PILLOW = textwrap.dedent(
    """
    import json
    import sys

    sys.modules["PIL"] = None
    from batchd.worker import main

    async def run(settings, handlers, tracing=None):
        print(json.dumps({"served": sorted(handlers), "traced": tracing is not None}), flush=True)

    main.run = run
    main.main(["--log-format", "json"])
    """
)


# The installed batchd-migrate-plan, run with SQLAlchemy not importable.
PLAN_WITHOUT_SQLALCHEMY = textwrap.dedent(
    """
    import runpy
    import sys

    sys.modules["sqlalchemy"] = None
    sys.argv = ["batchd-migrate-plan", "src", "people", "--destination", "dst"]
    runpy.run_path({script!r}, run_name="__main__")
    """
)


def test_a_worker_asked_to_trace_without_the_otel_extra_says_so_and_runs() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BATCHD_", "OTEL_"))}
    env["OTEL_TRACES_EXPORTER"] = "otlp"
    start = START_WITHOUT_PILLOW.replace('sys.modules["PIL"]', 'sys.modules["opentelemetry"]')
    process = subprocess.run(
        [sys.executable, "-c", start], env=env, capture_output=True, text=True, timeout=60
    )
    assert process.returncode == 0, process.stderr
    started = json.loads(process.stdout)
    assert started["traced"] is False
    assert "http.request" in started["served"]
    events = [json.loads(line) for line in process.stderr.splitlines() if line.startswith("{")]
    (said,) = [e for e in events if e["event"] == "tracing_unavailable"]
    assert said["install"] == "pip install 'batchd[otel]'"


def test_the_migrate_planner_without_its_extra_names_it() -> None:
    script = os.path.join(os.path.dirname(sys.executable), "batchd-migrate-plan")
    process = subprocess.run(
        [sys.executable, "-c", PLAN_WITHOUT_SQLALCHEMY.format(script=script)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert process.returncode == 2
    assert process.stderr == (
        "batchd-migrate-plan: needs the migrate extra (sqlalchemy is not installed): "
        "pip install 'batchd[migrate]'\n"
    )


def test_a_worker_without_pillow_serves_the_rest_and_names_the_extra() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BATCHD_")}
    process = subprocess.run(
        [sys.executable, "-c", START_WITHOUT_PILLOW],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert process.returncode == 0, process.stderr
    served = json.loads(process.stdout)["served"]
    assert "image.resize" not in served
    assert {"noop", "sleep", "http.request", "email.send", "record.migrate"} <= set(served)
    warnings = [
        event
        for event in map(json.loads, process.stderr.splitlines())
        if event["event"] == "handlers_not_served"
    ]
    assert len(warnings) == 1  # said once, at start
    (warning,) = warnings
    assert warning["level"] == "warning"
    assert warning["extra"] == "image"
    assert warning["missing_module"] == "PIL"
    assert warning["install"] == "pip install 'batchd[image]'"


class _Metadata:
    def get_all(self, name: str) -> list[str]:
        assert name == "Provides-Extra"
        return ["fancy"]


class _Distribution:
    name = "somedist"
    metadata = _Metadata()


class _EntryPoint:
    """An entry point of somedist, which has the extra `fancy`, whose import fails."""

    def __init__(self, name: str, missing: str) -> None:
        self.name, self.value, self.dist = name, f"somedist.handlers:{name}", _Distribution()
        self.missing = missing

    def load(self) -> object:
        raise ModuleNotFoundError(f"No module named {self.missing!r}", name=self.missing)


def _only(monkeypatch: pytest.MonkeyPatch, *found: _EntryPoint) -> None:
    monkeypatch.setattr(registry, "entry_points", lambda *, group: list(found))


def test_an_entry_point_named_after_a_missing_extra_is_skipped(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _only(monkeypatch, _EntryPoint("fancy", missing="fancylib.core"))
    told: list[MissingExtra] = []
    extra = [Handler(name="mine", run=_run)]
    assert list(load_handlers("", extra, on_missing=told.append)) == ["mine"]
    assert told == [MissingExtra("fancy", "somedist", "fancy", "fancylib.core")]
    assert told[0].install == "pip install 'somedist[fancy]'"


@pytest.mark.parametrize(
    ("name", "missing"),
    [
        ("fancy", "somedist.handlers.typo"),  # the distribution's own module: a bug
        ("plain", "fancylib"),  # not named after an extra: nothing says what to install
    ],
)
def test_other_missing_modules_stop_the_worker(
    monkeypatch: pytest.MonkeyPatch, name: str, missing: str
) -> None:
    _only(monkeypatch, _EntryPoint(name, missing=missing))
    with pytest.raises(HandlerLoadError, match=f"entry point {name}.*No module named"):
        load_handlers("", on_missing=_unexpected)


async def _run(params: dict[str, Any], ctx: ItemContext) -> Mapping[str, Any]:
    return {}


def _unexpected(missing: MissingExtra) -> None:
    pytest.fail(f"not a missing extra: {missing}")
