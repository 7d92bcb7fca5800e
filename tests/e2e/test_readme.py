"""The README's Python example runs as written against a real service."""

from __future__ import annotations

import asyncio
import os
import re
import sys
from pathlib import Path

import grpc
from google.protobuf import json_format

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
