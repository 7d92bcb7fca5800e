"""Fixtures for fault-injection tests: a private Redis each test may kill, a server, and
worker subprocesses loading the chaos handlers."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pytest
from support.pool_fixtures import client, server, workers

__all__ = ["client", "server", "workers"]

# Short leases and sweeps so that a killed worker's chunk is picked up within seconds.
FAST_RECOVERY = {"BATCHD_LEASE_TTL": "2", "BATCHD_MAINTENANCE_INTERVAL": "0.5"}


@pytest.fixture
def private_redis(redis_server_factory: Callable[..., object]) -> object:
    return redis_server_factory(appendonly=True, extra_args=["--appendfsync", "everysec"])


@pytest.fixture
def chaos_log(tmp_path: Path) -> Path:
    return tmp_path / "applied.log"


@pytest.fixture
def worker_env(chaos_log: Path) -> Mapping[str, str]:
    return {
        "BATCHD_HANDLERS": "chaos_handlers:handlers",
        "BATCHD_CHAOS_LOG": str(chaos_log),
        **FAST_RECOVERY,
    }


@pytest.fixture
def worker_concurrency() -> int:
    return 10


@pytest.fixture
def server_settings() -> Mapping[str, Any]:
    return {"lease_ttl": 2, "maintenance_interval": 0.5}
