"""The dashboard over HTTP with authentication off: the batch list and its filters, a
batch's page with its failed items paged, the handler catalog, live events, the actions
(checked through the gRPC API), CSRF refusals, escaping and security headers."""

from __future__ import annotations

import html
import uuid
from collections.abc import AsyncIterator
from dataclasses import replace

import aiohttp
import markupsafe
import pytest
from aiohttp import web
from support.dashboard import csrf_of, dashboard_url, finished, read_events
from support.redis_server import RedisServerFactory

from batchd.client import AsyncClient, BatchState
from batchd.core.config import SettingError, Settings
from batchd.server.app import BatchdServer, start_server
from batchd.server.dashboard import mount_dashboard

HOSTILE_LABEL = '<script>alert("label")</script>'
HOSTILE_ERROR = "<img src=x onerror=alert('error')>"


def unique(name: str) -> str:
    return f"{name}-{uuid.uuid4().hex[:8]}"


def sleepers(n: int, seconds: float) -> list[dict[str, object]]:
    return [{"custom_id": f"s{i}", "params": {"seconds": seconds}} for i in range(n)]


async def slow_batch(client: AsyncClient, name: str = "slow") -> str:
    """A batch that runs for minutes, one item at a time."""
    result = await client.submit(
        "sleep", sleepers(500, 0.5), batch_id=unique(name), options={"max_concurrent": 1}
    )
    return result.batch.batch_id


async def page(browser: aiohttp.ClientSession, url: str, status: int = 200) -> str:
    async with browser.get(url) as response:
        assert response.status == status, await response.text()
        return await response.text()


async def test_the_list_shows_batches_newest_first(
    dashboard: str, client: AsyncClient, browser: aiohttp.ClientSession
) -> None:
    older = (
        await client.submit("noop", [{"custom_id": "a", "params": {}}], batch_id=unique("old"))
    ).batch
    newer = (
        await client.submit("noop", [{"custom_id": "a", "params": {}}], batch_id=unique("new"))
    ).batch
    text = await page(browser, dashboard)
    assert text.index(newer.batch_id) < text.index(older.batch_id)
    assert f'href="/dashboard/batches/{newer.batch_id}"' in text


async def test_the_list_filters_by_state_and_handler(
    dashboard: str, client: AsyncClient, browser: aiohttp.ClientSession
) -> None:
    running = await slow_batch(client, "filtered")
    cancelled = await slow_batch(client, "cancelled")
    await client.cancel(cancelled)
    failing = (
        await client.submit(
            "dash.fail", [{"custom_id": "x", "params": {}}], batch_id=unique("fail")
        )
    ).batch.batch_id

    text = await page(browser, f"{dashboard}?state=CANCELLED")
    assert cancelled in text
    assert running not in text
    assert failing not in text
    text = await page(browser, f"{dashboard}?handler=dash.fail")
    assert failing in text
    assert running not in text
    assert cancelled not in text
    text = await page(browser, f"{dashboard}?handler=sleep&state=CANCELLED")
    assert cancelled in text
    assert running not in text
    await page(browser, f"{dashboard}?state=NOPE", status=400)
    await client.cancel(running)


async def test_a_batch_page_shows_options_counts_and_its_failed_items_paged(
    dashboard: str, client: AsyncClient, browser: aiohttp.ClientSession
) -> None:
    items = [{"custom_id": f"f{i:02d}", "params": {"message": f"broke {i:02d}"}} for i in range(25)]
    batch = (
        await client.submit(
            "dash.fail", items, batch_id=unique("paged"), options={"chunk_size": 10, "priority": 3}
        )
    ).batch
    await finished(client, batch.batch_id)
    url = f"{dashboard}batches/{batch.batch_id}"
    first = await page(browser, url)
    assert "<th>chunk_size</th><td>10</td>" in first
    assert "<th>priority</th><td>3</td>" in first
    assert '<td data-field="failed">25</td>' in first
    shown = [f"broke {i:02d}" for i in range(25) if f"broke {i:02d}" in first]
    assert shown == [f"broke {i:02d}" for i in range(20)]
    assert "INVALID_ARGUMENT" in first
    more = first.split('href="')[-1]  # the pager's link comes last
    assert "More failed items" in first
    next_url = html.unescape(more.split('"')[0])
    second = await page(browser, f"http://{browser_host(dashboard)}{next_url}")
    assert [f"broke {i:02d}" for i in range(25) if f"broke {i:02d}" in second] == [
        f"broke {i:02d}" for i in range(20, 25)
    ]
    await page(browser, f"{dashboard}batches/no-such-batch", status=404)
    await page(browser, f"{dashboard}batches/bad%20id", status=400)


def browser_host(url: str) -> str:
    return url.split("/")[2]


