"""`batchd-service` as `./scripts/run` runs it, in a session of its own like a terminal's
foreground job: Ctrl-C (SIGINT to the whole process group) mid-batch and a restart lose
and repeat no email; SIGTERM stops it as cleanly; a worker started with the address the
service prints serves batches beside it, with a handler and settings of its own; the
embedded Valkey refuses a client without the password kept in its data directory."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from support.faults import wait_for_handler
from support.net import find_free_port
from support.polling import poll
from support.processes import SUPPORT_DIR
from support.smtp import SmtpServerProcess

from batchd.client import AsyncClient, BatchState, ItemState

ITEMS = 3000
CONCURRENCY = 10
# What the service's log must never show on a clean stop.
NOT_CLEAN = ("Task was destroyed", "never awaited", "Traceback", "redis_unavailable")


def _environment(**values: str) -> dict[str, str]:
    """This process's environment without batchd's settings, plus `values`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("BATCHD_") and k != "REDIS_URL"}
    env["PYTHONPATH"] = os.pathsep.join([str(SUPPORT_DIR), os.environ.get("PYTHONPATH", "")])
    env["BATCHD_METRICS_PORT"] = "0"  # many services at once: no listener on the default
    return {**env, "BATCHD_LOG_FORMAT": "json", **values}


class Service:
    """`python -m batchd.server.service` in a new session (its pid is its process group)."""

    def __init__(self, data_dir: Path, log_path: Path, **env: str) -> None:
        self.port = find_free_port()
        self.env = _environment(
            BATCHD_DATA_DIR=str(data_dir),
            BATCHD_HOST="127.0.0.1",
            BATCHD_PORT=str(self.port),
            **env,
        )
        self.log_path = log_path
        self.process: subprocess.Popen[bytes] | None = None
        self._log_start = 0

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> Service:
        self._log_start = self.log_path.stat().st_size if self.log_path.exists() else 0
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "batchd.server.service"],
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        return self

    def stop_with(self, how: str) -> tuple[int, float]:
        """Ctrl-C ("SIGINT" to the group) or "SIGTERM" to the service alone; returns the
        exit status and the seconds it took."""
        assert self.process is not None
        started = time.monotonic()
        if how == "SIGINT":
            os.killpg(self.process.pid, signal.SIGINT)
        else:
            self.process.send_signal(signal.SIGTERM)
        code = self.process.wait(60)
        return code, time.monotonic() - started

    def output(self) -> str:
        """What this run wrote (stdout and stderr), since its start."""
        with self.log_path.open("rb") as log:
            log.seek(self._log_start)
            return log.read().decode(errors="replace")

    def events(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.output().splitlines() if line.startswith("{")]

    def printed_url(self) -> str | None:
        found = re.search(r"^batchd: embedded Redis at (\S+) ", self.output(), re.MULTILINE)
        return found.group(1) if found else None

    def printed_worker_command(self) -> str | None:
        found = re.search(
            r"^batchd: embedded Redis at .* \(add a worker: (.*)\)$", self.output(), re.MULTILINE
        )
        return found.group(1) if found else None

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(30)


def assert_clean(service: Service) -> None:
    output = service.output()
    for text in NOT_CLEAN:
        assert text not in output, output[-3000:]
    errors = [e for e in service.events() if e.get("level") in ("error", "critical")]
    assert errors == []
    assert "service_stopped" in {e["event"] for e in service.events()}


@pytest.fixture
def sink(tmp_path: Path) -> Iterator[SmtpServerProcess]:
    server = SmtpServerProcess(tmp_path / "smtp.jsonl").start()
    yield server
    server.stop()


def email(i: int) -> tuple[str, dict[str, object]]:
    return f"user-{i}", {
        "to": f"user-{i}@example.test",
        "from": "Shop <shop@example.test>",
        "subject": "Winter sale",
        "text": "Everything is 20% off until Sunday.",
    }


@pytest.mark.chaos
@pytest.mark.slow
async def test_ctrl_c_mid_batch_then_restart_delivers_each_email_once(
    tmp_path: Path, sink: SmtpServerProcess
) -> None:
    service = Service(
        tmp_path / "data",
        tmp_path / "service.log",
        BATCHD_SMTP_URL=sink.url,
        BATCHD_EMAIL_SENDER_DOMAINS="example.test",
        BATCHD_SMTP_CONNECTIONS="4",
        BATCHD_WORKER_CONCURRENCY=str(CONCURRENCY),
        BATCHD_WORKER_CONCURENCY="10",  # a typo: warned about, once
    ).start()
    try:
        async with AsyncClient(service.target) as client:
            await wait_for_handler(client, "email.send")
            items = (email(i) for i in range(ITEMS))
            submitted = await client.upload("email.send", items, options={"chunk_size": 50})
            batch_id = submitted.batch.batch_id

            async def some_delivered() -> int | None:
                delivered = len(sink.messages())
                return delivered if delivered >= ITEMS // 10 else None

            await poll(some_delivered, within=60)
        code, seconds = service.stop_with("SIGINT")
        delivered_at_stop = len(sink.messages())
        assert code == 0
        assert seconds < 10
        assert_clean(service)
        typos = [e for e in service.events() if e["event"] == "unknown_variable"]
        assert [e["variable"] for e in typos] == ["BATCHD_WORKER_CONCURENCY"]
        assert delivered_at_stop < ITEMS  # it did stop mid-batch
        url = service.printed_url()

        service.start()  # the same data directory: the batch carries on
        async with AsyncClient(service.target) as client:
            async for progress in client.watch(batch_id, min_interval=0.1):
                last = progress
            assert last.state == BatchState.COMPLETED
            states = Counter([item.state async for item in client.items(batch_id)])
            assert states == {ItemState.SUCCEEDED: ITEMS}
        assert service.printed_url() == url  # the same address as before the restart
        code, term_seconds = service.stop_with("SIGTERM")
        assert code == 0
        assert_clean(service)
    finally:
        service.kill()
    deliveries = Counter(r for message in sink.messages() for r in message.recipients)
    missing = ITEMS - len(deliveries)
    duplicates = sum(deliveries.values()) - len(deliveries)
    print(
        f"\nCtrl-C after {delivered_at_stop} of {ITEMS} emails: exit in {seconds:.2f} s; "
        f"SIGTERM: exit in {term_seconds:.2f} s; missing {missing}, duplicates {duplicates}"
    )
    assert missing == 0
    assert duplicates == 0


