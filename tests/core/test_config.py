"""Settings come from flags over BATCHD_* variables over defaults."""

from __future__ import annotations

import pytest

from batchd.core.config import Settings


def test_defaults() -> None:
    settings = Settings.from_env({})
    assert (settings.redis_url, settings.port, settings.worker_concurrency) == ("", 50051, 100)


def test_environment_is_typed() -> None:
    env = {"BATCHD_PORT": "6000", "BATCHD_OUTCOME_FLUSH_INTERVAL": "0.5", "REDIS_URL": "redis://x"}
    settings = Settings.from_env(env)
    assert settings.port == 6000
    assert settings.outcome_flush_interval == 0.5
    assert settings.redis_url == "redis://x"


def test_batchd_redis_url_wins_over_redis_url() -> None:
    env = {"BATCHD_REDIS_URL": "redis://mine", "REDIS_URL": "redis://other"}
    assert Settings.from_env(env).redis_url == "redis://mine"


def test_flags_win_over_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BATCHD_PORT", "6000")
    monkeypatch.setenv("BATCHD_HOST", "127.0.0.1")
    settings = Settings.from_args(["--port", "7000", "--worker-concurrency", "5"])
    assert (settings.port, settings.host, settings.worker_concurrency) == (7000, "127.0.0.1", 5)


def test_bad_value_is_an_error() -> None:
    with pytest.raises(ValueError, match="invalid literal"):
        Settings.from_env({"BATCHD_PORT": "fifty"})


def test_chunk_jobs_keep_a_large_concurrency_busy_unless_set() -> None:
    # Three chunks of the default size per slot's worth of items, at least 8.
    assert Settings().chunk_jobs == 8  # 100 slots, chunks of 100
    assert Settings(worker_concurrency=500).chunk_jobs == 15
    assert Settings(worker_concurrency=500, default_chunk_size=1000).chunk_jobs == 8
    assert Settings(worker_concurrency=50, default_chunk_size=1).chunk_jobs == 150
    assert Settings(worker_concurrency=500, worker_max_chunks=2).chunk_jobs == 2
