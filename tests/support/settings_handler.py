"""`test.greet`, a handler with settings of its own, loaded by worker subprocesses by
import path (`--handlers settings_handler:handler`, with tests/support on PYTHONPATH):
what a third-party handler does to take `--greeting` / BATCHD_GREETING."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from batchd.worker import Handler, ItemContext, WorkerInfo, setting

NAME = "test.greet"


@dataclass(frozen=True)
class GreetSettings:
    greeting: str = setting("hello", "what test.greet says before the name")
    greet_times: int = setting(1, "how many times test.greet says it")


class _Greeter:
    text = ""

    async def startup(self, worker: WorkerInfo) -> None:
        settings = worker.settings.section(GreetSettings)
        self.text = " ".join([settings.greeting] * settings.greet_times)

    async def run(self, params: dict[str, Any], ctx: ItemContext) -> Mapping[str, Any]:
        return {"text": f"{self.text} {params['name']}"}


def handler() -> Handler:
    greeter = _Greeter()
    return Handler(
        name=NAME,
        description="Returns {text: '<greeting> <name>'}.",
        params_schema={"type": "object", "properties": {"name": {"type": "string"}}},
        run=greeter.run,
        startup=greeter.startup,
        settings=GreetSettings,
    )
