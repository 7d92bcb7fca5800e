"""What every dashboard request passes before its page: the caller found from its
session cookie, a login asked for, a POST's origin and CSRF token checked; and what
every answer carries: the security headers, and the session cookie when it is new.
See docs/security.md, "Dashboard"."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from urllib.parse import quote, urlsplit

import redis.exceptions
from aiohttp import web

from batchd.core.logs import get_logger
from batchd.server.dashboard.sessions import SESSION_ID_LENGTH, Sessions, new_session_id
from batchd.server.principal import ANONYMOUS, Principal
from batchd.server.tenancy import TenantView

__all__ = ["CALLER", "COOKIE", "CSP", "SECURITY_HEADERS", "Caller", "Guard"]

COOKIE = "batchd_dashboard"
# No inline script or style, nothing from elsewhere, never inside a frame.
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
}
# Routes (by name) open without a login, streams (answered 401 rather than redirected
# to the login page), and the static files (no session at all).
OPEN_ROUTES = frozenset({"login", "login_post", "logout"})
STREAM_ROUTES = frozenset({"live", "live_handlers"})
ASSET_ROUTE = "asset"
# Redis down or slow: a 503, as gRPC calls get UNAVAILABLE.
REDIS_OUTAGES = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError)
_URLSAFE = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

log = get_logger(__name__)


@dataclass
class Caller:
    """Who made a request: its session id (new: not yet in a cookie), its principal
    (None: not logged in) and its credential (with authentication on)."""

    session_id: str
    new_session: bool
    principal: Principal | None
    credential: str | None

    @property
    def view(self) -> TenantView:
        assert self.principal is not None
        return TenantView(self.principal)


CALLER = web.RequestKey("caller", Caller)


class Guard:
    def __init__(self, sessions: Sessions, prefix: str) -> None:
        self.sessions = sessions
        self.prefix = prefix

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            response = await self._guarded(request, handler)
        except web.HTTPException as exc:  # raised, as aiohttp wants: headers first
            self._finish(request, exc)
            raise
        except REDIS_OUTAGES as exc:
            log.warning("redis_unavailable", error=str(exc))
            unavailable = web.HTTPServiceUnavailable(text="the batch store is unavailable")
            self._finish(request, unavailable)
            raise unavailable from None
        self._finish(request, response)
        return response

    def _finish(self, request: web.Request, response: web.StreamResponse) -> None:
        if response.prepared:  # an event stream has sent its headers already
            return
        response.headers.update(SECURITY_HEADERS)
        response.headers.setdefault("Cache-Control", "no-store")
        caller = request.get(CALLER)
        if caller is not None and caller.new_session:
            self.set_cookie(request, response, caller.session_id)

    async def _guarded(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        route = request.match_info.route.name
        if route == ASSET_ROUTE:
            return await handler(request)
        caller = await self._caller(request)
        request[CALLER] = caller
        if request.method == "POST":
            await self._check_post(request, caller)
        if caller.principal is None and route not in OPEN_ROUTES:
            if request.method == "GET" and route not in STREAM_ROUTES:
                target = quote(request.rel_url.path_qs, safe="")
                raise web.HTTPSeeOther(f"{self.prefix}login?next={target}")
            raise web.HTTPUnauthorized(text="log in first")
        return await handler(request)

    async def _caller(self, request: web.Request) -> Caller:
        session_id = request.cookies.get(COOKIE, "")
        if len(session_id) != SESSION_ID_LENGTH or not set(session_id) <= _URLSAFE:
            anonymous = None if self.sessions.auth_on else ANONYMOUS
            return Caller(new_session_id(), True, anonymous, None)
        if not self.sessions.auth_on:
            return Caller(session_id, False, ANONYMOUS, None)
        found = await self.sessions.resume(session_id)
        if found is None:
            return Caller(session_id, False, None, None)
        credential, principal = found
        return Caller(session_id, False, principal, credential)

    async def _check_post(self, request: web.Request, caller: Caller) -> None:
        """403 unless the POST comes from a page of this dashboard: the browser says so
        (Origin, Sec-Fetch-Site) where it does, and the form carries the CSRF token of
        this browser's session, which no other origin can read or make."""
        origin = request.headers.get("Origin")
        if origin is not None and urlsplit(origin).netloc != request.host:
            raise web.HTTPForbidden(text="cross-origin request refused")
        site = request.headers.get("Sec-Fetch-Site")
        if site is not None and site not in {"same-origin", "none"}:
            raise web.HTTPForbidden(text="cross-site request refused")
        form = await request.post()
        token = form.get("csrf")
        if caller.new_session or not isinstance(token, str):
            raise web.HTTPForbidden(text="missing CSRF token: reload the page")
        if not await self.sessions.csrf_ok(caller.session_id, token):
            raise web.HTTPForbidden(text="bad CSRF token: reload the page")

    def set_cookie(
        self, request: web.Request, response: web.StreamResponse, session_id: str
    ) -> None:
        response.set_cookie(
            COOKIE,
            session_id,
            path=self.prefix.rstrip("/") or "/",
            httponly=True,
            samesite="Strict",
            secure=request.secure,
        )

    def forget_cookie(self, response: web.StreamResponse) -> None:
        response.del_cookie(COOKIE, path=self.prefix.rstrip("/") or "/")
