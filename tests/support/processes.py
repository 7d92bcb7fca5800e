"""batchd processes for system tests: workers and servers as real subprocesses that a
test can SIGKILL, SIGTERM and restart."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

SUPPORT_DIR = Path(__file__).resolve().parent


class ServiceProcess:
    """One `python -m <module>` batchd process configured through BATCHD_* variables."""

    def __init__(self, module: str, env: Mapping[str, str], log_path: Path) -> None:
        self.module = module
        self.env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join([str(SUPPORT_DIR), os.environ.get("PYTHONPATH", "")]),
            "BATCHD_LOG_FORMAT": "json",
            # Tests follow batches closely: WatchProgress floors far below the service's.
            "BATCHD_WATCH_MIN_INTERVAL": "0.01",
            "BATCHD_WATCH_MIN_HEARTBEAT": "0.01",
            # Many servers run at once: no /metrics listener unless a test asks.
            "BATCHD_METRICS_PORT": "0",
            **env,
        }
        self.log_path = log_path
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def start(self) -> ServiceProcess:
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", self.module],
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        return self

    def kill(self) -> int:
        """SIGKILL, as a crash would; returns the exit status."""
        assert self.process is not None
        self.process.kill()
        return self.process.wait(30)

    def terminate(self, timeout: float = 60) -> int:
        """SIGTERM, as an orchestrator would; returns the exit status."""
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout)

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(30)

    def events(self) -> list[dict[str, Any]]:
        """The JSON log lines written so far, parsed."""
        found = []
        for line in self.log_path.read_text(errors="replace").splitlines():
            if line.startswith("{"):
                try:
                    found.append(json.loads(line))
                except ValueError:
                    continue  # a line cut short by a kill
        return found

    def log_tail(self, lines: int = 30) -> str:
        if not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])


def worker(env: Mapping[str, str], log_path: Path) -> ServiceProcess:
    return ServiceProcess("batchd.worker.main", env, log_path)


def server(env: Mapping[str, str], log_path: Path) -> ServiceProcess:
    return ServiceProcess("batchd.server.main", env, log_path)


class WorkerPool:
    """Worker subprocesses against one Redis, each logging to its own file in `log_dir`;
    `start` is what fixtures hand to tests, `stop` what they call at the end."""

    def __init__(
        self, redis_url: str, log_dir: Path, env: Mapping[str, str], *, concurrency: int = 10
    ) -> None:
        self.env = {"BATCHD_REDIS_URL": redis_url, **env}
        self.log_dir = log_dir
        self.concurrency = concurrency
        self.started: list[ServiceProcess] = []

    def start(self, concurrency: int | None = None) -> ServiceProcess:
        env = {
            **self.env,
            "BATCHD_WORKER_CONCURRENCY": str(concurrency or self.concurrency),
        }
        log_path = self.log_dir / f"worker-{len(self.started)}.log"
        process = worker(env, log_path).start()
        self.started.append(process)
        return process

    def stop(self) -> None:
        for process in self.started:
            process.stop()
