"""Checks a submitted batch before anything is stored.

Every problem becomes a field violation naming the field (`items[12].custom_id`,
`items[3].params.url`) so a caller can fix its request; items are checked against the
handler's JSON Schema as published by the workers, so the server needs none of the
handlers' code.
"""

from __future__ import annotations

import enum
import json
import math
import re
import urllib.parse
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any, TypeVar

import fastjsonschema

from batchd.core import fastjson
from batchd.core.domain import (
    MAX_BLOCK_SIZE,
    TENANT_SEPARATOR,
    UPDATABLE_OPTIONS,
    BatchOptions,
    BatchState,
    HandlerSpec,
    ItemState,
    NewItem,
)
from batchd.core.errors import FieldViolation, InvalidRequest
from batchd.server import convert
from batchd.v1 import batch_pb2, batch_service_pb2

StateT = TypeVar("StateT", BatchState, ItemState)
EnumT = TypeVar("EnumT", bound=enum.IntEnum)

ID_PATTERN = re.compile(r"[A-Za-z0-9_.-]{1,64}")
ID_MESSAGE = "must be 1 to 64 characters of [A-Za-z0-9_.-]"
MAX_ITEMS_PER_MESSAGE = 10_000
MAX_METADATA_PAIRS = 16
MAX_METADATA_KEY = 64
MAX_METADATA_VALUE = 512
MAX_REQUEST_ID = 128
# The longest handler name a filter may hold (WatchBatches).
MAX_HANDLER_NAME = 128
MAX_CHUNK_SIZE = 10_000
MAX_ATTEMPTS = 100
MAX_PRIORITY = 1_000
MAX_ITEM_TIMEOUT = 24 * 3600.0
MAX_COMPLETION_WINDOW = 30 * 24 * 3600.0
# How far ahead a batch's start_time may be.
MAX_START_DELAY = 30 * 24 * 3600.0
MAX_CALLBACK_URL = 2048
# The setting that lets a callback URL be http:// (Settings.callback_allow_http).
CALLBACK_HTTP_SETTING = "BATCHD_CALLBACK_ALLOW_HTTP"
# A request with thousands of bad items names the first ones; that is enough to act on.
MAX_VIOLATIONS = 100

Validator = Callable[[Any], Any]


@dataclass(frozen=True)
class ParamsLimits:
    """How deep an item's params may nest (objects and arrays), and how many bytes they
    may take (as JSON, or as an encoded Struct)."""

    max_depth: int = 32
    max_bytes: int = 256 * 1024


class Violations:
    """Collects field violations; `raise_if_any` turns them into one InvalidRequest."""

    def __init__(self) -> None:
        self.items: list[FieldViolation] = []

    def add(self, field: str, description: str) -> None:
        if len(self.items) < MAX_VIOLATIONS:
            self.items.append(FieldViolation(field, description))

    def raise_if_any(self) -> None:
        if self.items:
            first = self.items[0]
            more = f" (and {len(self.items) - 1} more)" if len(self.items) > 1 else ""
            raise InvalidRequest(f"{first.field}: {first.description}{more}", self.items)


class SchemaCache:
    """Compiled params validators, one per distinct published schema."""

    def __init__(self) -> None:
        self._compiled: dict[str, Validator] = {}

    def validator(self, spec: HandlerSpec) -> Validator:
        key = json.dumps(spec.params_schema, sort_keys=True)
        compiled = self._compiled.get(key)
        if compiled is None:
            compiled = fastjsonschema.compile(dict(spec.params_schema))
            self._compiled[key] = compiled
        return compiled


def check_header(
    violations: Violations,
    *,
    handler: str,
    spec: HandlerSpec | None,
    metadata: Mapping[str, str],
    request_id: str,
    batch_id: str,
    options: batch_pb2.BatchOptions,
    callback_allow_http: bool = False,
) -> None:
    if not handler:
        violations.add("handler", "required")
    elif spec is None:
        violations.add("handler", f"unknown handler {handler!r}: no worker has published it")
    _check_metadata(violations, metadata)
    _check_request_id(violations, request_id)
    if TENANT_SEPARATOR in options.rate_limit_key:
        violations.add("options.rate_limit_key", f"must not contain {TENANT_SEPARATOR!r}")
    if batch_id and not ID_PATTERN.fullmatch(batch_id):
        violations.add("batch_id", ID_MESSAGE)
    _check_options(violations, options)
    if options.completion_callback.url:
        problem = callback_url_problem(options.completion_callback.url, callback_allow_http)
        if problem:
            violations.add("options.completion_callback.url", problem)