async def test_pause_resume_cancel_through_the_page(
    dashboard: str, client: AsyncClient, browser: aiohttp.ClientSession
) -> None:
    batch_id = await slow_batch(client, "acted")
    url = f"{dashboard}batches/{batch_id}"
    text = await page(browser, url)
    assert ">Pause</button>" in text
    assert ">Cancel</button>" in text
    async with browser.post(f"{url}/pause", data={"csrf": csrf_of(text)}) as response:
        assert response.status == 200  # followed the 303 to the batch page
        assert "Paused: no new item starts" in await response.text()
    assert (await client.get(batch_id)).state == BatchState.PAUSED

    text = await page(browser, url)
    assert ">Resume</button>" in text
    assert ">Pause</button>" not in text
    async with browser.post(f"{url}/resume", data={"csrf": csrf_of(text)}) as response:
        assert response.status == 200
    assert (await client.get(batch_id)).state in {BatchState.RUNNING, BatchState.QUEUED}

    async with browser.post(f"{url}/cancel", data={"csrf": csrf_of(text)}) as response:
        assert response.status == 200
    assert (await finished(client, batch_id)).state == BatchState.CANCELLED

    # The store's rules hold as over gRPC: a cancelled batch cannot be paused.
    async with browser.post(f"{url}/pause", data={"csrf": csrf_of(text)}) as response:
        assert response.status == 409
        assert "cancelled" in (await response.text()).lower()


async def test_retry_failed_requeues_the_failed_items(
    dashboard: str, client: AsyncClient, browser: aiohttp.ClientSession
) -> None:
    items = [{"custom_id": f"r{i}", "params": {"message": "no"}} for i in range(3)]
    batch_id = (await client.submit("dash.fail", items, batch_id=unique("retried"))).batch.batch_id
    await finished(client, batch_id)
    url = f"{dashboard}batches/{batch_id}"
    text = await page(browser, url)
    assert ">Retry failed</button>" in text
    request_id = text.split('name="request_id" value="')[1].split('"')[0]
    form = {"csrf": csrf_of(text), "request_id": request_id}
    async with browser.post(f"{url}/retry", data=form) as response:
        assert response.status == 200
        assert "queued again" in await response.text()
    batch = await finished(client, batch_id)
    assert batch.counts.failed == 3  # they ran, and failed, again
    # The same form again is a replay of the same request, not a second redrive.
    async with browser.post(f"{url}/retry", data=form) as response:
        assert response.status == 200
    assert (await client.get(batch_id)).state.is_terminal


async def test_a_post_without_the_right_csrf_token_or_from_elsewhere_is_refused(
    dashboard: str, client: AsyncClient, browser: aiohttp.ClientSession
) -> None:
    batch_id = await slow_batch(client, "csrf")
    url = f"{dashboard}batches/{batch_id}"
    text = await page(browser, url)
    token = csrf_of(text)
    async with browser.post(f"{url}/pause", data={}) as response:
        assert response.status == 403
    async with browser.post(f"{url}/pause", data={"csrf": "0" * 64}) as response:
        assert response.status == 403
    async with browser.post(
        f"{url}/pause", data={"csrf": token}, headers={"Origin": "http://evil.example"}
    ) as response:
        assert response.status == 403
    async with browser.post(
        f"{url}/pause", data={"csrf": token}, headers={"Sec-Fetch-Site": "cross-site"}
    ) as response:
        assert response.status == 403
    # A token is bound to its browser's session: another browser's is refused.
    async with (
        aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as other,
        other.post(f"{url}/pause", data={"csrf": token}) as response,
    ):
        assert response.status == 403
    assert (await client.get(batch_id)).state != BatchState.PAUSED
    await client.cancel(batch_id)


async def test_what_a_submitter_wrote_is_escaped(
    dashboard: str, client: AsyncClient, browser: aiohttp.ClientSession
) -> None:
    batch = (
        await client.submit(
            "dash.fail",
            [{"custom_id": "h", "params": {"message": HOSTILE_ERROR}}],
            batch_id=unique("hostile"),
            metadata={"label": HOSTILE_LABEL, HOSTILE_LABEL[:20]: "x"},
        )
    ).batch
    await finished(client, batch.batch_id)
    text = await page(browser, f"{dashboard}batches/{batch.batch_id}")
    assert HOSTILE_LABEL not in text
    assert HOSTILE_ERROR not in text
    assert str(markupsafe.escape(HOSTILE_LABEL)) in text
    assert str(markupsafe.escape(HOSTILE_ERROR)) in text
    assert "<script>" not in text.replace(
        '<script src="/dashboard/static/dashboard.js" defer></script>', ""
    )


