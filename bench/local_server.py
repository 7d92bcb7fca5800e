"""A local server for a scenario's handler to talk to (HTTP, SMTP…), in its own process:
the scenario's module run with `--serve PORT`, so that its CPU is not the benchmark's."""

from __future__ import annotations

import contextlib
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass

from batchd.core.embedded_redis import free_port


@dataclass(frozen=True)
class LocalServer:
    port: int
    pid: int  # for its CPU: what the downstream's share of the cores was


@contextlib.contextmanager
def local_server(module: str, start_timeout: float = 15) -> Iterator[LocalServer]:
    """`python -m <module> --serve PORT` on a free port, once it accepts connections.
    Terminated (SIGTERM) at the end."""
    port = free_port()
    process = subprocess.Popen([sys.executable, "-m", module, "--serve", str(port)])
    try:
        deadline = time.monotonic() + start_timeout
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline or process.poll() is not None:
                    raise RuntimeError(f"the {module} server did not start") from None
                time.sleep(0.05)
        yield LocalServer(port, process.pid)
    finally:
        process.terminate()
        process.wait(30)
