"""How the store's values look in Redis: msgpack chunks and outcomes, meta hashes, JSON
handler specs and opaque page tokens. Pure functions, no I/O.

Times are Unix seconds (float) in the domain and integer milliseconds in Redis.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import time
from collections.abc import Mapping, Sequence
from typing import Any

import msgpack

from batchd.core.domain import (
    DEFAULT_TENANT,
    BatchOptions,
    BatchRecord,
    BatchState,
    HandlerSpec,
    ItemCounts,
    ItemOutcome,
    ItemState,
    ItemView,
    NewItem,
)
from batchd.core.errors import InvalidRequest

# msgpack.packb builds a Packer per call; a worker packs an outcome per item: one,
# reused (it resets itself after each pack, and after an error).
_pack_bin = msgpack.Packer(use_bin_type=True).pack


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def to_ms(seconds: float | None) -> int | None:
    return None if seconds is None else round(seconds * 1000)


def from_ms(ms: int | None) -> float | None:
    return None if ms is None else ms / 1000


def canonical_json(value: Any) -> bytes:
    """Sorted keys, no spaces: equal values give equal bytes."""
    if type(value) is str and _PLAIN_STRING.fullmatch(value):
        # JSON writes it as it is, between quotes: the request digest takes one per item
        # (its custom_id), so the common case skips the encoder.
        return b'"' + value.encode() + b'"'
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


_PLAIN_STRING = re.compile(r"[A-Za-z0-9_.-]*")


# -- chunks and outcomes -----------------------------------------------------------


def encode_chunk(items: Sequence[NewItem]) -> bytes:
    """msgpack `[[custom_id, params_json], ...]`, params as bin."""
    packed: bytes = msgpack.packb(
        [(item.custom_id, item.params_json) for item in items], use_bin_type=True
    )
    return packed


def encode_ids(custom_ids: Sequence[str]) -> bytes:
    """msgpack `[custom_id, ...]`: a chunk's ids for the staging script, one argument
    rather than one per id, which redis-py would pack one by one."""
    packed: bytes = msgpack.packb(custom_ids)
    return packed


def decode_chunk(raw: bytes) -> list[tuple[str, bytes]]:
    return [(str(cid), bytes(params)) for cid, params in msgpack.unpackb(raw, raw=False)]


def chunk_entries(raw: bytes) -> list[list[Any]]:
    """A chunk's `[custom_id, params_json]` entries as msgpack gives them (no copies): for
    a reader of whole chunks that wants their ids."""
    entries: list[list[Any]] = msgpack.unpackb(raw, raw=False)
    return entries


def encode_outcome(outcome: ItemOutcome) -> bytes:
    """msgpack `[state, attempts, start_ms, end_ms, output_json|nil, error_code, error_message]`."""
    packed: bytes = _pack_bin(
        (
            int(outcome.state),
            outcome.attempts,
            to_ms(outcome.start_time),
            to_ms(outcome.end_time),
            outcome.output_json,
            outcome.error_code,
            outcome.error_message,
        )
    )
    return packed


def encode_attempt(outcome: ItemOutcome) -> bytes:
    """An item's last failed attempt, while it waits for another (the `attempts` hash):
    msgpack `[attempts, error_code, error_message, due_ms]`."""
    packed: bytes = _pack_bin(
        (outcome.attempts, outcome.error_code, outcome.error_message, to_ms(outcome.retry_at))
    )
    return packed


def decode_attempt(raw: bytes) -> tuple[int, int, str, int]:
    """(attempts, error_code, error_message, due ms) of an `attempts` entry."""
    attempts, code, message, due = msgpack.unpackb(raw, raw=False)
    return int(attempts), int(code), str(message), int(due)


def waiting_view(index: int, custom_id: str, due_ms: int, attempt: bytes | None) -> ItemView:
    """A PENDING item waiting in its chunk's retry set. Without an `attempts` entry (a
    redriven or handed-back item) it shows as plain PENDING."""
    if attempt is None:
        return ItemView(custom_id=custom_id, index=index, state=ItemState.PENDING)
    attempts, code, message, _ = decode_attempt(attempt)
    return ItemView(
        custom_id=custom_id,
        index=index,
        state=ItemState.PENDING,
        attempts=attempts,
        error_code=code,
        error_message=message,
        next_attempt_time=due_ms / 1000,
    )


def decode_outcome(index: int, custom_id: str, raw: bytes) -> ItemView:
    state, attempts, start, end, output, code, message = msgpack.unpackb(raw, raw=False)
    return ItemView(
        custom_id=custom_id,
        index=index,
        state=ItemState(state),
        attempts=attempts,
        start_time=from_ms(start),
        end_time=from_ms(end),
        output_json=None if output is None else bytes(output),
        error_code=code,
        error_message=message,
    )


def outcome_fields(raw: bytes) -> list[Any]:
    """An outcome record's fields, as `encode_outcome` packs them: [state, attempts,
    start_ms, end_ms, output_json or None, error_code, error_message]. For a reader of
    many records (an export) that makes no ItemView of each."""
    fields: list[Any] = msgpack.unpackb(raw, raw=False)
    return fields


def unrecorded_fields(state: ItemState) -> list[Any]:
    """`outcome_fields` of an item without a record, in `state` (its chunk's)."""
    return [int(state), 0, None, None, None, 0, ""]


# -- the meta hash -----------------------------------------------------------------


def encode_meta(
    *,
    handler: str,
    options: BatchOptions,
    metadata: Mapping[str, str],
    request_id: str,
    digest: str,
    total: int,
    chunks: int,
    chunk_size: int,
    created_ms: int,
    deadline_ms: int | None = None,
    tenant: str = DEFAULT_TENANT,
    trace_parent: str = "",
    scheduled_ms: int | None = None,
) -> dict[str, str | int]:
    """The fields of a new batch's meta hash (docs/design.md, "Keys")."""
    meta: dict[str, str | int] = {
        "handler": handler,
        "state": int(BatchState.QUEUED),
        "options": canonical_json(options.to_dict()).decode(),
        "metadata": canonical_json(dict(metadata)).decode(),
        "request_id": request_id,
        "tenant": tenant,
        "digest": digest,
        "total": total,
        "chunks": chunks,
        "chunk_size": chunk_size,
        "created": created_ms,
        "n_run": 0,
        "n_ok": 0,
        "n_fail": 0,
        "n_cancel": 0,
        "n_exp": 0,
    }
    if deadline_ms is not None:
        meta["deadline"] = deadline_ms
    if trace_parent:
        meta["trace"] = trace_parent
    if scheduled_ms is not None:
        meta["sched"] = scheduled_ms
    if options.callback_url:
        meta["callback"] = options.callback_url  # read by _callbacks.lua when the batch ends
    return meta


def _int(meta: Mapping[bytes, bytes], name: bytes) -> int:
    raw = meta.get(name)
    return int(raw) if raw else 0


def _time(meta: Mapping[bytes, bytes], name: bytes) -> float | None:
    raw = meta.get(name)
    return int(raw) / 1000 if raw else None


def in_flight(running: Mapping[bytes, bytes], started: Mapping[bytes, bytes]) -> int:
    """Items in flight from HGETALL of `…:running` and `…:started`: per chunk, what its
    holder reported, never more than the chunk's items counted in n_run."""
    return sum(min(int(count), int(running.get(chunk, 0))) for chunk, count in started.items())


def decode_meta(batch_id: str, meta: Mapping[bytes, bytes], in_flight: int = 0) -> BatchRecord:
    """A BatchRecord from HGETALL of `…:meta` and the items in flight (`in_flight`):
    pending is derived, so counts add up; n_run splits into running (in flight) and
    claimed (the rest)."""
    total = _int(meta, b"total")
    taken, ok, failed, cancelled, expired = (
        _int(meta, name) for name in (b"n_run", b"n_ok", b"n_fail", b"n_cancel", b"n_exp")
    )
    running = min(in_flight, taken)
    counts = ItemCounts(
        pending=total - taken - ok - failed - cancelled - expired,
        running=running,
        claimed=taken - running,
        succeeded=ok,
        failed=failed,
        cancelled=cancelled,
        expired=expired,
    )
    return BatchRecord(
        batch_id=batch_id,
        handler=meta[b"handler"].decode(),
        state=BatchState(_int(meta, b"state")),
        options=BatchOptions.from_dict(json.loads(meta[b"options"])),
        metadata=json.loads(meta[b"metadata"]),
        request_id=meta.get(b"request_id", b"").decode(),
        total_items=total,
        chunk_count=_int(meta, b"chunks"),
        counts=counts,
        create_time=_int(meta, b"created") / 1000,
        start_time=_time(meta, b"started"),
        end_time=_time(meta, b"ended"),
        tenant=meta.get(b"tenant", DEFAULT_TENANT.encode()).decode(),
        scheduled_start=_time(meta, b"sched"),
        uploading=b"uploader" in meta,
    )


# -- the handler catalog -----------------------------------------------------------


def encode_handler(spec: HandlerSpec, seen_ms: int) -> bytes:
    """The catalog entry: the spec plus when a worker serving it last published it."""
    return canonical_json(
        {
            "name": spec.name,
            "description": spec.description,
            "params_schema": spec.params_schema,
            "default_options": spec.default_options.to_dict(),
            "seen_ms": seen_ms,
        }
    )


def decode_handler(raw: bytes) -> tuple[HandlerSpec, int]:
    """(spec, last publish ms) from a catalog entry."""
    data = json.loads(raw)
    spec = HandlerSpec(
        name=data["name"],
        description=data.get("description", ""),
        params_schema=data.get("params_schema", {}),
        default_options=BatchOptions.from_dict(data.get("default_options", {})),
    )
    return spec, int(data.get("seen_ms", 0))


# -- page tokens -------------------------------------------------------------------


def encode_token(text: str) -> str:
    """An opaque page token (base64url, unpadded)."""
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


def decode_token(token: str) -> str:
    """The text of a page token; InvalidRequest on `page_token` if it is not one of ours."""
    try:
        return base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise InvalidRequest.for_field("page_token", "not a page token of this listing") from None
