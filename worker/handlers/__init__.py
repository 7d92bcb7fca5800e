"""The handlers every worker serves: `noop`, `sleep` and `http.request`."""

from __future__ import annotations

from batchd.worker.handler import Handler
from batchd.worker.handlers.basic import noop_handler, sleep_handler
from batchd.worker.handlers.http import http_request_handler

__all__ = ["builtin_handlers", "http_request_handler", "noop_handler", "sleep_handler"]


def builtin_handlers() -> list[Handler]:
    """Fresh built-in handlers: each worker gets its own (http.request keeps a pool)."""
    return [noop_handler(), sleep_handler(), http_request_handler()]
