"""The handlers every worker serves: `noop`, `sleep`, `http.request`, and the workloads
`email.send`, `record.migrate` and `image.resize` (docs/handlers/)."""

from __future__ import annotations

from batchd.worker.handler import Handler
from batchd.worker.handlers.basic import noop_handler, sleep_handler
from batchd.worker.handlers.email import email_send_handler
from batchd.worker.handlers.http import http_request_handler
from batchd.worker.handlers.image import image_resize_handler
from batchd.worker.handlers.migrate import record_migrate_handler

__all__ = [
    "builtin_handlers",
    "email_send_handler",
    "http_request_handler",
    "image_resize_handler",
    "noop_handler",
    "record_migrate_handler",
    "sleep_handler",
]


def builtin_handlers() -> list[Handler]:
    """Fresh built-in handlers: each worker gets its own (several keep pools)."""
    return [
        noop_handler(),
        sleep_handler(),
        http_request_handler(),
        email_send_handler(),
        record_migrate_handler(),
        image_resize_handler(),
    ]