@pytest.mark.slow
async def test_a_worker_added_by_the_printed_address_serves_batches(tmp_path: Path) -> None:
    service = Service(tmp_path / "data", tmp_path / "service.log").start()
    worker: asyncio.subprocess.Process | None = None
    try:
        async with AsyncClient(service.target) as client:
            await wait_for_handler(client, "noop")
            url = service.printed_url()
            assert url is not None
            redis_dir = (tmp_path / "data" / "redis").resolve()
            assert url == f"unix://{redis_dir / 'valkey.sock'}"
            url_file = redis_dir / "url"
            command = f'BATCHD_REDIS_URL="$(cat {url_file})" batchd-worker'
            assert service.printed_worker_command() == command
            # The printed command as it is, run by a shell; this checkout's worker for
            # batchd-worker (exec: the signals below reach it).
            worker_command = command.replace(
                "batchd-worker", f"exec {sys.executable} -m batchd.worker.main"
            )
            # Only this worker serves test.greet; its settings come as a flag and a variable.
            with (tmp_path / "worker.log").open("ab") as log:
                worker = await asyncio.create_subprocess_exec(
                    "sh", "-c",
                    f"{worker_command} --handlers settings_handler:handler --greeting hi",
                    env=_environment(BATCHD_GREET_TIMES="2"),
                    stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                )  # fmt: skip
            await wait_for_handler(client, "test.greet")
            names = [("a", {"name": "Ann"}), ("b", {"name": "Bob"})]
            submitted = await client.submit("test.greet", names)
            async for progress in client.watch(submitted.batch.batch_id, min_interval=0.05):
                last = progress
            assert last.state == BatchState.COMPLETED
            outputs = {i.custom_id: i.output async for i in client.items(last.batch_id)}
            assert outputs == {"a": {"text": "hi hi Ann"}, "b": {"text": "hi hi Bob"}}
        worker.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(worker.wait(), 30) == 0
        assert service.stop_with("SIGTERM")[0] == 0
        assert_clean(service)
    finally:
        if worker is not None and worker.returncode is None:
            worker.kill()
            await worker.wait()
        service.kill()


@pytest.mark.slow
async def test_the_embedded_redis_refuses_a_client_without_its_password(tmp_path: Path) -> None:
    service = Service(tmp_path / "data", tmp_path / "service.log").start()
    redis_dir = (tmp_path / "data" / "redis").resolve()
    try:
        async with AsyncClient(service.target) as client:
            await wait_for_handler(client, "noop")
            password = (redis_dir / "password").read_text().strip()
            assert len(password) >= 32
            assert redis_dir.stat().st_mode & 0o777 == 0o700
            for name in ("password", "url"):
                assert (redis_dir / name).stat().st_mode & 0o777 == 0o600
            assert (redis_dir / "valkey.sock").stat().st_mode & 0o777 == 0o700
            socket_path = str(redis_dir / "valkey.sock")
            for wrong in (None, "guessed"):
                stranger = Redis(unix_socket_path=socket_path, password=wrong)
                # On a unix socket, redis-py wraps the AuthenticationError.
                with pytest.raises(RedisConnectionError, match=r"Authentication required|invalid"):
                    await stranger.set("batchd:intruder", "job")
                await stranger.aclose()
            # The service's own server and worker have it: its batches run.
            submitted = await client.submit("noop", [(f"n-{i}", {}) for i in range(20)])
            async for progress in client.watch(submitted.batch.batch_id, min_interval=0.05):
                last = progress
            assert last.state == BatchState.COMPLETED
        assert service.stop_with("SIGTERM")[0] == 0
        assert_clean(service)
        service.start()  # the same password after a restart
        async with AsyncClient(service.target) as client:
            await wait_for_handler(client, "noop")
        assert (redis_dir / "password").read_text().strip() == password
        assert service.stop_with("SIGTERM")[0] == 0
        assert_clean(service)
        assert password not in (tmp_path / "service.log").read_text()
    finally:
        service.kill()
