"""The app over HTTP, against a real batchd: uploads, status, server-sent progress,
results, and batchd's errors as HTTP statuses."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import psutil
from conftest import App, running_app, text_upper

from batchd.testing import serve_handlers

CSV = {"Content-Type": "text/csv"}
JSONL = {"Content-Type": "application/x-ndjson"}


async def events(http: httpx.AsyncClient, batch_id: str) -> list[dict[str, Any]]:
    """Every snapshot the event stream sends, until it ends."""
    snapshots = []
    async with http.stream("GET", f"/batches/{batch_id}/events") as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        async for line in response.aiter_lines():
            if line.startswith("data: "):
                snapshots.append(json.loads(line.removeprefix("data: ")))
            else:
                assert line == "", line  # one data line per event, then a blank line
    return snapshots


async def results(http: httpx.AsyncClient, batch_id: str) -> list[dict[str, Any]]:
    response = await http.get(f"/batches/{batch_id}/results")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/x-ndjson"
    return [json.loads(line) for line in response.text.splitlines()]


async def test_a_csv_upload_runs_to_the_end_and_its_results_download(
    http: httpx.AsyncClient,
) -> None:
    rows = [f"w{i},word {i},{1 + i % 3}" for i in range(300)]
    body = "custom_id,text,times\n" + "\n".join(rows) + "\n"
    response = await http.post("/batches?handler=text.upper", content=body, headers=CSV)
    assert response.status_code == 201, response.text
    batch = response.json()
    assert (batch["handler"], batch["total_items"]) == ("text.upper", 300)
    assert response.headers["location"].endswith(f"/batches/{batch['batch_id']}")

    snapshots = await events(http, batch["batch_id"])
    # The stream ends with the terminal snapshot, and only then.
    assert [s["terminal"] for s in snapshots] == [False] * (len(snapshots) - 1) + [True]
    last = snapshots[-1]
    assert (last["state"], last["counts"]["succeeded"], last["fraction"]) == ("COMPLETED", 300, 1)

    lines = await results(http, batch["batch_id"])
    assert [line["custom_id"] for line in lines] == [f"w{i}" for i in range(300)]
    for i, line in enumerate(lines):
        assert line["state"] == "SUCCEEDED", line
        assert line["output"] == {"upper": f"WORD {i}" * (1 + i % 3)}, line

    status = (await http.get(f"/batches/{batch['batch_id']}")).json()
    assert (status["state"], status["counts"]["succeeded"]) == ("COMPLETED", 300)


async def test_a_jsonl_upload_reports_each_items_outcome(http: httpx.AsyncClient) -> None:
    texts = ["ada", "boom", "grace", "boom", "alan"]
    body = "".join(
        json.dumps({"custom_id": f"p{i}", "params": {"text": t}}) + "\n"
        for i, t in enumerate(texts)
    )
    response = await http.post("/batches?handler=text.upper", content=body, headers=JSONL)
    assert response.status_code == 201, response.text
    batch_id = response.json()["batch_id"]

    last = (await events(http, batch_id))[-1]
    assert last["state"] == "COMPLETED"  # a batch whose items ran is complete, failures too
    assert (last["counts"]["succeeded"], last["counts"]["failed"]) == (3, 2)
    lines = await results(http, batch_id)
    assert [line["custom_id"] for line in lines] == ["p0", "p1", "p2", "p3", "p4"]
    for text, line in zip(texts, lines, strict=True):
        if text == "boom":
            assert line["state"] == "FAILED"
            assert "boom, as asked" in line["error"]["message"]
        else:
            assert (line["state"], line["output"]) == ("SUCCEEDED", {"upper": text.upper()})


async def test_a_row_batchd_refuses_is_a_422_naming_its_line_and_field(
    http: httpx.AsyncClient,
) -> None:
    # Line 3 (items[1]) has a number where the handler's schema wants a string.
    body = "custom_id,text\na,fine\nb,42\nc,fine\n"
    response = await http.post("/batches?handler=text.upper", content=body, headers=CSV)
    assert response.status_code == 422, response.text
    (violation,) = response.json()["violations"]
    assert violation["line"] == 3
    assert violation["field"].startswith("items[1].params"), violation
    assert "string" in violation["description"]


async def test_a_line_that_is_no_item_is_a_422_naming_it(http: httpx.AsyncClient) -> None:
    body = '{"custom_id": "a", "params": {"text": "x"}}\n{"custom_id": "b", "params": \n'
    response = await http.post("/batches?handler=text.upper", content=body, headers=JSONL)
    assert response.status_code == 422
    (violation,) = response.json()["violations"]
    assert violation["line"] == 2
    assert violation["description"].startswith("not valid JSON")

    body = "custom_id,text\na,x\nb\n"
    response = await http.post("/batches?handler=text.upper", content=body, headers=CSV)
    assert response.status_code == 422
    assert response.json()["violations"] == [
        {"field": "", "line": 3, "description": "1 cells for 2 columns"}
    ]


async def test_an_unknown_handler_or_media_type_is_refused(http: httpx.AsyncClient) -> None:
    response = await http.post(
        "/batches?handler=no.such", content='{"params": {}}\n', headers=JSONL
    )
    assert response.status_code == 422
    assert "no.such" in response.text
    response = await http.post(
        "/batches?handler=noop", content="{}", headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 415


async def test_an_unknown_batch_is_a_404_everywhere(http: httpx.AsyncClient) -> None:
    for path in ["", "/events", "/results"]:
        response = await http.get(f"/batches/0123456789abcdef0123456789abcdef{path}")
        assert response.status_code == 404, (path, response.text)
        assert "detail" in response.json()


async def test_results_of_an_unfinished_batch_are_a_409(http: httpx.AsyncClient) -> None:
    body = json.dumps({"custom_id": "nap", "params": {"seconds": 30}}) + "\n"
    response = await http.post("/batches?handler=sleep", content=body, headers=JSONL)
    assert response.status_code == 201
    response = await http.get(f"/batches/{response.json()['batch_id']}/results")
    assert response.status_code == 409


async def test_a_large_upload_streams_through_the_app(app: App, http: httpx.AsyncClient) -> None:
    """50,000 lines (about 20 MB): the app's memory grows by far less than the body, so it
    never holds the body, nor its items, whole."""
    process = psutil.Process(app.process.pid)
    warm_up = await http.post("/batches?handler=noop", content='{"params": {}}\n', headers=JSONL)
    assert warm_up.status_code == 201
    baseline = process.memory_info().rss
    peak = baseline
    padding = "x" * 380

    async def body() -> AsyncIterator[bytes]:
        nonlocal peak
        for start in range(0, 50_000, 1000):
            lines = (
                json.dumps({"custom_id": f"r{i}", "params": {"pad": padding}}) + "\n"
                for i in range(start, start + 1000)
            )
            yield "".join(lines).encode()
            peak = max(peak, process.memory_info().rss)

    response = await http.post("/batches?handler=noop", content=body(), headers=JSONL)
    assert response.status_code == 201, response.text
    assert response.json()["total_items"] == 50_000
    growth = peak - baseline
    assert growth < 8 << 20, f"the app grew by {growth / (1 << 20):.1f} MiB"


async def test_a_batch_over_the_services_limits_is_a_429_with_retry_after() -> None:
    limits = {"max_pending_items": 2}
    async with (
        serve_handlers(text_upper, settings_overrides=limits) as small,
        running_app(small.target) as app,
        httpx.AsyncClient(base_url=app.url, trust_env=False) as http,
    ):
        body = "text\na\nb\nc\n"
        response = await http.post("/batches?handler=text.upper", content=body, headers=CSV)
    assert response.status_code == 429, response.text
    assert int(response.headers["retry-after"]) >= 1
    assert response.json()["violations"][0]["field"] == "max_pending_items"
