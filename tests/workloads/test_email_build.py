"""email.send's message-building processes: a render that its limits could not stop
(one long computation, here a power the integer limit was raised to allow) gets its
process killed, and the next message gets a fresh pool; templates that only substitute
variables are built in the worker once a process has compiled them."""

from __future__ import annotations

import pytest

from batchd.worker.handlers.email.build import MessageBuilders
from batchd.worker.handlers.email.message import Policy
from batchd.worker.handlers.email.render import RenderLimitExceeded, RenderLimits


def params(text: str) -> dict[str, object]:
    return {"to": "a@example.test", "from": "b@example.test", "subject": "s", "text": text}


@pytest.mark.slow
async def test_a_render_past_twice_its_time_is_killed() -> None:
    limits = RenderLimits(seconds=0.05, max_int=1 << (1 << 26))
    builders = MessageBuilders(1, limits, Policy.of("example.test", ""))
    try:
        assert b"ok" in (await builders.build(params("ok"), "<1@batchd>")).data
        pool = builders.pool.executor
        assert pool is not None
        processes = list(pool._processes.values())  # the private attribute the kill uses
        assert len(processes) == 1
        with pytest.raises(RenderLimitExceeded, match=r"took longer than 0\.05 s"):
            await builders.build(params("{{ (9 ** 5000000) % 7 }}"), "<2@batchd>")
        processes[0].join(10)
        assert processes[0].exitcode is not None  # killed, not left computing
        assert b"again" in (await builders.build(params("again"), "<3@batchd>")).data
        assert builders.pool.executor is not pool
    finally:
        await builders.close()


async def test_bounded_templates_are_built_in_the_worker_after_one_trip() -> None:
    builders = MessageBuilders(1, RenderLimits(), Policy.of("example.test", ""))
    try:
        bounded = {**params("Hi {{ name }}"), "vars": {"name": "Ann"}}
        assert b"Hi Ann" in (await builders.build(bounded, "<1@batchd>")).data
        pool = builders.pool.executor
        assert pool is not None
        await builders.close()  # from now on, a trip to a process would start a new pool
        bounded["vars"] = {"name": "Bob"}
        assert b"Hi Bob" in (await builders.build(bounded, "<2@batchd>")).data
        assert builders.pool.executor is None
        with pytest.raises(RenderLimitExceeded, match="output longer than"):
            await builders.build({**bounded, "vars": {"name": "x" * 2_000_000}}, "<3@batchd>")
        looping = params("{% for c in name %}{{ c }}{% endfor %}")
        looping["vars"] = {"name": "ab"}
        assert b"ab" in (await builders.build(looping, "<4@batchd>")).data
        assert b"ab" in (await builders.build(looping, "<5@batchd>")).data
        assert builders.pool.executor is not None  # a loop always renders in a process
    finally:
        await builders.close()
