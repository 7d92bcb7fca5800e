"""Template bombs through a real worker: each fails its item with the limit it hit, and
an unrelated batch served by the same worker completes meanwhile. The unrelated batch's
latency before and during the bombs is printed (`-s`), not asserted: figures on a
shared machine are for reading, not for failing a build."""

from __future__ import annotations

import asyncio
import statistics
import time

import grpc
import pytest
from support.smtp import SmtpServer

from batchd.client import BatchState, ItemState
from batchd.testing import LocalService, serve_handlers

BOMBS = {
    "loops": "{% for a in range(100000) %}{% for b in range(100000) %}x{% endfor %}{% endfor %}",
    "string": "{{ 'x' * 100000000 }}",
    "power": "{{ 9 ** 2000000 }}",
    # Within the loop and size limits, but each iteration costs: ends at the time limit.
    "slow": "{% for a in range(10000) %}{{ ('x ' * 400000) | wordcount }}{% endfor %}",
}
EXPECTED = {
    "loops": "text template: more than 10000 loop iterations (BATCHD_EMAIL_RENDER_MAX_LOOP)",
    "string": "text template: a string or list longer than 1048576 "
    "(BATCHD_EMAIL_RENDER_MAX_OUTPUT)",
    "power": f"text template: an integer beyond {10**18} (BATCHD_EMAIL_RENDER_MAX_INT)",
    "slow": "text template: took longer than 1 s (BATCHD_EMAIL_RENDER_TIMEOUT)",
}
COPIES = 4  # of each bomb: the slow ones keep both render threads busy for 2 s


def email(custom_id: str, text: str) -> tuple[str, dict[str, object]]:
    return custom_id, {
        "to": "ann@example.test",
        "from": "shop@example.test",
        "subject": "Hi",
        "text": text,
    }


async def noop_latency(service: LocalService) -> float:
    """Seconds from submitting a one-item noop batch to seeing it finished."""
    started = time.monotonic()
    run = await service.run_batch("noop", [("n", {})])
    assert run.batch.state == BatchState.COMPLETED
    return time.monotonic() - started


@pytest.mark.slow
async def test_bombs_fail_alone_and_other_batches_go_on(
    redis_url: str, smtp_server: SmtpServer
) -> None:
    overrides = {
        "redis_url": redis_url,
        "smtp_url": smtp_server.url,
        "email_sender_domains": "example.test",
        "worker_concurrency": 32,
    }
    async with serve_handlers(settings_overrides=overrides) as service:
        before = [await noop_latency(service) for _ in range(5)]
        items = [email("good", "Hello")]
        items += [
            email(f"{name}-{i}", source) for name, source in BOMBS.items() for i in range(COPIES)
        ]
        bombs = asyncio.create_task(
            service.run_batch(
                "email.send", items, options={"chunk_size": 4, "retry_policy": {"max_attempts": 1}}
            )
        )
        during: list[float] = []
        while not bombs.done() or not during:
            during.append(await noop_latency(service))
        run = await bombs

    print(
        f"noop batch latency, median of {len(before)} before: "
        f"{statistics.median(before) * 1000:.0f} ms; of {len(during)} during the bombs: "
        f"{statistics.median(during) * 1000:.0f} ms (max {max(during) * 1000:.0f} ms)"
    )
    assert run.items["good"].state == ItemState.SUCCEEDED
    for name in BOMBS:
        for i in range(COPIES):
            outcome = run.items[f"{name}-{i}"]
            assert outcome.state == ItemState.FAILED
            assert outcome.error is not None
            assert outcome.error.code == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert outcome.error.message == EXPECTED[name]
    assert len(smtp_server.handler.messages) == 1
