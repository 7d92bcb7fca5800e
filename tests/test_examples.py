"""The example handler package (examples/greeter) works as docs/handlers.md says: its entry
point names handlers a worker can load. (Its own tests run, with the command the page
gives, in tests/e2e/test_handler_guide_commands.py.)"""

from __future__ import annotations

import re
import sys
import tomllib
from collections.abc import Iterator
from importlib.metadata import EntryPoint
from pathlib import Path

import pytest

from batchd.worker import Handler
from batchd.worker.registry import ENTRY_POINT_GROUP, load_handlers

GREETER = Path(__file__).resolve().parents[1] / "examples" / "greeter"


@pytest.fixture
def greeter_importable(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """examples/greeter on sys.path, as installing it would put it; forgotten after."""
    monkeypatch.syspath_prepend(str(GREETER))
    yield
    for name in [m for m in sys.modules if m == "greeter" or m.startswith("greeter.")]:
        del sys.modules[name]


@pytest.mark.usefixtures("greeter_importable")
def test_the_entry_point_loads_greet_send() -> None:
    with (GREETER / "pyproject.toml").open("rb") as f:
        project = tomllib.load(f)["project"]
    declared = project["entry-points"][ENTRY_POINT_GROUP]
    assert declared == {"greeter": "greeter.handlers:greet_send"}
    # What a worker does with an installed distribution's entry point ...
    ((name, value),) = declared.items()
    loaded = EntryPoint(name, value, ENTRY_POINT_GROUP).load()
    assert isinstance(loaded, Handler)
    assert loaded.name == "greet.send"
    # ... and with the same target given as --handlers: next to the built-ins.
    served = load_handlers(value)
    assert {"noop", "greet.send"} <= set(served)
    assert served["greet.send"].default_options.max_per_second == 20.0


def test_the_guide_quotes_the_example_as_it_is() -> None:
    """docs/handlers.md marks the code it copies from the example; it must not drift."""
    guide = (GREETER.parents[1] / "docs" / "handlers.md").read_text()
    quotes = re.findall(r"<!-- verbatim: examples/greeter/(\S+) -->\n```\w+\n(.*?)```", guide, re.S)
    assert len(quotes) >= 5
    for path, code in quotes:
        assert code in (GREETER / path).read_text(), f"docs/handlers.md quotes {path}: {code}"
