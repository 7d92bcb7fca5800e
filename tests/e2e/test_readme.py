"""The README's examples run as written against a real service: the CLI session of
"Using it" step by step, the Python example; and the bodies of docs/api.md's grpcurl
examples."""

from __future__ import annotations

import asyncio
import os
import re
import sys
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from google.protobuf import json_format
from support.net import find_free_port
from support.polling import poll
from support.readme_session import (
    DOCS,
    README,
    Expected,
    Service,
    Shell,
    all_handlers_served,
    listening,
    read_session,
    readme_service,
    run_session,
    sh_blocks_after,
)

from batchd.server.app import BatchdServer
from batchd.v1 import batch_service_pb2, batch_service_pb2_grpc


def python_example() -> str:
    section = README.read_text().split("### From Python", 1)[1]
    match = re.search(r"```python\n(.*?)```", section, re.DOTALL)
    assert match, "no python block under 'From Python'"
    return match.group(1)


@pytest.mark.slow
async def test_readme_python_example(server: BatchdServer, worker: None) -> None:
    env = dict(os.environ, BATCHD_TARGET=f"127.0.0.1:{server.port}")
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-c", python_example(), env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await process.communicate()
    assert process.returncode == 0, err.decode()
    lines = out.decode().splitlines()
    assert lines[-2].startswith("COMPLETED ItemCounts(pending=0, running=0, succeeded=5000")
    assert lines[-1] == "INVALID_ARGUMENT [('items[0].params.seconds', " + (
        "'params.seconds must be bigger than or equal to 0')]"
    )


def grpcurl_bodies(method: str) -> list[str]:
    """The JSON a grpcurl example of docs/api.md sends to `method`: -d '...' or a heredoc."""
    text = (DOCS / "api.md").read_text()
    # A body holds no single quote: the match cannot run on into another example.
    body = r"-d '(\{[^']*\})'\s+(?:\\\n\s*)?\S+ batchd\.v1\.BatchService/"
    inline = re.search(body + method, text)
    if inline:
        return [inline.group(1)]
    heredoc = re.search(method + r" <<'EOF'\n(.*?)\nEOF", text, re.DOTALL)
    assert heredoc, f"no grpcurl example for {method}"
    return heredoc.group(1).splitlines()


async def test_readme_grpcurl_bodies_are_accepted(server: BatchdServer, worker: None) -> None:
    # grpcurl turns JSON into messages with protobuf's JSON mapping, as json_format does.
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        stub = batch_service_pb2_grpc.BatchServiceStub(channel)
        (submit_json,) = grpcurl_bodies("SubmitBatch")
        request = json_format.Parse(submit_json, batch_service_pb2.SubmitBatchRequest())
        submitted = await stub.SubmitBatch(request)
        assert submitted.batch.total_items == 2
        messages = [
            json_format.Parse(line, batch_service_pb2.UploadBatchRequest())
            for line in grpcurl_bodies("UploadBatch")
        ]
        uploaded = await stub.UploadBatch(iter(messages))
        assert uploaded.batch.total_items == 3


# The "Using it" session, step by step: what each command (as the README writes it,
# matched by its start) must exit with, and what its output must hold, both as run and,
# where the README shows output, as shown. "exact": the output as shown, times aside.
SESSION: Expected = [
    ('cd "$(mktemp -d)"', 0, []),
    ("batchd handlers", 0, "exact"),
    ("python3 -c", 0, []),
    ("batchd submit sleep items.jsonl", 0, ["COMPLETED 2000/2000 (100.0%) succeeded=2000"]),
    (
        "batchd get",
        0,
        [
            "state       COMPLETED",
            "counts      succeeded=2000 failed=0 running=0 "
            "claimed=0 pending=0 cancelled=0 expired=0",
        ],
    ),
    ("batchd items", 0, ['0 user-0                   SUCCEEDED      1 {"slept":0.01}']),
    ("batchd items", 0, ["no items"]),
    ("python3 -c", 0, []),
    ("batchd submit sleep slow.jsonl --max-concurrent 5", 0, []),
    ("batchd pause", 0, ["PAUSED"]),
    ("batchd get", 0, ["state       PAUSED", "max_concurrent=5"]),
    ("batchd resume", 0, ["RUNNING"]),
    ("batchd update", 0, ["RUNNING: priority 10,", "max_concurrent 10"]),
    ("batchd list --state running", 0, ["RUNNING", "/600 sleep"]),
    ("batchd cancel", 0, ["CANCELLING"]),
    ("batchd watch", 1, ["CANCELLED 600/600 (100.0%)"]),
    ("python3 -m http.server 8000", 0, []),
    ("echo", 1, ["COMPLETED 1/1 (100.0%) succeeded=0 failed=1", "1 item failed: batchd items"]),
    ("batchd items", 0, ["report                   FAILED         1 NOT_FOUND: HTTP 404"]),
    ("echo 'quarterly figures' > report.txt", 0, []),
    ("batchd retry", 0, ["RUNNING: 1 item requeued", "COMPLETED 1/1 (100.0%) succeeded=1"]),
    ("batchd delete", 0, ["deleted"]),
    ("batchd get", 2, ["error: NOT_FOUND: batch"]),
    ("echo", 2, "exact"),
    ("python3 -c", 0, []),
    ("batchd submit noop big.jsonl", 2, "exact"),
]


@pytest.fixture
def service() -> Iterator[Service]:
    with readme_service() as running:
        yield running


