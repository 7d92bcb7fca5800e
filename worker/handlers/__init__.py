"""The handlers batchd ships: `noop` and `sleep` (basic.py), `http.request` (http.py),
and the workloads `email.send`, `record.migrate` and `image.resize` (the packages email/,
migrate/, image/; docs/handlers/).

Each is registered as a third party's would be, by an entry point of group
`batchd.handlers` in pyproject.toml, and loaded by batchd.worker.registry. The workloads'
dependencies are extras (`batchd[email]`, `batchd[migrate]`, `batchd[image]`,
`batchd[all]`): a worker without one does not serve that handler, and says which extra to
install.
"""

from __future__ import annotations

from batchd.worker.handler import Handler
from batchd.worker.handlers.basic import noop_handler, sleep_handler
from batchd.worker.handlers.http import http_request_handler
from batchd.worker.registry import DISTRIBUTION, entry_point_handlers

__all__ = ["builtin_handlers", "http_request_handler", "noop_handler", "sleep_handler"]


def builtin_handlers() -> list[Handler]:
    """Fresh handlers of batchd's own entry points (each worker gets its own: several keep
    pools), but those whose extra is not installed."""
    return entry_point_handlers(distribution=DISTRIBUTION)
