"""The dashboard with API keys (--auth tokens): a login with the same credential as the
gRPC API, then only the caller's tenant, buttons only for the roles that may use them
(and a POST refused to the others), sessions ended by logout or by revoking the key."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace

import aiohttp
import pytest
from support.dashboard import HOST, csrf_of, dashboard_url, read_events

from batchd.client import AsyncClient, BatchState
from batchd.core.config import Settings
from batchd.core.credentials import CredentialStore
from batchd.server.app import BatchdServer, start_server

Login = Callable[[str, str], Awaitable[tuple[aiohttp.ClientSession, str]]]


def tenant() -> str:
    return f"t{uuid.uuid4().hex[:10]}"


@pytest.fixture
async def login(
    secured_dashboard: str, credentials: CredentialStore
) -> AsyncIterator[Callable[[str, str], Awaitable[tuple[aiohttp.ClientSession, str]]]]:
    """login(tenant, role) -> a browser logged in with a fresh key, and the key."""
    opened: list[aiohttp.ClientSession] = []

    async def log_in(tenant: str, role: str) -> tuple[aiohttp.ClientSession, str]:
        key, _ = await credentials.create(tenant, role, "dashboard test")
        browser = aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True))
        opened.append(browser)
        async with browser.get(f"{secured_dashboard}login") as response:
            form = {"csrf": csrf_of(await response.text()), "credential": key, "next": ""}
        async with browser.post(f"{secured_dashboard}login", data=form) as response:
            assert response.status == 200, await response.text()
            assert str(response.url) == secured_dashboard
        return browser, key

    yield log_in
    for browser in opened:
        await browser.close()


@pytest.fixture
async def submit_as(
    secured: BatchdServer, credentials: CredentialStore
) -> AsyncIterator[Callable[[str, str], Awaitable[str]]]:
    """submit_as(tenant, batch_id) -> a long batch of that tenant, through the gRPC API."""
    clients: list[AsyncClient] = []

    async def submit(tenant: str, batch_id: str) -> str:
        key, _ = await credentials.create(tenant, "operator", "dashboard test")
        client = AsyncClient(f"{HOST}:{secured.port}", token=key)
        clients.append(client)
        items = [{"custom_id": f"s{i}", "params": {"seconds": 0.5}} for i in range(200)]
        result = await client.submit(
            "sleep", items, batch_id=batch_id, options={"max_concurrent": 1}
        )
        return result.batch.batch_id

    yield submit
    for client in clients:
        await client.close()


async def test_every_page_asks_for_a_login_first(secured_dashboard: str) -> None:
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as browser:
        for path in ("", "handlers", "batches/any"):
            async with browser.get(secured_dashboard + path) as response:
                assert response.status == 200
                assert response.url.path == "/dashboard/login"
                assert 'name="credential"' in await response.text()
        async with browser.get(f"{secured_dashboard}live?batch=any") as response:
            assert response.status == 401


async def test_a_credential_the_service_does_not_accept_is_refused(
    secured_dashboard: str, credentials: CredentialStore
) -> None:
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as browser:
        async with browser.get(f"{secured_dashboard}login") as response:
            token = csrf_of(await response.text())
        form = {"csrf": token, "credential": "bd_000000000000_nope", "next": ""}
        async with browser.post(f"{secured_dashboard}login", data=form) as response:
            assert response.status == 401
            assert "did not accept" in await response.text()
        # Nor is a login without the form's CSRF token.
        key, _ = await credentials.create(tenant(), "reader", "dashboard test")
        async with browser.post(
            f"{secured_dashboard}login", data={"credential": key, "next": ""}
        ) as response:
            assert response.status == 403
        async with browser.get(secured_dashboard) as response:
            assert response.url.path == "/dashboard/login"


async def test_a_tenant_sees_its_own_batches_only(
    secured_dashboard: str, login: Login, submit_as: Callable[[str, str], Awaitable[str]]
) -> None:
    mine, theirs = tenant(), tenant()
    await submit_as(mine, "mine")
    await submit_as(theirs, "theirs")
    browser, _ = await login(mine, "reader")
    async with browser.get(secured_dashboard) as response:
        text = await response.text()
    assert "/dashboard/batches/mine" in text
    assert "theirs" not in text
    assert f"tenant {mine}" in text
    async with browser.get(f"{secured_dashboard}batches/theirs") as response:
        assert response.status == 404
        assert "batch &#39;theirs&#39; not found" in await response.text()  # its own id
    async with browser.get(f"{secured_dashboard}batches/mine") as response:
        assert response.status == 200
    async with browser.get(f"{secured_dashboard}live?batch=theirs") as response:
        assert await read_events(response, "gone") == [("gone", {"id": "theirs"})]


async def test_a_reader_sees_no_buttons_and_its_post_is_refused(
    secured_dashboard: str,
    login: Login,
    submit_as: Callable[[str, str], Awaitable[str]],
    secured: BatchdServer,
) -> None:
    owner = tenant()
    batch_id = await submit_as(owner, "watched")
    reader, _ = await login(owner, "reader")
    url = f"{secured_dashboard}batches/{batch_id}"
    async with reader.get(url) as response:
        text = await response.text()
    assert "<button" in text  # the logout button
    for label in ("Pause", "Resume", "Cancel", "Retry failed"):
        assert f">{label}</button>" not in text
    async with reader.post(f"{url}/pause", data={"csrf": csrf_of(text)}) as response:
        assert response.status == 403
        assert "operator role" in await response.text()

    operator, key = await login(owner, "operator")
    async with operator.get(url) as response:
        text = await response.text()
    assert ">Pause</button>" in text
    assert ">Cancel</button>" in text
    async with operator.post(f"{url}/pause", data={"csrf": csrf_of(text)}) as response:
        assert response.status == 200
    async with AsyncClient(f"{HOST}:{secured.port}", token=key) as client:
        assert (await client.get(batch_id)).state == BatchState.PAUSED
        await client.cancel(batch_id)


async def test_a_session_ends_with_its_logout_or_its_key(
    secured_dashboard: str, login: Login, credentials: CredentialStore
) -> None:
    browser, key = await login(tenant(), "reader")
    async with browser.get(secured_dashboard) as response:
        text = await response.text()
        assert response.url.path == "/dashboard/"
    async with browser.post(f"{secured_dashboard}logout", data={"csrf": csrf_of(text)}) as response:
        assert response.url.path == "/dashboard/login"
    async with browser.get(secured_dashboard) as response:
        assert response.url.path == "/dashboard/login"

    browser, key = await login(tenant(), "reader")
    [record] = [k for k in await credentials.list() if key.startswith(f"bd_{k.key_id}_")]
    await credentials.revoke(record.key_id)

    async def logged_out() -> bool | None:
        async with browser.get(secured_dashboard) as response:
            return True if response.url.path == "/dashboard/login" else None

    from support.polling import poll

    await poll(logged_out, within=5)  # within the servers' key cache (0.1 s here)


async def test_a_live_page_holds_one_of_its_tenants_watch_slots(
    settings: Settings, worker: None, credentials: CredentialStore
) -> None:
    owner = tenant()
    key, _ = await credentials.create(owner, "reader", "dashboard test")
    server = await start_server(
        replace(settings, auth="tokens", tenant_max_watchers=1), port=0, metrics_port=0
    )
    dashboard = dashboard_url(server)
    try:
        async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as browser:
            async with browser.get(f"{dashboard}login") as response:
                form = {"csrf": csrf_of(await response.text()), "credential": key, "next": ""}
            async with browser.post(f"{dashboard}login", data=form) as response:
                assert response.status == 200
            async with browser.get(f"{dashboard}live/handlers") as first:
                assert first.status == 200
                await first.content.readuntil(b"\n\n")  # streaming: the slot is held
                async with browser.get(f"{dashboard}live/handlers") as second:
                    assert second.status == 429
    finally:
        await server.stop(grace=0)


async def test_a_session_is_good_on_every_server_of_the_redis(
    settings: Settings, worker: None, login: Login
) -> None:
    browser, _ = await login(tenant(), "reader")  # on the `secured` server
    other = await start_server(
        replace(settings, auth="tokens", auth_cache_seconds=0.1), port=0, metrics_port=0
    )
    try:
        # Cookies are the host's, whatever the port: the same session reaches the other.
        async with browser.get(dashboard_url(other)) as response:
            assert response.status == 200
            assert response.url.path == "/dashboard/"
            assert "Log out" in await response.text()
    finally:
        await other.stop(grace=0)
