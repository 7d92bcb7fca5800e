"""The dashboard's aiohttp application: its pages, actions, event streams, login and
static files, behind the guard of batchd.server.dashboard.guard."""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Sequence
from typing import Any
from urllib.parse import quote

import grpc
from aiohttp import web

from batchd.core.config import SettingError, Settings
from batchd.core.domain import TENANT_SEPARATOR, BatchRecord, BatchState, ItemState
from batchd.core.errors import BatchdError, Exhausted, InvalidRequest, NotFound, Unavailable
from batchd.core.logs import get_logger
from batchd.core.sessions import SessionStore
from batchd.core.store import BatchStore
from batchd.core.watchers import WatcherCounts
from batchd.server.dashboard import live
from batchd.server.dashboard.calls import CallFailed, LocalCalls
from batchd.server.dashboard.guard import CALLER, Caller, Guard
from batchd.server.dashboard.render import asset, environment
from batchd.server.dashboard.sessions import Sessions
from batchd.server.principal import METHOD_ROLES, Authenticator
from batchd.server.progress import ProgressHub
from batchd.server.servicer import BatchServicer
from batchd.server.tenancy import TenantView
from batchd.v1 import batch_service_pb2

__all__ = ["PREFIX", "Dashboard", "dashboard_app"]

log = get_logger(__name__)

PREFIX = "/dashboard/"
BATCHES_PAGE = 50
FAILED_PAGE = 20
# Batches one event stream follows at most (a page of the list).
MAX_LIVE_BATCHES = BATCHES_PAGE
ASSETS = {
    "dashboard.js": "text/javascript",
    "dashboard.css": "text/css",
    "favicon.svg": "image/svg+xml",
}
# What a gRPC status means to a browser.
HTTP_STATUS = {
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.UNAUTHENTICATED: 401,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.FAILED_PRECONDITION: 409,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.UNAVAILABLE: 503,
}
# The buttons of a batch page: action -> (BatchService method, what the page then says).
ACTIONS = {
    "pause": ("PauseBatch", "Paused: no new item starts; items running finish."),
    "resume": ("ResumeBatch", "Resumed."),
    "cancel": ("CancelBatch", "Cancelled: items not started will not run."),
    "retry": ("RetryBatchItems", "Failed and expired items queued again."),
}
_ERROR_STATUS = {InvalidRequest: 400, NotFound: 404, Exhausted: 429, Unavailable: 503}