def callback_url_problem(url: str, allow_http: bool) -> str | None:
    """What is wrong with a completion callback's URL, or None. Where it leads is the
    workers' egress guard's to judge, when they deliver."""
    if len(url) > MAX_CALLBACK_URL:
        return f"at most {MAX_CALLBACK_URL} characters"
    if not url.isascii() or any(c <= " " or c == "\x7f" for c in url):
        return "must be ASCII without spaces or control characters (punycode a name)"
    try:
        parts = urllib.parse.urlsplit(url)
        parts.port  # noqa: B018 -- raises ValueError for a bad port
    except ValueError as exc:
        return f"not a valid URL: {exc}"
    if parts.scheme == "http" and not allow_http:
        return f"must be https (http only where the service sets {CALLBACK_HTTP_SETTING})"
    if parts.scheme not in ("https", "http"):
        return "must be an https URL"
    if not parts.hostname:
        return "must name a host"
    if parts.username is not None or parts.password is not None:
        return "must not carry a user or password: the request is signed instead"
    if parts.fragment:
        return "must not have a fragment"
    return None


def check_start_time(
    violations: Violations,
    header: batch_service_pb2.SubmitBatchRequest | batch_service_pb2.UploadBatchHeader,
    *,
    now: float,
) -> float | None:
    """The start time a submit asks for (Unix seconds), None for at once (unset or past);
    INVALID_ARGUMENT (`start_time`) beyond MAX_START_DELAY from `now`."""
    if not header.HasField("start_time"):
        return None
    start = header.start_time.seconds + header.start_time.nanos / 1e9
    if start > now + MAX_START_DELAY:
        violations.add("start_time", "must be at most 30 days ahead")
        return None
    return start if start > now else None


def check_early_start(violations: Violations, header: batch_service_pb2.UploadBatchHeader) -> int:
    """The items an upload that starts early announces (`item_count`, required);
    INVALID_ARGUMENT without them, or with a start_time."""
    if header.item_count == 0:
        violations.add("item_count", "start_early needs the number of items the stream carries")
    if header.HasField("start_time"):
        violations.add("start_early", "starts items as they arrive: not with a start_time")
    return header.item_count


def check_retry(violations: Violations, custom_ids: Iterable[str], request_id: str) -> None:
    """Checks a RetryBatchItems request's item ids and request id."""
    for position, custom_id in enumerate(custom_ids):
        if not ID_PATTERN.fullmatch(custom_id):
            violations.add(f"custom_ids[{position}]", ID_MESSAGE)
    _check_request_id(violations, request_id)


def _check_request_id(violations: Violations, request_id: str) -> None:
    if len(request_id) > MAX_REQUEST_ID:
        violations.add("request_id", f"at most {MAX_REQUEST_ID} characters")
    # `~` joins a tenant to the names it owns (batchd.server.tenancy): no caller's may hold it.
    if TENANT_SEPARATOR in request_id:
        violations.add("request_id", f"must not contain {TENANT_SEPARATOR!r}")


def _check_metadata(
    violations: Violations, metadata: Mapping[str, str], field: str = "metadata"
) -> None:
    if len(metadata) > MAX_METADATA_PAIRS:
        violations.add(field, f"at most {MAX_METADATA_PAIRS} pairs")
    for key, value in metadata.items():
        if not 1 <= len(key) <= MAX_METADATA_KEY:
            violations.add(f"{field}[{key[:64]!r}]", f"keys are 1 to {MAX_METADATA_KEY} characters")
        if len(value) > MAX_METADATA_VALUE:
            violations.add(
                f"{field}[{key!r}]", f"values are at most {MAX_METADATA_VALUE} characters"
            )


def check_labels(violations: Violations, labels: Mapping[str, str]) -> None:
    """Checks a label filter (WatchBatches), bounded as a batch's metadata."""
    _check_metadata(violations, labels, "labels")


def known_values(
    violations: Violations, values: Iterable[int], enum: type[EnumT], field: str
) -> list[EnumT]:
    """A request's list of enum numbers as `enum` members; a violation per number `enum`
    does not have."""
    known = {int(member) for member in enum}
    for position, value in enumerate(values):
        if value not in known:
            violations.add(f"{field}[{position}]", f"unknown value {value}")
    return [enum(value) for value in values if value in known]


