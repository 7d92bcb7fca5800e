"""Fixtures for flow-control tests: a private Redis (so INFO commandstats counts only
this test), a server, and worker subprocesses loading tests/support/flow_handlers.py
(and the built-in http.request)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pytest
from support.pool_fixtures import client, server, workers

__all__ = ["client", "server", "workers"]


@pytest.fixture
def private_redis(redis_server_factory: Callable[..., object]) -> object:
    return redis_server_factory()


@pytest.fixture
def flow_log(tmp_path: Path) -> Path:
    return tmp_path / "runs.log"


@pytest.fixture
def worker_env(flow_log: Path) -> Mapping[str, str]:
    return {
        "BATCHD_HANDLERS": "flow_handlers:handlers",
        "BATCHD_FLOW_LOG": str(flow_log),
        "BATCHD_LOG_LEVEL": "info",
        "BATCHD_EGRESS_ALLOW": "127.0.0.1",  # http.request items call a local peer
    }


@pytest.fixture
def worker_concurrency() -> int:
    return 20


@pytest.fixture
def server_settings() -> Mapping[str, Any]:
    return {}