class Dashboard:
    def __init__(
        self,
        store: BatchStore,
        hub: ProgressHub,
        authenticators: Sequence[Authenticator],
        settings: Settings,
        *,
        servicer: BatchServicer | None = None,
        watchers: WatcherCounts | None = None,
        prefix: str = PREFIX,
    ) -> None:
        if settings.dashboard_session_ttl <= 0:
            raise SettingError(
                f"--dashboard-session-ttl {settings.dashboard_session_ttl:g}: more than 0 seconds"
            )
        self.store = store
        self.hub = hub
        self.settings = settings
        self.watchers = watchers
        self.prefix = prefix
        servicer = servicer or BatchServicer(store, hub, settings, watchers)
        self.calls = LocalCalls(servicer, authenticators)
        self.sessions = Sessions(
            SessionStore(store.redis, store.keys), authenticators, settings.dashboard_session_ttl
        )
        self.handler_feed = live.HandlerFeed(store, settings.worker_ttl)
        self.guard = Guard(self.sessions, prefix)
        self.env = environment()
        self.assets = {name: asset(name) for name in ASSETS}
        self.closing: asyncio.Event | None = None  # made in the serving loop

    # -- rendering ----------------------------------------------------------------
    async def render(
        self, request: web.Request, template: str, status: int = 200, **values: Any
    ) -> web.Response:
        caller = request[CALLER]
        principal = caller.principal
        may = {
            action: principal is not None and principal.may(METHOD_ROLES[method])
            for action, (method, _) in ACTIONS.items()
        }
        body = self.env.get_template(template).render(
            base=self.prefix,
            auth_on=self.sessions.auth_on,
            principal=principal,
            csrf=await self.sessions.csrf_token(caller.session_id),
            may=may,
            batch_url=self.batch_url,
            **values,
        )
        return web.Response(text=body, status=status, content_type="text/html", charset="utf-8")

    def batch_url(self, batch_id: str) -> str:
        return f"{self.prefix}batches/{quote(batch_id, safe='')}"

    async def error_page(self, request: web.Request, status: int, message: str) -> web.Response:
        return await self.render(request, "error.html", status=status, message=message, code=status)

    def _message(self, caller: Caller, error: BatchdError) -> str:
        """The error as the caller knows its batches (its own ids, as over gRPC)."""
        tenant = caller.principal.tenant if caller.principal else ""
        return error.message.replace(f"'{tenant}{TENANT_SEPARATOR}", "'")

    # -- pages --------------------------------------------------------------------
    async def batches(self, request: web.Request) -> web.StreamResponse:
        caller = request[CALLER]
        view = caller.view
        state_name = request.query.get("state", "")
        handler = request.query.get("handler", "")
        states = []
        if state_name:
            if state_name not in BatchState.__members__:
                return await self.error_page(request, 400, f"no batch state {state_name!r}")
            states = [BatchState[state_name]]
        try:
            found, token = await self.store.list_batches(
                BATCHES_PAGE,
                request.query.get("page", ""),
                states,
                view.list_scope(),
                handler=handler,
            )
        except BatchdError as exc:
            return await self.error_page(request, _status(exc), self._message(caller, exc))
        found = await self.store.explain_waits(found, self.settings.worker_ttl)
        statuses = await self.handler_feed.latest()
        rows = [self._row(view, batch) for batch in found]
        return await self.render(
            request,
            "batches.html",
            rows=rows,
            states=list(BatchState.__members__),
            state=state_name,
            handlers=sorted({s.spec.name for s in statuses} | {handler} - {""}),
            handler=handler,
            next_page=token,
            live_ids=[row["id"] for row in rows if not row["terminal"]],
        )

    def _row(self, view: TenantView, batch: BatchRecord) -> dict[str, Any]:
        rate, eta = _average(batch)
        row = live.batch_payload(view, batch, rate, eta, None)
        row.update(handler=batch.handler, created=batch.create_time)
        return row

    async def batch(self, request: web.Request) -> web.StreamResponse:
        caller = request[CALLER]
        view = caller.view
        given = request.match_info["batch_id"]
        try:
            stored = view.batch_id(given)
            batch = await self.store.get_batch(stored)
            [batch] = await self.store.explain_waits([batch], self.settings.worker_ttl)
            failed, next_failed = await self.store.list_items(
                stored, FAILED_PAGE, request.query.get("failed", ""), [ItemState.FAILED]
            )
            effective = None if batch.state.is_terminal else await self.store.effective_rate(batch)
        except BatchdError as exc:
            return await self.error_page(request, _status(exc), self._message(caller, exc))
        rate, eta = _average(batch)
        shown = view.show(batch)
        done = ACTIONS.get(request.query.get("done", ""), ("", ""))[1]
        return await self.render(
            request,
            "batch.html",
            batch=shown,
            live=live.batch_payload(view, batch, rate, eta, effective),
            failed=failed,
            next_failed=next_failed,
            failed_page=request.query.get("failed", ""),
            done=done,
            request_id=f"dashboard-{secrets.token_hex(12)}",
        )

    async def act(self, request: web.Request) -> web.StreamResponse:
        caller = request[CALLER]
        action = request.match_info["action"]
        given = request.match_info["batch_id"]
        if action not in ACTIONS:
            raise web.HTTPNotFound()
        method, _ = ACTIONS[action]
        request_type = getattr(batch_service_pb2, f"{method}Request")
        message = request_type(batch_id=given)
        if action == "retry":
            form = await request.post()
            request_id = form.get("request_id")
            message.request_id = request_id if isinstance(request_id, str) else ""
        try:
            await self.calls.call(method, message, caller.credential, _peer(request))
        except CallFailed as exc:
            if exc.code == grpc.StatusCode.UNAUTHENTICATED:
                raise web.HTTPSeeOther(f"{self.prefix}login") from None
            return await self.error_page(request, HTTP_STATUS.get(exc.code, 500), exc.details)
        raise web.HTTPSeeOther(f"{self.batch_url(given)}?done={action}")

    async def handlers(self, request: web.Request) -> web.StreamResponse:
        try:
            statuses = await self.handler_feed.latest()
        except BatchdError as exc:
            return await self.error_page(request, _status(exc), exc.message)
        return await self.render(request, "handlers.html", handlers=statuses, now=time.time())

    # -- live ---------------------------------------------------------------------
    async def live_batches(self, request: web.Request) -> web.StreamResponse:
        caller = request[CALLER]
        view = caller.view
        given = list(dict.fromkeys(request.query.getall("batch", [])))
        if not given or len(given) > MAX_LIVE_BATCHES:
            raise web.HTTPBadRequest(text=f"1 to {MAX_LIVE_BATCHES} batch parameters")
        try:
            stored = [view.batch_id(batch_id, "batch") for batch_id in given]
        except InvalidRequest as exc:
            raise web.HTTPBadRequest(text=exc.message) from None
        async with self._watch_slot(view):
            response = await live.open_stream(request)
            await live.stream_batches(
                response,
                self.hub,
                self.store,
                view,
                stored,
                self.settings.watch_min_interval,
                self._closing(),
            )
        return response

    async def live_handlers(self, request: web.Request) -> web.StreamResponse:
        view = request[CALLER].view
        async with self._watch_slot(view):
            response = await live.open_stream(request)
            await live.stream_handlers(response, self.handler_feed, self._closing())
        return response

    def _watch_slot(self, view: TenantView) -> Any:
        """One of the tenant's watch slots, as the servicer's WatchProgress takes (429
        when the tenant has none free)."""
        if self.watchers is None or view.sees_every_tenant:
            return _NoSlot()
        return _Slot(self.watchers.held(view.tenant))

    def _closing(self) -> asyncio.Event:
        """Set when the listener stops: open streams end, their browsers reconnect."""
        if self.closing is None:
            self.closing = asyncio.Event()
        return self.closing

    async def _on_shutdown(self, _: web.Application) -> None:
        self._closing().set()

    # -- login --------------------------------------------------------------------
    async def login_form(self, request: web.Request) -> web.StreamResponse:
        if not self.sessions.auth_on:
            raise web.HTTPSeeOther(self.prefix)
        return await self.render(request, "login.html", next=_local(request.query.get("next")))

    async def login(self, request: web.Request) -> web.StreamResponse:
        if not self.sessions.auth_on:
            raise web.HTTPSeeOther(self.prefix)
        form = await request.post()
        credential = form.get("credential")
        target = _local(form.get("next")) or self.prefix
        found = None
        if isinstance(credential, str) and credential.strip():
            found = await self.sessions.login(credential.strip())
        if found is None:
            log.info("dashboard_login_refused", peer=_peer(request))
            return await self.render(
                request,
                "login.html",
                status=401,
                next=target,
                refused="The service did not accept the credential.",
            )
        session_id, principal = found
        log.info("dashboard_login", principal=principal.subject, tenant=principal.tenant)
        response = web.HTTPSeeOther(target if target.startswith(self.prefix) else self.prefix)
        self.guard.set_cookie(request, response, session_id)
        raise response

    async def logout(self, request: web.Request) -> web.StreamResponse:
        caller = request[CALLER]
        await self.sessions.logout(caller.session_id)
        response = web.HTTPSeeOther(f"{self.prefix}login" if self.sessions.auth_on else self.prefix)
        self.guard.forget_cookie(response)
        raise response

    async def asset(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        if name not in self.assets:
            raise web.HTTPNotFound()
        return web.Response(
            body=self.assets[name],
            content_type=ASSETS[name],
            charset="utf-8",
            headers={"Cache-Control": "no-cache"},
        )

    # -- the application ------------------------------------------------------------
    def application(self) -> web.Application:
        app = web.Application(middlewares=[self.guard.middleware])
        app.on_shutdown.append(self._on_shutdown)
        app.router.add_get("/", self.batches, name="batches")
        app.router.add_get("/batches/{batch_id}", self.batch, name="batch")
        app.router.add_post("/batches/{batch_id}/{action}", self.act, name="act")
        app.router.add_get("/handlers", self.handlers, name="handlers")
        app.router.add_get("/live", self.live_batches, name="live")
        app.router.add_get("/live/handlers", self.live_handlers, name="live_handlers")
        app.router.add_get("/login", self.login_form, name="login")
        app.router.add_post("/login", self.login, name="login_post")
        app.router.add_post("/logout", self.logout, name="logout")
        app.router.add_get("/static/{name}", self.asset, name="asset")
        return app


class _NoSlot:
    async def __aenter__(self) -> None:
        return None

    async def __aexit__(self, *_: object) -> None:
        return None


class _Slot:
    def __init__(self, held: Any) -> None:
        self.held = held

    async def __aenter__(self) -> None:
        try:
            await self.held.__aenter__()
        except Exhausted as exc:
            raise web.HTTPTooManyRequests(text=exc.message) from None

    async def __aexit__(self, *exc: object) -> None:
        await self.held.__aexit__(*exc)


def dashboard_app(
    store: BatchStore,
    hub: ProgressHub,
    authenticators: Sequence[Authenticator],
    settings: Settings,
    *,
    servicer: BatchServicer | None = None,
    watchers: WatcherCounts | None = None,
    prefix: str = PREFIX,
) -> web.Application:
    """The dashboard as an aiohttp application to mount at `prefix`
    (`app.add_subapp(prefix, dashboard_app(...))`), over a server's store, progress hub
    and authenticators (none: authentication off). `servicer` and `watchers` are the
    server's, so that actions and watch slots are shared with its gRPC calls."""
    return Dashboard(
        store, hub, authenticators, settings, servicer=servicer, watchers=watchers, prefix=prefix
    ).application()


def _status(error: BatchdError) -> int:
    return next((s for t, s in _ERROR_STATUS.items() if isinstance(error, t)), 409)


def _average(batch: BatchRecord) -> tuple[float | None, float | None]:
    """Rate and ETA from the batch's start (the live stream then has a recent rate)."""
    if not batch.start_time:
        return None, None
    end = batch.end_time or time.time()
    span = end - batch.start_time
    finished = batch.counts.finished
    rate = finished / span if span > 0 else 0.0
    remaining = batch.total_items - finished
    if batch.state.is_terminal or not remaining:
        return rate, None
    return rate, (remaining / rate if rate > 0 else None)


def _local(target: object) -> str:
    """`target` if it is a path of this site (a redirect never leaves it), else ""."""
    if not isinstance(target, str) or not target.startswith("/") or target.startswith("//"):
        return ""
    if "\\" in target or any(ord(c) < 32 for c in target):
        return ""
    return target


def _peer(request: web.Request) -> str:
    return f"dashboard:{request.remote or 'unknown'}"
