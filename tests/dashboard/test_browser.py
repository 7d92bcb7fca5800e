"""The dashboard in a real headless Chromium (Debian's, installed by
scripts/install-chromium where it is missing): the list loads and a running batch's bar
moves, the pause button pauses the batch (as the gRPC API then says), a failed item's
error is shown, and the pages run without a script error or a CSP violation.

Screenshots of the three pages go to $BATCHD_SCREENSHOTS (docs/img makes the README's)
or, without it, to the test's temporary directory."""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from support.dashboard import chromium, chromium_problem, finished

from batchd.client import AsyncClient, BatchState

if TYPE_CHECKING:
    from playwright.async_api import BrowserContext, Page

pytestmark = pytest.mark.slow

ERROR = "upstream said <b>no</b> & gave up"


@pytest.fixture(scope="module")
async def context() -> AsyncIterator[BrowserContext]:
    problem = await asyncio.to_thread(chromium_problem)
    if problem is not None:
        pytest.skip(f"no Chromium can be installed here: {problem}")
    async with chromium() as context:
        yield context


@pytest.fixture
async def page(context: BrowserContext) -> AsyncIterator[Page]:
    page = await context.new_page()
    problems: list[str] = []
    page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: problems.append(str(e)))
    yield page
    await page.close()
    assert problems == []  # no script error, no CSP violation


def shots(tmp_path: Path) -> Path:
    where = Path(os.environ.get("BATCHD_SCREENSHOTS") or tmp_path)
    where.mkdir(parents=True, exist_ok=True)
    return where


async def bar_value(page: Page, batch_id: str) -> float:
    value: float = await page.locator(f'[data-batch="{batch_id}"] progress').first.evaluate(
        "bar => bar.value"
    )
    return value


async def test_the_dashboard_in_a_browser(
    dashboard: str, client: AsyncClient, page: Page, tmp_path: Path
) -> None:
    suffix = uuid.uuid4().hex[:6]
    failing = await client.submit(
        "dash.fail",
        [{"custom_id": f"bad-{i}", "params": {"message": ERROR}} for i in range(3)]
        + [{"custom_id": "worse", "params": {"message": "connection reset by peer"}}],
        batch_id=f"import-{suffix}",
        metadata={"label": "nightly import"},
    )
    await finished(client, failing.batch.batch_id)
    await client.submit(
        "noop",
        [{"custom_id": f"n{i}", "params": {}} for i in range(50)],
        batch_id=f"warmup-{suffix}",
    )
    running = (
        await client.submit(
            "sleep",
            [{"custom_id": f"s{i}", "params": {"seconds": 0.05}} for i in range(600)],
            batch_id=f"resize-{suffix}",
            options={"max_concurrent": 4, "chunk_size": 50},
        )
    ).batch.batch_id

    await page.goto(dashboard)
    row = page.locator(f'tr[data-batch="{running}"]')
    await row.wait_for()
    first = await bar_value(page, running)
    await page.wait_for_function(
        "([id, before]) => document.querySelector(`tr[data-batch='${id}'] progress`).value"
        " > before",
        arg=[running, first],
    )
    assert await bar_value(page, running) > first  # moved, by the live stream alone
    await page.wait_for_function(
        "id => document.querySelector(`tr[data-batch='${id}'] [data-field=rate]`)"
        ".textContent.endsWith('/s')",
        arg=running,
    )
    await page.screenshot(path=shots(tmp_path) / "dashboard-batches.png")

    await row.locator("a").first.click()
    await page.wait_for_url(f"**/batches/{running}")
    await page.locator("button", has_text="Pause").click()
    await page.locator(".notice").wait_for()
    assert (await client.get(running)).state == BatchState.PAUSED

    await page.goto(f"{dashboard}batches/{failing.batch.batch_id}")
    errors = page.locator("table.failed td.error")
    assert await errors.count() == 4
    assert ERROR in await errors.all_inner_texts()  # as text: its markup escaped
    await page.screenshot(path=shots(tmp_path) / "dashboard-batch.png", full_page=True)

    await page.goto(f"{dashboard}handlers")
    live = page.locator('tr[data-handler="dash.fail"] [data-field="live_workers"]')
    assert await live.inner_text() == "1"
    await page.screenshot(path=shots(tmp_path) / "dashboard-handlers.png")
    for name in ("batches", "batch", "handlers"):
        assert (shots(tmp_path) / f"dashboard-{name}.png").read_bytes()[:4] == b"\x89PNG"
    await client.cancel(running)
