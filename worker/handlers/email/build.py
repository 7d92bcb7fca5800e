"""Where `email.send` messages are built: a small pool of processes of its own.

Rendering a submitter's template is CPU work that the limits of render.py end
within a second — but in a thread of the worker's process, even that second would be
taken from the event loop: a filter working on a large string holds the GIL for
milliseconds at a time, and every other item, heartbeat and lease renewal of the worker
waits behind it (figures in docs/handlers/email.md, "Templates"). In processes of their
own, renders only cost the worker a pipe round trip per message.

Each process keeps its compiled templates (an LRU per part). A render the limits did
not end within twice the time limit (one uninterruptible filter call, say) gets its
process killed and the pool replaced; the item fails like any other render past its
time limit. A process that died fails the items it held with a retryable error.

A template that only substitutes variables (`render.is_bounded`) costs less to
render than the round trip: a process that compiled one hands its code back with the
message, and the worker's next items with the same templates are built in the worker,
by the same code and limits, without the trip.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from concurrent.futures.process import BrokenProcessPool
from typing import Any

from batchd.worker.handlers.email.message import Outgoing, Policy, build_message
from batchd.worker.handlers.email.render import RenderLimitExceeded, RenderLimits, Templates
from batchd.worker.process_pool import HandlerPool, serve_owner

__all__ = ["BuilderDied", "MessageBuilders"]

_PARTS = ("subject", "text", "html")

# The pool process's own state, set by its initializer.
_process_state: dict[str, Any] = {}


class BuilderDied(Exception):
    """The process building a message died: nothing was sent, a retry may succeed."""


def _init_process(limits: RenderLimits, policy: Policy, owner_pid: int | None = None) -> None:
    serve_owner(owner_pid)
    _process_state["templates"] = Templates(limits)
    _process_state["policy"] = policy


def _build(params: Mapping[str, Any], message_id: str) -> tuple[Outgoing, dict[str, bytes]]:
    """The message, and the code of those of its templates that are bounded."""
    templates: Templates = _process_state["templates"]
    outgoing = build_message(params, message_id, templates, _process_state["policy"])
    bounded = {}
    for part in _PARTS:
        if part in params:
            code = templates.bounded_code(part, params[part])
            if code is not None:
                bounded[part] = code
    return outgoing, bounded


class MessageBuilders:
    """`processes` processes building messages within `limits`, by `policy`; started by
    the first message."""

    def __init__(self, processes: int, limits: RenderLimits, policy: Policy) -> None:
        self.limits = limits
        self.policy = policy
        # Processes forked from a server that imported this module start in milliseconds,
        # not after importing batchd and jinja2 again.
        self.pool = HandlerPool(processes, _init_process, (limits, policy), preload=(__name__,))
        self._bounded = Templates(limits, compiles=False)  # adopted from the processes

    async def build(self, params: Mapping[str, Any], message_id: str) -> Outgoing:
        """The message; raises build_message's errors, `RenderLimitExceeded` and
        `BuilderDied`."""
        if all(self._bounded.adopted(part, params[part]) for part in _PARTS if part in params):
            return build_message(params, message_id, self._bounded, self.policy)
        pool = await self.pool.started()
        future = asyncio.get_running_loop().run_in_executor(pool, _build, params, message_id)
        try:
            outgoing, bounded = await asyncio.wait_for(future, timeout=2 * self.limits.seconds + 1)
        except TimeoutError:
            self.pool.replace(pool, kill=True)
            raise RenderLimitExceeded(
                f"took longer than {self.limits.seconds:g} s (BATCHD_EMAIL_RENDER_TIMEOUT)"
            ) from None
        except BrokenProcessPool as exc:
            self.pool.replace(pool)
            raise BuilderDied("a process building messages died; the pool was restarted") from exc
        for part, code in bounded.items():
            if not self._bounded.adopted(part, params[part]):
                self._bounded.adopt(part, params[part], code)
        return outgoing

    async def close(self) -> None:
        # Renders end within their time limit: waiting for them is bounded.
        await self.pool.close()
