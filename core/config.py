"""Settings: one frozen object per process, built from flags and BATCHD_* variables.

Precedence: command-line flag, then environment variable, then default. Nothing else
in batchd reads the environment; the settings are passed down explicitly.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Settings:
    # Redis. Empty: the all-in-one service starts an embedded server (see data_dir).
    redis_url: str = ""
    key_prefix: str = "batchd:"
    # gRPC server
    host: str = "0.0.0.0"
    port: int = 50051
    # The embedded Redis keeps its AOF here.
    data_dir: str = ".data"
    # Workers
    worker_concurrency: int = 100  # items in flight per worker process
    worker_max_chunks: int = 8  # chunk jobs in flight per worker process
    handlers: str = ""  # extra handlers: comma-separated "module:attribute" paths
    heartbeat_interval: float = 2.0  # seconds between worker liveness reports
    worker_ttl: float = 10.0  # a worker silent this long counts as gone
    # Batches
    default_chunk_size: int = 100
    outcome_flush_items: int = 200  # a worker flushes outcomes every N items ...
    outcome_flush_interval: float = 0.1  # ... or every this many seconds
    # Logging
    log_format: str = "auto"  # "json", "console" or "auto" (console on a terminal)
    log_level: str = "info"

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Settings from BATCHD_* variables (BATCHD_REDIS_URL, BATCHD_PORT, ...)."""
        env = os.environ if env is None else env
        values: dict[str, Any] = {}
        for f in fields(cls):
            raw = env.get(f"BATCHD_{f.name.upper()}")
            if raw is not None:
                values[f.name] = _convert(f.type, raw)
        if "redis_url" not in values and env.get("REDIS_URL"):
            values["redis_url"] = env["REDIS_URL"]
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)

    @classmethod
    def from_args(
        cls, argv: Sequence[str] | None = None, *, description: str = ""
    ) -> Settings:
        """Settings from command-line flags over the environment."""
        parser = argparse.ArgumentParser(description=description)
        for f in fields(cls):
            flag = "--" + f.name.replace("_", "-")
            parser.add_argument(flag, dest=f.name, default=None, help=f"(BATCHD_{f.name.upper()})")
        parsed = vars(parser.parse_args(argv))
        overrides = {k: _convert(_field_type(k), v) for k, v in parsed.items() if v is not None}
        return cls.from_env(**overrides)

    @property
    def data_path(self) -> Path:
        return Path(self.data_dir)


def _field_type(name: str) -> str:
    return next(str(f.type) for f in fields(Settings) if f.name == name)


def _convert(type_name: object, raw: str) -> Any:
    kind = str(type_name)
    if kind == "int":
        return int(raw)
    if kind == "float":
        return float(raw)
    return raw
