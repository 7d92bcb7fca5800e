"""Settings: one frozen object per process, built from flags and BATCHD_* variables.

Precedence: command-line flag, then environment variable, then default. Nothing else
in batchd reads the environment; the settings are passed down explicitly.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any


def _setting(default: Any, help: str) -> Any:
    return field(default=default, metadata={"help": help})


# Chunk jobs a worker runs at once at least, when worker_max_chunks leaves it to batchd.
MIN_CHUNK_JOBS = 8


@dataclass(frozen=True)
class Settings:
    redis_url: str = _setting(
        "", "Redis URL (also REDIS_URL); empty: batchd-service starts an embedded server"
    )
    key_prefix: str = _setting("batchd:", "prefix of every Redis key batchd writes")
    host: str = _setting("0.0.0.0", "address the gRPC server listens on")
    port: int = _setting(50051, "port the gRPC server listens on")
    data_dir: str = _setting(".data", "where the embedded Redis keeps its append-only file")
    worker_concurrency: int = _setting(100, "items in flight per worker process")
    worker_max_chunks: int = _setting(
        0,
        "chunk jobs in flight per worker process; 0: three chunks of the default size per "
        "worker_concurrency's worth of items, and at least 8",
    )
    worker_poll_interval: float = _setting(
        0.05, "seconds a worker waits between looks at the queue when it has room"
    )
    handlers: str = _setting("", "extra handlers to serve: comma-separated module:attribute")
    heartbeat_interval: float = _setting(2.0, "seconds between a worker's liveness reports")
    worker_ttl: float = _setting(10.0, "a worker silent this many seconds counts as gone")
    lease_ttl: float = _setting(
        5.0,
        "seconds a worker's claim on a chunk lasts unrenewed: a dead worker's chunk is "
        "picked up again after this",
    )
    maintenance_interval: float = _setting(
        1.0, "seconds between sweeps for expired leases and completion windows"
    )
    retention: float = _setting(7 * 86400.0, "seconds a finished batch and its outcomes are kept")
    default_completion_window: float = _setting(
        86400.0, "seconds a batch may take when it does not say; then unfinished items EXPIRE"
    )
    default_chunk_size: int = _setting(100, "items per chunk when neither batch nor handler say")
    outcome_flush_items: int = _setting(1000, "a worker records outcomes every N items ...")
    outcome_flush_interval: float = _setting(0.1, "... or every this many seconds")
    max_pending_items: int = _setting(
        50_000_000,
        "items not yet finished, across all batches, beyond which submits are refused "
        "(RESOURCE_EXHAUSTED)",
    )
    max_batch_items: int = _setting(10_000_000, "items one batch may hold")
    dispatch_window: int = _setting(
        16,
        "chunk jobs of each batch kept in the queue at once: a batch behind another "
        "waits for at most this many of its chunks",
    )
    smtp_url: str = _setting(
        "smtp://localhost:25",
        "SMTP relay of email.send: smtp://[user:password@]host[:port][?starttls=auto|require|off]"
        ", or smtps:// for TLS from the first byte",
    )
    smtp_connections: int = _setting(
        8, "SMTP connections email.send keeps open per worker process and relay"
    )
    databases: str = _setting(
        "",
        "databases record.migrate may name, comma-separated name=SQLAlchemy-URL pairs; "
        "items may also give URLs themselves",
    )
    image_processes: int = _setting(
        2, "processes per worker that decode and resize images for image.resize"
    )
    image_max_pixels: int = _setting(
        50_000_000, "image.resize refuses images of more pixels (decompression bombs)"
    )
    image_input_dir: str = _setting(
        ".", "local image paths given to image.resize are read from inside this directory"
    )
    image_output_dir: str = _setting(
        ".data/images", "image.resize writes its variants inside this directory"
    )
    gc_threshold: int = _setting(
        10_000,
        "allocations between collections of Python's youngest garbage-collector generation "
        "in batchd's processes (the interpreter's default: 700); 0 leaves it as it is",
    )
    log_format: str = _setting("auto", "json, console, or auto (console on a terminal)")
    log_level: str = _setting("info", "debug, info, warning or error")

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
    def from_args(cls, argv: Sequence[str] | None = None, *, description: str = "") -> Settings:
        """Settings from command-line flags over the environment."""
        parser = argparse.ArgumentParser(description=description)
        for f in fields(cls):
            flag = "--" + f.name.replace("_", "-")
            help_text = f"{f.metadata['help']} [BATCHD_{f.name.upper()}, default {f.default!r}]"
            kind = {"int": int, "float": float}.get(str(f.type), str)
            parser.add_argument(flag, dest=f.name, type=kind, default=None, help=help_text)
        parsed = vars(parser.parse_args(argv))
        overrides = {k: v for k, v in parsed.items() if v is not None}
        return cls.from_env(**overrides)

    @property
    def chunk_jobs(self) -> int:
        """worker_max_chunks, or (0) enough chunk jobs to keep every item slot busy while
        some of the chunks end and others are claimed: three chunks of the default size
        per slot's worth, at least MIN_CHUNK_JOBS. (A worker of 500 slots running chunks
        of 100 10-ms items kept 0.76 of its slots busy with 8 chunk jobs, 0.86 with 16.)"""
        if self.worker_max_chunks > 0:
            return self.worker_max_chunks
        chunks = -(-3 * self.worker_concurrency // max(self.default_chunk_size, 1))
        return max(MIN_CHUNK_JOBS, chunks)

    @property
    def data_path(self) -> Path:
        return Path(self.data_dir)


def _convert(type_name: object, raw: str) -> Any:
    kind = str(type_name)
    if kind == "int":
        return int(raw)
    if kind == "float":
        return float(raw)
    return raw
