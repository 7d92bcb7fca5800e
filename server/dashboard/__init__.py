"""The web dashboard: batches with live progress, a batch's details and its actions, the
handler catalog; served by the server's HTTP listener at /dashboard/.

`dashboard_app` makes the aiohttp application over a server's store, progress hub and
authenticators; `mount_dashboard` adds it to the listener's application as the settings
say; `dashboard_of` makes it for a running `BatchdServer`. Pages are rendered on the
server (batchd.server.dashboard.render), live numbers come as server-sent events from the
hub WatchProgress reads (batchd.server.dashboard.live), actions are BatchService calls
made in-process (batchd.server.dashboard.calls), logins are sessions in Redis
(batchd.server.dashboard.sessions). See docs/operations.md and docs/security.md.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from aiohttp import web

from batchd.core.config import Settings
from batchd.core.logs import get_logger
from batchd.core.store import BatchStore
from batchd.core.watchers import WatcherCounts
from batchd.server.auth import is_loopback
from batchd.server.dashboard.app import PREFIX, Dashboard, dashboard_app
from batchd.server.principal import Authenticator
from batchd.server.progress import ProgressHub
from batchd.server.servicer import BatchServicer

if TYPE_CHECKING:
    from batchd.server.app import BatchdServer

__all__ = [
    "PREFIX",
    "Dashboard",
    "dashboard_app",
    "dashboard_of",
    "exposure_problem",
    "mount_dashboard",
]

log = get_logger(__name__)


def exposure_problem(
    settings: Settings, authenticators: Sequence[Authenticator], host: str
) -> str | None:
    """Why the dashboard must not be served on `host` (authentication off, a
    non-loopback address, no --insecure: anyone reaching it could cancel every batch),
    or None."""
    if authenticators or is_loopback(host) or settings.insecure:
        return None
    return (
        f"the dashboard is not served on {host or 'every address'} with authentication "
        "off: turn it on (--auth), listen on loopback, or pass --insecure"
    )


def mount_dashboard(
    app: web.Application,
    store: BatchStore,
    hub: ProgressHub,
    authenticators: Sequence[Authenticator],
    settings: Settings,
    *,
    host: str,
    servicer: BatchServicer | None = None,
    watchers: WatcherCounts | None = None,
) -> bool:
    """Adds the dashboard to the HTTP listener's `app` (listening on `host`) at PREFIX,
    unless the settings turn it off (BATCHD_DASHBOARD=0) or it would be served to the
    network unauthenticated (then a warning says so); returns whether it did."""
    if not settings.dashboard:
        return False
    problem = exposure_problem(settings, authenticators, host)
    if problem:
        log.warning("dashboard_not_served", reason=problem)
        return False
    app.add_subapp(
        PREFIX,
        dashboard_app(store, hub, authenticators, settings, servicer=servicer, watchers=watchers),
    )
    return True


def dashboard_of(server: BatchdServer) -> web.Application:
    """The dashboard of a running server (its store, hub, servicer, watch slots and
    authenticators), to mount at PREFIX."""
    assert server.store is not None
    assert server.settings is not None
    return dashboard_app(
        server.store,
        server.hub,
        server.authenticators,
        server.settings,
        servicer=server.servicer,
        watchers=server.watchers,
    )
