"""The README's examples run as written against a real service: the CLI session of
"Using it" step by step, the Python example, the grpcurl bodies."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import signal
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from google.protobuf import json_format
from support.net import find_free_port
from support.polling import poll
from support.processes import ServiceProcess
from support.readme_session import BATCH_ID, read_session, sh_blocks_after

from batchd.client import AsyncClient, BatchdError
from batchd.server.app import BatchdServer
from batchd.v1 import batch_service_pb2, batch_service_pb2_grpc

README = Path(__file__).resolve().parents[2] / "README.md"


def python_example() -> str:
    section = README.read_text().split("### From Python", 1)[1]
    match = re.search(r"```python\n(.*?)```", section, re.DOTALL)
    assert match, "no python block under 'From Python'"
    return match.group(1)


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
    """The JSON a README grpcurl example sends to `method`: -d '...' or a heredoc."""
    text = README.read_text()
    inline = re.search(r"-d '(\{.*?\})' \S+ batchd\.v1\.BatchService/" + method, text, re.DOTALL)
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
SESSION: list[tuple[str, int, list[str] | str]] = [
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

TIMES = re.compile(r"\d{4}-\d\d-\d\d[ T]\d\d:\d\d:\d\d(\.\d+Z)?")


@pytest.fixture
def service(tmp_path: Path) -> Iterator[str]:
    """`./scripts/run` as a user starts it: batchd-service with its embedded Valkey (in a
    short private directory: a unix socket path has a length limit), on a free port."""
    data_dir = Path(tempfile.mkdtemp(prefix="batchd-readme-"))
    port = find_free_port()
    env = {
        "BATCHD_DATA_DIR": str(data_dir),
        "BATCHD_HOST": "127.0.0.1",
        "BATCHD_PORT": str(port),
        "BATCHD_IMAGE_OUTPUT_DIR": str(tmp_path / "images"),
    }
    process = ServiceProcess("batchd.server.service", env, tmp_path / "service.log").start()
    try:
        yield f"127.0.0.1:{port}"
        assert process.terminate() == 0, process.log_tail()
    finally:
        process.stop()
        shutil.rmtree(data_dir, ignore_errors=True)


async def _all_handlers_served(target: str) -> list[str] | None:
    try:
        async with AsyncClient(target) as client:
            served = [h.name for h in await client.handlers() if h.live_workers]
    except BatchdError:
        return None
    return served if len(served) == 6 else None


async def _listening(port: int) -> bool | None:
    try:
        _, writer = await asyncio.open_connection("127.0.0.1", port)
    except OSError:
        return None
    writer.close()
    await writer.wait_closed()
    return True


async def test_readme_cli_session_runs_as_shown(service: str, tmp_path: Path) -> None:
    (block,) = sh_blocks_after(README.read_text(), "## Using it")
    steps = read_session(block)
    commands = [step.command for step in steps]
    assert len(commands) == len(SESSION), commands
    for command, (start, _, _) in zip(commands, SESSION, strict=True):
        assert command.startswith(start), f"README: {command!r}, SESSION: {start!r}"
    await poll(lambda: _all_handlers_served(service), within=60)

    scratch = tmp_path / "scratch"  # what `cd "$(mktemp -d)"` gives the user
    scratch.mkdir()
    peer_port = find_free_port()
    env = dict(
        os.environ,
        PATH=os.pathsep.join([str(Path(sys.executable).parent), os.environ["PATH"]]),
        BATCHD_TARGET=service,
    )
    ids: dict[str, str] = {}  # the README's batch ids -> this run's
    background: list[asyncio.subprocess.Process] = []
    try:
        for step, (_, status, expected) in zip(steps, SESSION, strict=True):
            if step.command.startswith("cd "):
                continue
            command = step.command.replace("8000", str(peer_port))
            for shown, real in ids.items():
                command = command.replace(shown, real)
            if step.background:
                peer = await asyncio.create_subprocess_exec(
                    "bash", "-c", command, cwd=scratch, env=env, start_new_session=True
                )
                background.append(peer)
                await poll(lambda: _listening(peer_port))
                continue
            process = await asyncio.create_subprocess_exec(
                "bash", "-c", command, cwd=scratch, env=env,
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            )  # fmt: skip
            out_bytes, err_bytes = await asyncio.wait_for(process.communicate(), 60)
            out, err = out_bytes.decode(), err_bytes.decode()
            context = f"$ {command}\n{out}{err}"
            assert process.returncode == status, context
            shown = "\n".join(step.output)
            if step.output and BATCH_ID.fullmatch(step.output[0]):  # submit prints the id
                ids[step.output[0]] = out.splitlines()[0]
            for readme_id, real in ids.items():
                shown = shown.replace(readme_id, real)
            if expected == "exact":
                assert (
                    TIMES.sub("<time>", out + err).splitlines()
                    == TIMES.sub("<time>", shown).splitlines()
                ), context
                continue
            for key in expected:
                assert key in out + err, f"{key!r} not in:\n{context}"
                assert not step.output or key in shown, f"{key!r} not shown after {command}"
    finally:
        for peer in background:
            os.killpg(peer.pid, signal.SIGTERM)
            await peer.wait()