@pytest.mark.slow
async def test_readme_cli_session_runs_as_shown(service: Service, tmp_path: Path) -> None:
    block = sh_blocks_after(README.read_text(), "## Using it")[0]  # then grpcurl's
    await poll(lambda: all_handlers_served(service.target), within=60)
    scratch = tmp_path / "scratch"  # what `cd "$(mktemp -d)"` gives the user
    scratch.mkdir()
    peer_port = find_free_port()
    async with Shell(scratch, {"BATCHD_TARGET": service.target}) as shell:
        shell.replacements["8000"] = str(peer_port)
        await run_session(shell, read_session(block), SESSION, lambda: listening(peer_port))


# "Results as one file": a finished batch exported in both orders.
RESULTS_SESSION: Expected = [
    ('cd "$(mktemp -d)"', 0, []),
    ("python3 -c", 0, []),
    ("batchd submit noop rows.jsonl", 0, []),
    ("batchd watch", 0, []),
    ("batchd results", 0, []),
    ("wc -l < results.jsonl", 0, "exact"),
    ("head -n 1 results.jsonl", 0, ['{"custom_id":"row-4999","index":0,"state":"SUCCEEDED"']),
    ("batchd results", 0, ['{"custom_id":"row-0000","index":4999,"state":"SUCCEEDED"']),
]


@pytest.mark.slow
async def test_readme_results_session_runs_as_shown(service: Service, tmp_path: Path) -> None:
    (block,) = sh_blocks_after(README.read_text(), "### Results as one file")
    await poll(lambda: all_handlers_served(service.target), within=60)
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    async with Shell(scratch, {"BATCHD_TARGET": service.target}) as shell:
        await run_session(shell, read_session(block), RESULTS_SESSION)


# "Schedules": a batch submitted to start a few seconds later waits QUEUED, then runs.
SCHEDULE_SESSION: Expected = [
    ("echo", 0, []),
    ("batchd submit sleep nightly.jsonl --start-at +3s", 0, []),
    ("batchd get", 0, ["state       QUEUED", "waiting     scheduled to start at ", "scheduled"]),
    ("batchd watch", 0, []),
    ("batchd get", 0, "exact"),
]


# "Batch events": a labelled batch's events read from the oldest, then resumed after the
# first one's cursor.
EVENTS_SESSION: Expected = [
    ("echo", 0, []),
    ("batchd submit noop invoices.jsonl --metadata team=billing", 0, []),
    ("batchd watch", 0, []),
    (
        "batchd events --from-oldest --label team=billing --limit 3",
        0,
        ['"type": "CREATED"', '"type": "STARTED"', '"type": "FINISHED"', '"state": "COMPLETED"'],
    ),
    ("batchd events --cursor", 0, "exact"),
]


# "Callbacks": a batch whose end is POSTed, signed, to the receiver the README writes; the
# service started with the settings the README's command line gives.
CALLBACK_SESSION: Expected = [
    ("export BATCHD_CALLBACK_SECRET=", 0, []),
    ("echo", 0, []),
    ("python3 examples/callback_receiver.py 8001", 0, "exact"),
]
RECEIVER = README.parent / "examples" / "callback_receiver.py"


def callback_service_env() -> dict[str, str]:
    """The BATCHD_* settings of the `./scripts/run` line the "Callbacks" section gives
    (the egress of the test's service is open to loopback already)."""
    section = README.read_text().split("### Callbacks\n", 1)[1]
    command = re.search(r"`(BATCHD_[^`]*) \./scripts/run`", section)
    assert command, "no ./scripts/run line under 'Callbacks'"
    env = dict(word.split("=", 1) for word in command.group(1).split())
    del env["BATCHD_EGRESS_ALLOW"]
    return env


@pytest.mark.slow
async def test_readme_callback_session_runs_as_shown(tmp_path: Path) -> None:
    (block,) = sh_blocks_after(README.read_text(), "### Callbacks")
    with readme_service(callback_service_env()) as service:
        await poll(lambda: all_handlers_served(service.target), within=60)
        async with Shell(tmp_path, {"BATCHD_TARGET": service.target}) as shell:
            shell.replacements["8001"] = str(find_free_port())
            shell.replacements["examples/callback_receiver.py"] = str(RECEIVER)
            await run_session(shell, read_session(block), CALLBACK_SESSION)


def test_callback_receiver_verifies_as_api_md_shows() -> None:
    """The README's receiver checks signatures with the very code docs/api.md gives."""
    section = (DOCS / "api.md").read_text().split("## Completion callbacks\n", 1)[1]
    documented = re.search(r"\n(def verify_batchd_signature\(.*?)```", section, re.DOTALL)
    assert documented, "no verify_batchd_signature under 'Completion callbacks'"
    assert documented.group(1).strip() in RECEIVER.read_text()


# "Blocks for bulk APIs": noop in blocks of 100, and a block refused for sleep.
BLOCKS_SESSION: Expected = [
    ("python3 -c", 0, []),
    ("batchd submit noop rows.jsonl --block-size 100 --watch", 0, ["COMPLETED 20000/20000"]),
    ("batchd get", 0, ["succeeded=20000 failed=0", "block_size=100"]),
    ("batchd submit sleep rows.jsonl --block-size 100", 2, "exact"),
]


@pytest.mark.slow
@pytest.mark.parametrize(
    ("heading", "expected"),
    [
        ("### Schedules", SCHEDULE_SESSION),
        ("### Batch events", EVENTS_SESSION),
        ("### Blocks for bulk APIs", BLOCKS_SESSION),
    ],
    ids=["schedules", "events", "blocks"],
)
async def test_readme_section_session_runs_as_shown(
    service: Service, tmp_path: Path, heading: str, expected: Expected
) -> None:
    """A section whose one session needs nothing but the service."""
    (block,) = sh_blocks_after(README.read_text(), heading)
    await poll(lambda: all_handlers_served(service.target), within=60)
    async with Shell(tmp_path, {"BATCHD_TARGET": service.target}) as shell:
        await run_session(shell, read_session(block), expected)
