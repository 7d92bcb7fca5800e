"""Prometheus metrics through real listeners: a batch run by a real server and worker,
then both /metrics scraped over HTTP and parsed as Prometheus parses them."""

from __future__ import annotations

import uuid
from dataclasses import replace
from functools import partial

import pytest
from support.polling import poll
from support.scrape import Scrape, running, scrape

from batchd.client import AsyncClient, BatchdError, ItemState
from batchd.core.config import SettingError, Settings
from batchd.server.app import start_server

pytestmark = pytest.mark.slow


@pytest.fixture
def settings(redis_url: str) -> Settings:
    return Settings(
        redis_url=redis_url,
        host="127.0.0.1",
        key_prefix=f"metrics-{uuid.uuid4().hex[:8]}:",
        worker_concurrency=20,
        outcome_flush_interval=0.02,
        watch_min_interval=0.01,
        watch_min_heartbeat=0.01,
    )


async def test_a_batch_moves_the_server_and_worker_metrics(settings: Settings) -> None:
    async with running(settings) as (server, worker):
        assert server.web is not None
        assert worker.metrics_port is not None
        routes = {resource.canonical for resource in server.web.app.router.resources()}
        assert "/metrics" in routes
        async with AsyncClient(f"127.0.0.1:{server.port}") as client:
            ok = await client.submit("noop", [(f"i{n}", {}) for n in range(50)])
            bad = await client.submit("sleep", [("x", {"seconds": 0, "fail": True})])
            with pytest.raises(BatchdError):
                await client.get("0" * 32)  # NOT_FOUND
            for batch_id in (ok.batch.batch_id, bad.batch.batch_id):
                await poll(partial(_finished, client, batch_id))
            failed = [i async for i in client.items(bad.batch.batch_id)]
            assert failed[0].state is ItemState.FAILED

        async def recorded() -> Scrape | None:
            found = await scrape(worker.metrics_port or 0)
            done = found.value("batchd_worker_items_finished_total", handler="noop")
            return found if done == 50 else None

        work = await poll(recorded)
        assert work.types["batchd_worker_items_finished"] == "counter"
        assert work.types["batchd_worker_attempt_duration_seconds"] == "histogram"
        assert work.types["batchd_worker_items_in_flight"] == "gauge"
        assert work.value("batchd_worker_attempt_duration_seconds_count", handler="noop") == 50
        bucket = work.value(
            "batchd_worker_attempt_duration_seconds_bucket", handler="noop", le="+Inf"
        )
        assert bucket == 50
        assert work.value("batchd_worker_items_finished_total", handler="sleep", outcome="failed")
        assert (
            work.value("batchd_worker_items_dead_lettered_total", handler="sleep", code="ABORTED")
            == 1
        )
        assert work.value("batchd_worker_chunk_claims_total", handler="noop") >= 1
        assert work.value("batchd_worker_chunk_runs_total", handler="noop", end="done") >= 1
        assert work.value("batchd_worker_concurrency") == 20
        assert work.value("batchd_worker_items_in_flight") == 0

        served = await scrape(server.web.port)
        assert served.types["batchd_grpc_server_handled"] == "counter"
        assert served.types["batchd_grpc_server_handling_seconds"] == "histogram"
        calls = "batchd_grpc_server_handled_total"
        assert served.value(calls, method="SubmitBatch", code="OK") == 2
        assert served.value(calls, method="GetBatch", code="NOT_FOUND") == 1
        assert (
            served.value(
                "batchd_grpc_server_handling_seconds_count",
                service="batchd.v1.BatchService",
                method="SubmitBatch",
            )
            == 2
        )
        assert served.value("batchd_server_items_submitted_total", handler="noop") == 50
        assert served.value("batchd_server_submitted_bytes_total", handler="noop") > 0
        # Collected from Redis at scrape time.
        assert served.types["batchd_handler_workers_live"] == "gauge"
        assert served.value("batchd_handler_workers_live", handler="noop") == 1
        assert served.value("batchd_workers_live") == 1
        assert served.value("batchd_chunk_jobs_queued", handler="noop") == 0
        assert served.value("batchd_batches_kept") == 2
        assert served.value("batchd_batches_open") == 0
        assert served.value("batchd_census_complete") == 1


async def test_open_batches_are_counted_by_state_and_priority(settings: Settings) -> None:
    async with running(settings):
        pass  # the worker published its handlers and is gone: batches now wait
    server = await start_server(settings, port=0, metrics_port=0)
    try:
        assert server.web is not None
        async with AsyncClient(f"127.0.0.1:{server.port}") as client:
            result = await client.submit(
                "noop", [("a", {}), ("b", {})], options={"priority": 5, "completion_window": 0}
            )
            await client.pause(result.batch.batch_id)
            await client.submit("noop", [("c", {})])
        served = await scrape(server.web.port)
        assert served.value("batchd_batches_open") == 2
        assert served.value("batchd_batches_by_state", state="paused") == 1
        assert served.value("batchd_batches_by_state", state="queued") == 1
        assert served.value("batchd_pending_items_by_priority", priority="5") == 2
        assert served.value("batchd_pending_items_by_priority", priority="0") == 1
    finally:
        await server.stop(grace=0)


async def test_a_busy_metrics_port_is_a_setting_error(settings: Settings) -> None:
    async with running(settings) as (server, _):
        assert server.web is not None
        taken = replace(settings, metrics_port=server.web.port)
        with pytest.raises(SettingError, match="--metrics-port"):
            await start_server(taken, port=0)


async def _finished(client: AsyncClient, batch_id: str) -> bool | None:
    batch = await client.get(batch_id)
    return True if batch.state.is_terminal else None
