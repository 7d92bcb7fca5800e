"""Settings come from flags over BATCHD_* variables over defaults."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from batchd.core.config import SettingError, Settings, setting, suggestion, unknown_variables


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


def test_each_command_takes_the_settings_of_the_parts_it_runs() -> None:
    def names(command: str) -> set[str]:
        return {f.name for f in Settings.fields_for(command)}

    server, worker, service = (
        names("batchd-server"),
        names("batchd-worker"),
        names("batchd-service"),
    )
    assert {"host", "port", "max_batch_items"} <= server - worker
    assert {"worker_concurrency", "handlers", "lease_ttl"} <= worker - server
    assert {"redis_url", "key_prefix", "log_level"} <= server & worker
    assert service == server | worker | {"data_dir"}
    assert not {"smtp_url", "databases", "image_processes"} & service  # the handlers' own


def test_server_help_lists_only_the_servers_settings(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        Settings.from_args(["--help"], command="batchd-server")
    out = capsys.readouterr().out
    assert "--port" in out
    assert "--max-batch-items" in out
    assert "--worker-concurrency" not in out
    assert "--smtp-url" not in out
    assert "--databases" not in out
    assert "--image-" not in out


def test_a_bad_value_on_the_command_line_path_is_a_usage_error(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as exited:
        Settings.parse_args([], command="batchd-server", env={"BATCHD_PORT": "fifty"})
    assert exited.value.code == 2
    assert "BATCHD_PORT='fifty'" in capsys.readouterr().err


@dataclass(frozen=True)
class _Geo:
    geo_url: str = setting("https://geo.example", "endpoint")
    geo_connections: int = setting(10, "connections")


def test_handler_settings_come_from_flags_and_variables_typed() -> None:
    env = {"BATCHD_GEO_CONNECTIONS": "3", "BATCHD_GEO_URL": "https://env.example"}
    settings, rest = Settings.parse_args(
        ["--geo-url", "https://flag.example"], command="batchd-worker", sections=[_Geo], env=env
    )
    assert rest == []
    assert settings.section(_Geo) == _Geo(geo_url="https://flag.example", geo_connections=3)
    assert Settings().section(_Geo) == _Geo()  # defaults when nothing is given
    assert Settings.of(geo_connections="7", port=1).section(_Geo).geo_connections == 7


def test_a_handler_setting_may_not_shadow_batchds_or_another_handlers() -> None:
    @dataclass(frozen=True)
    class Shadow:
        port: int = setting(1, "mine")

    @dataclass(frozen=True)
    class Twin:
        geo_url: str = setting("x", "mine too")

    with pytest.raises(SettingError, match="batchd's own"):
        Settings.from_env({}, sections=[Shadow])
    with pytest.raises(SettingError, match="declared by _Geo and by"):
        Settings.from_env({}, sections=[_Geo, Twin])


def test_unknown_variables_are_those_no_process_reads() -> None:
    env = {
        "BATCHD_WORKER_CONCURENCY": "5",  # a typo
        "BATCHD_WORKER_CONCURRENCY": "5",  # the worker's: not unknown to a server
        "BATCHD_PORT": "1",  # the server's: not unknown to a worker
        "BATCHD_TARGET": "x",  # the CLI's
        "BATCHD_GEO_URL": "x",  # a handler's
        "PATH": "/bin",
    }
    assert unknown_variables(env, [_Geo]) == ["BATCHD_WORKER_CONCURENCY"]
    assert unknown_variables(env) == ["BATCHD_GEO_URL", "BATCHD_WORKER_CONCURENCY"]
    # A process without the handlers' names flags only near misses of batchd's own.
    assert unknown_variables(env, all_known=False) == ["BATCHD_WORKER_CONCURENCY"]
    assert suggestion("BATCHD_WORKER_CONCURENCY") == "BATCHD_WORKER_CONCURRENCY"
