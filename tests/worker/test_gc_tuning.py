"""The garbage-collector settings of batchd's processes (batchd.core.gc_tuning), each
looked at in a process of its own: the test process's collector stays as it is."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from support.redis_server import RedisServer

PROBE = (
    "import gc, sys; from batchd.core.gc_tuning import tune_gc; "
    "tune_gc(int(sys.argv[1])); print(gc.get_threshold()[0], gc.get_freeze_count() > 0)"
)


def _tuned(threshold: int) -> str:
    command = [sys.executable, "-c", PROBE, str(threshold)]
    return subprocess.run(command, check=True, capture_output=True, text=True).stdout.strip()


def test_tuning_sets_the_young_threshold_and_freezes_what_exists() -> None:
    assert _tuned(10_000) == "10000 True"


def test_a_threshold_of_zero_leaves_the_interpreter_defaults() -> None:
    assert _tuned(0) == "700 False"


@pytest.mark.slow
def test_the_worker_process_runs_with_its_setting(redis_server: RedisServer) -> None:
    env = {
        **os.environ,
        "BATCHD_REDIS_URL": redis_server.url,
        "BATCHD_KEY_PREFIX": "gct:",
        "BATCHD_LOG_FORMAT": "json",
        "BATCHD_GC_THRESHOLD": "12345",
    }
    command = [sys.executable, "-m", "batchd.worker.main"]
    with subprocess.Popen(
        command,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,  # its log
        text=True,
    ) as worker:
        try:
            assert worker.stdout is not None
            for line in worker.stdout:  # until it says it started (pytest's timeout bounds it)
                event = json.loads(line)
                if event["event"] == "worker_started":
                    assert event["gc_threshold"] == 12345
                    break
            else:
                raise AssertionError("the worker ended before it started")
        finally:
            worker.terminate()