async def test_every_answer_carries_the_security_headers(
    dashboard: str, browser: aiohttp.ClientSession
) -> None:
    async with browser.get(dashboard) as response:  # its first visit
        cookie = response.headers["Set-Cookie"]
        assert "HttpOnly" in cookie
        assert "SameSite=Strict" in cookie
    for path in ("", "handlers", "batches/nope", "static/dashboard.js", "static/nope"):
        async with browser.get(dashboard + path) as response:
            csp = response.headers["Content-Security-Policy"]
            assert "script-src 'self'" in csp
            assert "frame-ancestors 'none'" in csp
            assert "unsafe-inline" not in csp
            assert response.headers["X-Frame-Options"] == "DENY"
            assert response.headers["X-Content-Type-Options"] == "nosniff"


async def test_the_handler_catalog_shows_live_workers(
    dashboard: str, browser: aiohttp.ClientSession
) -> None:
    text = await page(browser, f"{dashboard}handlers")
    row = text.split('<tr data-handler="dash.fail">')[1].split("</tr>")[0]
    assert '<td data-field="live_workers">1</td>' in row
    assert "Fails every item with the message its params carry." in row


async def test_live_events_follow_batches_through_the_hub(
    dashboard: str, client: AsyncClient, browser: aiohttp.ClientSession
) -> None:
    done = (
        await client.submit("noop", [{"custom_id": "a", "params": {}}], batch_id=unique("live"))
    ).batch
    await finished(client, done.batch_id)
    running = await slow_batch(client, "live-running")
    url = f"{dashboard}live?batch={done.batch_id}&batch={running}&batch=missing-one"
    async with browser.get(url) as response:
        assert response.headers["Content-Type"] == "text/event-stream"
        events = await read_events(response, "gone")
        events += await read_events(response, "progress") if len(events) < 3 else []
        by_id = {data["id"]: (name, data) for name, data in events}  # type: ignore[index]
        assert by_id["missing-one"][0] == "gone"
        await client.cancel(running)
        events = await read_events(response, "done")
    finals = {data["id"]: data for name, data in events if name == "progress"}  # type: ignore[index]
    assert finals[running]["state"] == "CANCELLED"  # type: ignore[index]
    async with browser.get(f"{dashboard}live?batch=bad%20id") as response:
        assert response.status == 400


def test_the_dashboard_is_mounted_as_the_settings_say(server: BatchdServer) -> None:
    store, settings = server.store, server.settings
    assert store is not None
    assert settings is not None

    def mount(host: str, **changes: bool | float) -> bool:
        changed = replace(settings, **changes)  # type: ignore[arg-type]
        return mount_dashboard(web.Application(), store, server.hub, (), changed, host=host)

    assert mount("127.0.0.1")
    assert not mount("127.0.0.1", dashboard=False)  # BATCHD_DASHBOARD=0
    # Actions for anyone who reaches the port: not without authentication or --insecure.
    assert not mount("0.0.0.0")
    assert mount("0.0.0.0", insecure=True)
    with pytest.raises(SettingError, match="--dashboard-session-ttl 0"):
        mount("127.0.0.1", dashboard_session_ttl=0)


async def test_a_redis_outage_is_a_503(
    redis_server_factory: RedisServerFactory, browser: aiohttp.ClientSession
) -> None:
    private = redis_server_factory()
    server = await start_server(Settings(redis_url=private.url), port=0, metrics_port=0)
    try:
        dashboard = dashboard_url(server)
        await page(browser, dashboard)
        with private.stopped():
            async with browser.get(dashboard) as response:
                assert response.status == 503
                assert await response.text() == "the batch store is unavailable"
                assert response.headers["X-Frame-Options"] == "DENY"
    finally:
        await server.stop(grace=0)


async def test_a_stopping_server_ends_its_event_streams(
    settings: Settings, client: AsyncClient, browser: aiohttp.ClientSession
) -> None:
    batch_id = await slow_batch(client, "stopping")
    server = await start_server(settings, port=0, metrics_port=0)
    dashboard = dashboard_url(server)
    stopped = False
    try:
        async with (
            browser.get(f"{dashboard}live/handlers") as handlers,
            browser.get(f"{dashboard}live?batch={batch_id}") as progress,
        ):
            await read_events(handlers, "handlers")
            await read_events(progress, "progress")
            await server.stop(grace=0)
            stopped = True
            # Both end, without `done`: the browser reconnects to another server.
            assert [name async for name in _names(handlers)] == []
            assert "done" not in [name async for name in _names(progress)]
    finally:
        if not stopped:
            await server.stop(grace=0)
        await client.cancel(batch_id)


async def _names(response: aiohttp.ClientResponse) -> AsyncIterator[str]:
    async for raw in response.content:
        line = raw.decode()
        if line.startswith("event: ") and line.strip() != "event: handlers":
            yield line[len("event: ") :].strip()
