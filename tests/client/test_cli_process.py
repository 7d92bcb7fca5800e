"""`batchd` as a real process: stdin through a pipe, Ctrl-C in the middle of an upload,
a watch whose server (a real one, a process too) goes away and comes back."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import pty
import signal
import struct
import sys
import termios
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from client.client_fakes import FakeBatchService, FakeServer
from support import processes
from support.faults import wait_for_handler
from support.net import find_free_port

from batchd.client import AsyncClient, BatchState

GUARD = 20.0
# SIGINT as on a terminal, even if the test run itself ignores it (a background job).
RUN_BATCHD = (
    "import signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); "
    "from batchd.cli.main import main; sys.exit(main(sys.argv[1:]))"
)


async def start(server: FakeServer, *args: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        RUN_BATCHD,
        "--target",
        server.target,
        *args,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )


async def test_submit_from_a_pipe(service: FakeBatchService, server: FakeServer) -> None:
    process = await start(server, "submit", "noop", "--batch-id", "piped")
    lines = b"".join(b'{"custom_id": "i%d", "params": {"n": %d}}\n' % (i, i) for i in range(3000))
    out, err = await asyncio.wait_for(process.communicate(lines), GUARD)
    assert (process.returncode, out, err) == (0, b"piped\n", b"")
    assert len(service.uploads[-1].items) == 3000


async def test_start_early_from_a_pipe_is_a_usage_error(
    service: FakeBatchService, server: FakeServer
) -> None:
    uploads = len(service.uploads)
    process = await start(server, "submit", "noop", "--start-early")
    out, err = await asyncio.wait_for(process.communicate(b'{"custom_id": "a"}\n'), GUARD)
    assert (process.returncode, out) == (2, b"")
    assert b"--start-early needs FILE to be a file" in err
    assert len(service.uploads) == uploads


async def test_ctrl_c_mid_upload_exits_130_quietly(
    service: FakeBatchService, server: FakeServer
) -> None:
    process = await start(server, "submit", "noop", "--items-per-message", "10")
    stdin = process.stdin
    assert stdin is not None

    async def feed() -> None:
        # Lines keep coming, so the CLI is busy reading stdin when the signal lands.
        with contextlib.suppress(ConnectionError):
            for i in range(0, 10_000_000, 1000):
                stdin.write(b"".join(b'{"custom_id": "x%d"}\n' % (i + j) for j in range(1000)))
                await stdin.drain()

    feeding = asyncio.create_task(feed())
    await asyncio.wait_for(service.items_arrived.wait(), GUARD)
    process.send_signal(signal.SIGINT)
    await asyncio.wait_for(process.wait(), GUARD)
    feeding.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await feeding
    assert process.stdout is not None
    assert process.stderr is not None
    out, err = await process.stdout.read(), await process.stderr.read()
    assert process.returncode == 130
    assert out == b""
    # No traceback, and no fatal error from a reader thread at interpreter exit.
    assert err == b"interrupted\n"


class RealService:
    """A batchd server and a worker as processes over the session's Valkey, on a key
    prefix of their own; the server can be stopped and started again on its port."""

    def __init__(self, redis_url: str, log_dir: Path) -> None:
        self.port = find_free_port()
        self.target = f"127.0.0.1:{self.port}"
        self.env = {
            "BATCHD_REDIS_URL": redis_url,
            "BATCHD_PORT": str(self.port),
            "BATCHD_HOST": "127.0.0.1",
            "BATCHD_KEY_PREFIX": f"cli-{uuid.uuid4().hex[:8]}:",
        }
        self.log_dir = log_dir
        self.server = processes.server(self.env, log_dir / "server.log").start()
        self.worker = processes.worker(
            {**self.env, "BATCHD_WORKER_CONCURRENCY": "4"}, log_dir / "worker.log"
        ).start()

    def restart_server(self) -> None:
        self.server = processes.server(self.env, self.log_dir / "server.log").start()

    def stop(self) -> None:
        self.server.stop()
        self.worker.stop()


@pytest.fixture
async def real_service(redis_url: str, tmp_path: Path) -> AsyncIterator[RealService]:
    running = RealService(redis_url, tmp_path)
    try:
        async with AsyncClient(running.target) as client:
            await wait_for_handler(client, "sleep")
        yield running
    finally:
        running.stop()


async def submit_sleeps(target: str, count: int, **options: object) -> str:
    async with AsyncClient(target) as client:
        items = [(f"s{i}", {"seconds": 0.05}) for i in range(count)]
        submitted = await client.submit("sleep", items, options={"chunk_size": 10, **options})
    return submitted.batch.batch_id


async def watch_process(target: str, batch_id: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        RUN_BATCHD,
        "--target",
        target,
        "watch",
        batch_id,
        "--interval",
        "0.05",
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )


async def line_of(stream: asyncio.StreamReader | None, text: bytes) -> bytes:
    """The next line of `stream` containing `text` (skipping the others)."""
    assert stream is not None
    async with asyncio.timeout(GUARD):
        while True:
            line = await stream.readline()
            assert line, f"{text!r} never came"
            if text in line:
                return line


@pytest.mark.chaos
@pytest.mark.slow
async def test_watch_says_reconnecting_at_once_and_carries_on_after_a_restart(
    real_service: RealService,
) -> None:
    batch_id = await submit_sleeps(real_service.target, 200, max_concurrent=4)
    watch = await watch_process(real_service.target, batch_id)
    await line_of(watch.stdout, b" RUNNING ")
    real_service.server.kill()
    lost = time.monotonic()
    line = await line_of(watch.stderr, b"reconnecting")
    assert time.monotonic() - lost < 1.0
    assert f" {batch_id} reconnecting… (UNAVAILABLE: ".encode() in line
    real_service.restart_server()
    await line_of(watch.stdout, b" COMPLETED 200/200 (100.0%) succeeded=200 ")
    assert await asyncio.wait_for(watch.wait(), GUARD) == 0
    assert watch.stderr is not None
    assert b"reconnecting" not in await watch.stderr.read()  # one line per loss


@pytest.mark.chaos
@pytest.mark.slow
async def test_ctrl_c_while_reconnecting_says_the_batch_goes_on(
    real_service: RealService,
) -> None:
    batch_id = await submit_sleeps(real_service.target, 400, max_concurrent=2)
    watch = await watch_process(real_service.target, batch_id)
    await line_of(watch.stdout, b" RUNNING ")
    real_service.server.kill()
    await line_of(watch.stderr, b"reconnecting")
    watch.send_signal(signal.SIGINT)
    assert await asyncio.wait_for(watch.wait(), GUARD) == 130
    assert watch.stderr is not None
    err = await watch.stderr.read()
    assert (
        err
        == (
            f"interrupted: batch {batch_id} goes on; to follow it again: batchd watch {batch_id}\n"
        ).encode()
    )
    real_service.restart_server()
    async with AsyncClient(real_service.target) as client:
        await wait_for_handler(client, "sleep")
        batch = await client.get(batch_id)
    assert batch.state == BatchState.RUNNING


@pytest.mark.chaos
@pytest.mark.slow
async def test_on_a_terminal_the_bar_says_reconnecting_at_once(
    real_service: RealService,
) -> None:
    batch_id = await submit_sleeps(real_service.target, 400, max_concurrent=2)
    controller, terminal = pty.openpty()
    fcntl.ioctl(terminal, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 120, 0, 0))
    watch = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        RUN_BATCHD,
        "--target",
        real_service.target,
        "watch",
        batch_id,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=terminal,
        stderr=asyncio.subprocess.PIPE,
    )
    os.close(terminal)
    screen = bytearray()

    async def shown(text: bytes) -> None:
        async with asyncio.timeout(GUARD):
            while text not in screen:
                screen.extend(await asyncio.to_thread(os.read, controller, 65536))

    try:
        await shown(b"items/s  ETA ")
        real_service.server.kill()
        lost = time.monotonic()
        await shown(b"reconnecting\xe2\x80\xa6")
        assert time.monotonic() - lost < 1.0
        watch.send_signal(signal.SIGINT)
        assert await asyncio.wait_for(watch.wait(), GUARD) == 130
    finally:
        if watch.returncode is None:
            watch.kill()
            await watch.wait()
        os.close(controller)
    assert watch.stderr is not None
    assert b"goes on; to follow it again: batchd watch " in await watch.stderr.read()
