"""The server's HTTP listener (Settings.metrics_host, metrics_port): an aiohttp
`web.Application` serving /metrics for Prometheus, to which other parts add routes
(start_server mounts the dashboard, batchd.server.dashboard, under /dashboard/).

`build_web_app` makes the application — the one place it is made; `start_web` serves it
and returns the running `Listener` (`.app`, `.port`), which `BatchdServer` keeps as
`web` and closes when it stops. /metrics answers without authentication (the dashboard
follows --auth): the listener binds loopback unless metrics_host says otherwise.
"""

from __future__ import annotations

from typing import Final

from aiohttp import web

from batchd.core.metrics import Listener, metrics_response, start_listener
from batchd.server.metrics import ServerMetrics

__all__ = ["METRICS_KEY", "build_web_app", "start_web"]

# Where the application keeps the server's metrics (`app[METRICS_KEY]`).
METRICS_KEY: Final = web.AppKey("batchd_metrics", ServerMetrics)


def build_web_app(metrics: ServerMetrics) -> web.Application:
    """The server's web application: GET /metrics (Prometheus text format)."""
    app = web.Application()
    app[METRICS_KEY] = metrics
    app.router.add_get("/metrics", _metrics)
    return app


async def start_web(app: web.Application, host: str, port: int) -> Listener:
    """Serves `app` on host:port (0: any free port); SettingError naming --metrics-port
    if the port cannot be bound."""
    return await start_listener(app, host, port, "--metrics-port")


async def _metrics(request: web.Request) -> web.Response:
    metrics = request.app[METRICS_KEY]
    await metrics.refresh()
    return metrics_response(metrics.registry)
