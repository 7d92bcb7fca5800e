"""How the CLI prints results: plain lines for people, JSON for scripts.

`--json` prints one JSON object per result (JSON Lines for listings, streamed page
by page): enums by name, times in ISO 8601 UTC, durations in seconds.
"""

from __future__ import annotations

import dataclasses
import enum
import json
from collections.abc import Iterable, Mapping
from datetime import datetime, timedelta
from typing import Any, TextIO

import grpc

from batchd.cli._auth import auth_hint
from batchd.client import Batch, BatchdError, BatchItem, BatchOptions, HandlerInfo

__all__ = [
    "format_duration",
    "print_batch",
    "print_batches",
    "print_error",
    "print_handlers",
    "print_items",
    "print_json",
    "to_jsonable",
]


def to_jsonable(value: Any) -> Any:
    """Dataclasses, enums, times and status codes as JSON-ready values."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: to_jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, grpc.StatusCode):
        return value.name
    if isinstance(value, enum.Enum):
        return value.name
    if isinstance(value, datetime):
        return value.isoformat().replace("+00:00", "Z")
    if isinstance(value, timedelta):
        return value.total_seconds()
    if isinstance(value, Mapping):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [to_jsonable(v) for v in value]
    return value


def print_json(value: Any, out: TextIO) -> None:
    print(json.dumps(to_jsonable(value), ensure_ascii=False), file=out, flush=True)


def print_error(error: BatchdError, out: TextIO) -> None:
    hint = auth_hint(error.code)
    print(f"error: {error.code.name}: {error.message}{f' — {hint}' if hint else ''}", file=out)
    for violation in error.field_violations:
        line = f"{violation.field}: {violation.description}"
        if line != error.message:  # a message that is the one violation already says it
            print(f"  {line}", file=out)
    if error.retry_after is not None:
        print(f"  retry after {error.retry_after:g}s", file=out)


def format_time(value: datetime | None) -> str:
    if value is None:
        return "-"
    return value.astimezone().strftime("%Y-%m-%d %H:%M:%S")


def format_duration(value: timedelta | float | None) -> str:
    """`1:02:03`, `4:05`, or `-` for unknown."""
    if value is None:
        return "-"
    seconds = int(value.total_seconds() if isinstance(value, timedelta) else value)
    hours, rest = divmod(max(seconds, 0), 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def _options_text(options: BatchOptions) -> str:
    parts: list[str] = []
    for field in dataclasses.fields(options):
        value = getattr(options, field.name)
        if field.name == "retry_policy" and value is not None:
            parts.extend(
                f"{f.name}={to_jsonable(getattr(value, f.name))}"
                for f in dataclasses.fields(value)
                if getattr(value, f.name)
            )
        elif value:
            parts.append(f"{field.name}={to_jsonable(value)}")
    return " ".join(parts) or "-"


def print_batch(batch: Batch, out: TextIO) -> None:
    c = batch.counts
    rows = [
        ("batch_id", batch.batch_id),
        ("handler", batch.handler),
        ("state", batch.state.name),
        ("items", f"{batch.total_items} in {batch.chunk_count} chunks"),
        (
            "counts",
            f"succeeded={c.succeeded} failed={c.failed} running={c.running} "
            f"claimed={c.claimed} pending={c.pending} cancelled={c.cancelled} "
            f"expired={c.expired}",
        ),
        *([("waiting", batch.waiting_reason)] if batch.waiting_reason else []),
        *([("uploading", "yes: items are still coming")] if batch.uploading else []),
        ("created", format_time(batch.create_time)),
        *(
            [("scheduled", format_time(batch.scheduled_start_time))]
            if batch.scheduled_start_time
            else []
        ),
        ("started", format_time(batch.start_time)),
        ("ended", format_time(batch.end_time)),
        ("options", _options_text(batch.options)),
        ("request_id", batch.request_id or "-"),
        ("metadata", " ".join(f"{k}={v}" for k, v in sorted(batch.metadata.items())) or "-"),
    ]
    for key, value in rows:
        print(f"{key:<11} {value}", file=out)


def print_batches(batches: Iterable[Batch], out: TextIO, *, as_json: bool) -> int:
    """Prints batches as they come; returns how many."""
    count = 0
    for batch in batches:
        if as_json:
            print_json(batch, out)
        else:
            if count == 0:
                print(
                    f"{'BATCH_ID':<36} {'STATE':<10} {'DONE/TOTAL':>21} {'HANDLER':<20} CREATED",
                    file=out,
                )
            done = f"{batch.counts.finished}/{batch.total_items}"
            print(
                f"{batch.batch_id:<36} {batch.state.name:<10} {done:>21} {batch.handler:<20} "
                f"{format_time(batch.create_time)}",
                file=out,
                flush=True,
            )
        count += 1
    return count


def _item_result(item: BatchItem) -> str:
    if item.error is not None:
        text = f"{item.error.code.name}: {item.error.message}"
        if item.next_attempt_time is not None:
            text += f" (retry at {format_time(item.next_attempt_time)})"
        return text
    if item.output is not None:
        return json.dumps(item.output, ensure_ascii=False, separators=(",", ":"))
    return ""


def print_items(items: Iterable[BatchItem], out: TextIO, *, as_json: bool) -> int:
    """Prints item outcomes as they come (failed ones with their error); returns how many."""
    count = 0
    for item in items:
        if as_json:
            print_json(item, out)
        else:
            if count == 0:
                print(f"{'INDEX':>8} {'CUSTOM_ID':<24} {'STATE':<10} TRIES RESULT", file=out)
            print(
                f"{item.index:>8} {item.custom_id:<24} {item.state.name:<10} {item.attempts:>5} "
                f"{_item_result(item)}",
                file=out,
                flush=True,
            )
        count += 1
    return count


def print_handlers(handlers: list[HandlerInfo], out: TextIO, *, as_json: bool) -> None:
    if as_json:
        print_json(handlers, out)
        return
    print(f"{'HANDLER':<24} {'WORKERS':>7} {'LAST SEEN':<19} DESCRIPTION", file=out)
    for h in sorted(handlers, key=lambda h: h.name):
        print(
            f"{h.name:<24} {h.live_workers:>7} {format_time(h.last_seen_time):<19} "
            f"{h.description.splitlines()[0] if h.description else ''}",
            file=out,
        )