def _check_options(violations: Violations, options: batch_pb2.BatchOptions) -> None:
    if options.chunk_size > MAX_CHUNK_SIZE:
        violations.add("options.chunk_size", f"at most {MAX_CHUNK_SIZE}")
    retry = options.retry_policy
    if retry.max_attempts > MAX_ATTEMPTS:
        violations.add("options.retry_policy.max_attempts", f"at most {MAX_ATTEMPTS}")
    for name in ("min_backoff", "max_backoff"):
        if convert.seconds(getattr(retry, name)) < 0:
            violations.add(f"options.retry_policy.{name}", "must not be negative")
    if retry.HasField("max_backoff") and convert.seconds(retry.max_backoff) < convert.seconds(
        retry.min_backoff
    ):
        violations.add("options.retry_policy.max_backoff", "must not be below min_backoff")
    if not math.isfinite(options.max_per_second) or options.max_per_second < 0:
        violations.add("options.max_per_second", "must be a finite number, 0 or more")
    if abs(options.priority) > MAX_PRIORITY:
        violations.add("options.priority", f"must be within ±{MAX_PRIORITY}")
    timeout = convert.seconds(options.item_timeout)
    if not 0 <= timeout <= MAX_ITEM_TIMEOUT:
        violations.add("options.item_timeout", "must be between 0 and 24 hours")
    window = convert.seconds(options.completion_window)
    if not 0 <= window <= MAX_COMPLETION_WINDOW:
        violations.add("options.completion_window", "must be between 0 and 30 days")
    if options.block_size > MAX_BLOCK_SIZE:
        violations.add("options.block_size", f"at most {MAX_BLOCK_SIZE}")


def check_update(
    violations: Violations, options: batch_pb2.BatchOptions, paths: Iterable[str]
) -> dict[str, Any]:
    """Checks an UpdateBatch request's mask and values (as a submit checks them); returns
    the changes, option name -> new value."""
    paths = list(paths)
    if not paths:
        violations.add("update_mask", f"name at least one of {', '.join(UPDATABLE_OPTIONS)}")
    changes: dict[str, Any] = {}
    for position, path in enumerate(paths):
        name = path.removeprefix("options.")
        if name not in UPDATABLE_OPTIONS:
            violations.add(
                f"update_mask.paths[{position}]",
                f"unknown or fixed option {path!r}: one of {', '.join(UPDATABLE_OPTIONS)}",
            )
        else:
            changes[name] = getattr(options, name)
    _check_options(violations, options)
    return changes


def effective_options(
    requested: batch_pb2.BatchOptions, spec: HandlerSpec, service_defaults: BatchOptions
) -> BatchOptions:
    """The options in force: the request's, then the handler's, then the service's.
    A block_size is never above chunk_size (a handler's default is cut down to it); it
    stays 0 for a handler that runs one item per call."""
    options = convert.options_from_proto(requested)
    merged = options.merged_over(spec.default_options).merged_over(service_defaults)
    return replace(merged, block_size=min(merged.block_size, merged.chunk_size))


def check_block_size(
    violations: Violations,
    requested: batch_pb2.BatchOptions,
    spec: HandlerSpec,
    service_defaults: BatchOptions,
) -> None:
    """A block_size above 1 is for a handler that takes blocks, and at most the batch's
    chunk_size in force (a chunk is what a worker holds; a block is cut from one)."""
    size = requested.block_size
    if size <= 1:
        return
    chunk_size = (
        requested.chunk_size or spec.default_options.chunk_size or service_defaults.chunk_size
    )
    if not spec.takes_blocks:
        violations.add(
            "options.block_size",
            f"handler {spec.name!r} runs one item per call (it has no run_many): 0 or 1",
        )
    elif size > chunk_size:
        violations.add("options.block_size", f"must not be above chunk_size ({chunk_size})")


