"""`email.send` end to end: the real client, gRPC server, Redis, a worker subprocess
loading the handler by import path, and a real SMTP server (a process of its own) that
rejects some recipients."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import grpc
import pytest
from support.faults import wait_for_handler
from support.in_process_server import client_of, running_server
from support.processes import ServiceProcess, WorkerPool
from support.smtp import USER_UNKNOWN, SmtpServerProcess

from batchd.client import AsyncClient, BatchProgress, BatchState, ItemState
from batchd.server.app import BatchdServer

# These tests' own keys in the session's Redis: no other test's worker takes their jobs.
KEY_PREFIX = "email-e2e:"
RECIPIENTS = 5_000
REJECTED_EVERY = 100  # user-0, user-100, ...: 50 unknown users
CONNECTIONS = 8  # per worker process


@pytest.fixture
async def server(redis_url: str) -> AsyncIterator[BatchdServer]:
    async with running_server(redis_url, key_prefix=KEY_PREFIX) as running:
        yield running


@pytest.fixture
async def client(server: BatchdServer) -> AsyncIterator[AsyncClient]:
    async with client_of(server) as client:
        yield client


def address(i: int) -> str:
    return f"user-{i}@example.test"


REJECTED = {address(i) for i in range(0, RECIPIENTS, REJECTED_EVERY)}


@pytest.fixture
def smtp_process(tmp_path: Path) -> Iterator[SmtpServerProcess]:
    server = SmtpServerProcess(tmp_path / "smtp.jsonl", reject=REJECTED).start()
    yield server
    server.stop()


@pytest.fixture
def workers(
    redis_url: str, smtp_process: SmtpServerProcess, tmp_path: Path
) -> Iterator[Callable[..., ServiceProcess]]:
    env = {
        "BATCHD_KEY_PREFIX": KEY_PREFIX,
        "BATCHD_SMTP_URL": smtp_process.url,
        "BATCHD_SMTP_CONNECTIONS": str(CONNECTIONS),
        "BATCHD_EMAIL_SENDER_DOMAINS": "shop.test",
    }
    pool = WorkerPool(redis_url, tmp_path, env, concurrency=64)
    yield pool.start
    pool.stop()


def item(i: int) -> tuple[str, dict[str, object]]:
    return f"user-{i}", {
        "to": address(i),
        "from": "News <news@shop.test>",
        "subject": "{{ first_name }}, our winter sale",
        "text": "Hello {{ first_name }},\n\nEverything is 20% off until Sunday.\n",
        "html": "<p>Hello {{ first_name }},</p><p>Everything is 20% off until Sunday.</p>",
        "headers": {"List-Unsubscribe": f"<https://shop.test/unsubscribe/{i}>"},
        "vars": {"first_name": f"User {i}"},
    }


async def watch_to_end(client: AsyncClient, batch_id: str) -> BatchProgress:
    last = None
    async for progress in client.watch(batch_id, min_interval=0.2):
        last = progress
    assert last is not None
    return last


@pytest.mark.slow
async def test_a_newsletter_to_5000_recipients(
    client: AsyncClient,
    workers: Callable[..., ServiceProcess],
    smtp_process: SmtpServerProcess,
) -> None:
    rejected = REJECTED
    worker = workers()
    try:
        await wait_for_handler(client, "email.send")
    except TimeoutError:
        pytest.fail(f"the worker did not publish email.send:\n{worker.log_tail()}")

    started = time.monotonic()
    submitted = await client.upload(
        "email.send",
        (item(i) for i in range(RECIPIENTS)),
        options={"retry_policy": {"max_attempts": 3, "min_backoff": 0.05, "max_backoff": 0.2}},
    )
    batch_id = submitted.batch.batch_id
    final = await watch_to_end(client, batch_id)
    elapsed = time.monotonic() - started

    print(f"{RECIPIENTS} emails in {elapsed:.1f}s ({RECIPIENTS / elapsed:.0f}/s)")
    assert final.state == BatchState.COMPLETED, worker.log_tail()
    counts = final.counts
    assert (counts.succeeded, counts.failed) == (RECIPIENTS - len(rejected), len(rejected))
    assert counts.pending == counts.running == counts.claimed == counts.cancelled == 0

    outcomes = [outcome async for outcome in client.items(batch_id, page_size=1000)]
    assert len(outcomes) == RECIPIENTS
    failed = [o for o in outcomes if o.state == ItemState.FAILED]
    assert {f"{o.custom_id}@example.test" for o in failed} == rejected
    for outcome in failed:
        assert outcome.error is not None
        assert outcome.error.code == grpc.StatusCode.FAILED_PRECONDITION
        assert USER_UNKNOWN in outcome.error.message
        assert outcome.attempts == 1  # a 5xx is not retried

    # Every accepted recipient got the message exactly once, under its item's Message-ID.
    succeeded = {o.custom_id: o.output for o in outcomes if o.state == ItemState.SUCCEEDED}
    received = smtp_process.messages()
    per_id = Counter(message.message_id for message in received)
    assert len(received) == len(succeeded)
    assert max(per_id.values()) == 1
    for custom_id, output in succeeded.items():
        assert output is not None
        assert per_id[output["message_id"]] == 1
        assert output["accepted"] == [f"{custom_id}@example.test"]
    assert {r for message in received for r in message.recipients}.isdisjoint(rejected)
    # The worker kept to its pool: a few connections for 5,000 messages.
    assert 1 <= smtp_process.connections() <= CONNECTIONS
