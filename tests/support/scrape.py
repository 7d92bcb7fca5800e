"""A server and a worker with their /metrics listeners on, and a /metrics page scraped
over HTTP and parsed as Prometheus parses it."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass

import aiohttp
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from batchd.core.config import Settings
from batchd.server.app import BatchdServer, start_server
from batchd.worker.arq_worker import BatchdWorker
from support.in_process_worker import running_worker


@dataclass
class Scrape:
    families: list[Metric]

    @property
    def types(self) -> dict[str, str]:
        """Family name (counters without `_total`) to type: counter, gauge, histogram..."""
        return {f.name: f.type for f in self.families}

    @property
    def samples(self) -> list[Sample]:
        return [s for f in self.families for s in f.samples]

    def value(self, name: str, **labels: str) -> float:
        """The sum of the samples named `name` whose labels include `labels`."""
        found = [
            s.value
            for s in self.samples
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
        ]
        return sum(found)


async def scrape(port: int) -> Scrape:
    """GET http://127.0.0.1:<port>/metrics, checked for Prometheus's text format."""
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"http://127.0.0.1:{port}/metrics") as response,
    ):
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/plain; version=")
        text = await response.text()
    return Scrape(list(text_string_to_metric_families(text)))


@contextlib.asynccontextmanager
async def running(settings: Settings) -> AsyncIterator[tuple[BatchdServer, BatchdWorker]]:
    """A server and a worker in this process, each with a /metrics listener on a free
    port (`server.web.port`, `worker.metrics_port`)."""
    server = await start_server(settings, port=0, metrics_port=0)
    try:
        async with running_worker(settings, poll_delay=0.02, metrics_port=0) as worker:
            yield server, worker
    finally:
        await server.stop(grace=0)