def check_items(
    violations: Violations,
    items: Iterable[batch_pb2.Item],
    *,
    first_index: int,
    validator: Validator | None,
    limits: ParamsLimits = ParamsLimits(),
) -> list[NewItem]:
    """Checks one message's items; returns them ready to store (params as compact JSON).

    Duplicate custom_ids within the message are caught here; across messages, the store
    catches them as chunks are staged.
    """
    accepted: list[NewItem] = []
    seen: dict[str, int] = {}
    id_ok = ID_PATTERN.fullmatch
    for index, item in enumerate(items, first_index):
        custom_id = item.custom_id
        if not id_ok(custom_id):
            violations.add(f"items[{index}].custom_id", ID_MESSAGE)
        elif custom_id in seen:
            violations.add(f"items[{index}].custom_id", f"duplicates items[{seen[custom_id]}]")
        else:
            seen[custom_id] = index
        params_json = _params(violations, item, index, validator, limits)
        if params_json is not None:
            accepted.append(NewItem(custom_id, params_json))
    return accepted


def _params(
    violations: Violations,
    item: batch_pb2.Item,
    index: int,
    validator: Validator | None,
    limits: ParamsLimits,
) -> bytes | None:
    payload = item.WhichOneof("payload")
    params: Any
    if payload == "params_json":
        field = f"items[{index}].params_json"
        if len(item.params_json) > limits.max_bytes:
            violations.add(field, f"at most {limits.max_bytes} bytes")
            return None
        if item.params_json == b"{}":  # no params: nothing to read or check but the schema
            params, encoded = {}, b"{}"
        else:
            try:
                params = fastjson.loads(item.params_json)
            except (ValueError, UnicodeDecodeError, RecursionError) as exc:
                # orjson stops at 1,024 levels ("depth limit exceeded"): too deep anyway.
                if isinstance(exc, RecursionError) or "depth limit" in str(exc):
                    violations.add(field, _too_deep(limits))
                else:
                    violations.add(field, f"not valid JSON: {exc}")
                return None
            if not isinstance(params, dict):
                violations.add(field, "must be a JSON object")
                return None
            # A text of n bytes nests at most n / 2 levels (each opens and closes):
            # short params, most of them, need no walk.
            if (
                len(item.params_json) > 2 * limits.max_depth
                and nesting_depth(params, limits.max_depth) > limits.max_depth
            ):
                violations.add(field, _too_deep(limits))
                return None
            encoded = item.params_json.strip()
    else:
        field = f"items[{index}].params"
        if payload == "params":
            if item.params.ByteSize() > limits.max_bytes:
                violations.add(field, f"at most {limits.max_bytes} bytes")
                return None
            params = convert.struct_to_dict(item.params)
            if nesting_depth(params, limits.max_depth) > limits.max_depth:
                violations.add(field, _too_deep(limits))
                return None
        else:
            params = {}
        encoded = json.dumps(params, separators=(",", ":"), ensure_ascii=False).encode()
        if len(encoded) > limits.max_bytes:
            violations.add(field, f"at most {limits.max_bytes} bytes")
            return None
    if validator is not None:
        try:
            validator(params)
        except fastjsonschema.JsonSchemaException as exc:
            violations.add(_schema_field(f"items[{index}]", exc), _schema_message(exc))
            return None
    return encoded


def _too_deep(limits: ParamsLimits) -> str:
    return f"nested deeper than {limits.max_depth} levels of objects and arrays"


def nesting_depth(value: Any, limit: int) -> int:
    """Levels of dicts and lists in `value` ({} is 1), counted without recursion; stops
    once past `limit` (returning limit + 1)."""
    depth = 0
    level = [value]
    while level:
        containers = [v for v in level if isinstance(v, dict | list)]
        if not containers:
            break
        depth += 1
        if depth > limit:
            return depth
        level = [
            child
            for container in containers
            for child in (container.values() if isinstance(container, dict) else container)
        ]
    return depth


def _schema_field(field: str, exc: fastjsonschema.JsonSchemaException) -> str:
    path = getattr(exc, "path", None) or []
    # fastjsonschema paths start with "data"; the rest are property names or indexes.
    suffix = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in list(path)[1:])
    return f"{field}.params{suffix}"


def _schema_message(exc: fastjsonschema.JsonSchemaException) -> str:
    message = str(getattr(exc, "message", exc))
    return message.replace("data.", "params.").replace("data ", "params ")


def known_states(values: Iterable[int], enum: type[StateT], field: str) -> list[StateT]:
    """A request's list of states as `enum` members; InvalidRequest names the first
    number `enum` does not have."""
    known = {int(member) for member in enum}
    for position, value in enumerate(values):
        if value not in known:
            raise InvalidRequest.for_field(f"{field}[{position}]", f"unknown state {value}")
    return [enum(value) for value in values]
