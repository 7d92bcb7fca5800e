"""`batchd` as a real process: stdin through a pipe, Ctrl-C in the middle of an upload."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys

from client.client_fakes import FakeBatchService, FakeServer

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
