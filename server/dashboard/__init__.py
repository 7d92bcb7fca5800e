"""The web dashboard: batches with live progress, a batch's details and its actions, the
handler catalog; served by the server's HTTP listener at /dashboard/.

`dashboard_app` makes the aiohttp application over a server's store, progress hub and
authenticators; `dashboard_of` over a running `BatchdServer`. Pages are rendered on the
server (batchd.server.dashboard.render), live numbers come as server-sent events from the
hub WatchProgress reads (batchd.server.dashboard.live), actions are BatchService calls
made in-process (batchd.server.dashboard.calls), logins are sessions in Redis
(batchd.server.dashboard.sessions). See docs/operations.md and docs/security.md.
"""

from __future__ import annotations

from aiohttp import web

from batchd.server.app import BatchdServer
from batchd.server.dashboard.app import PREFIX, Dashboard, dashboard_app

__all__ = ["PREFIX", "Dashboard", "dashboard_app", "dashboard_of", "mount_dashboard"]


def dashboard_of(server: BatchdServer) -> web.Application:
    """The dashboard of a running server (its store, hub, servicer, watch slots and
    authenticators), to mount at PREFIX."""
    assert server.store is not None and server.settings is not None
    return dashboard_app(
        server.store,
        server.hub,
        server.authenticators,
        server.settings,
        servicer=server.servicer,
        watchers=server.watchers,
    )


def mount_dashboard(app: web.Application, server: BatchdServer) -> bool:
    """Adds the dashboard of `server` to `app` at PREFIX unless its settings turn it off
    (BATCHD_DASHBOARD=0); returns whether it did."""
    assert server.settings is not None
    if not server.settings.dashboard:
        return False
    app.add_subapp(PREFIX, dashboard_of(server))
    return True
