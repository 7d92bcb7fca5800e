"""The `batchd` command line: verbs, flags and their help."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from batchd.cli._auth import add_token_flag
from batchd.cli._tls import add_tls_flags
from batchd.client import DEFAULT_TARGET, DEFAULT_TIMEOUT, BatchEventType, BatchState, ItemState

__all__ = ["TARGET_ENV", "build_parser"]

TARGET_ENV = "BATCHD_TARGET"

_DESCRIPTION = """\
Submit, follow and inspect batches of the batchd service.

exit status: 0 done; 1 `watch` (or `--watch`) saw items fail, expire or be
cancelled; 2 an error, printed as `error: <CODE>: <message>` with each bad field;
130 interrupted.
"""

_EPILOG = f"""\
examples:
  batchd handlers
  batchd submit http.request items.jsonl --max-per-second 50 --watch
  gen_items | batchd submit noop - --chunk-size 500
  batchd submit http.request items.jsonl --start-at +10m
  batchd watch BATCH_ID
  batchd items BATCH_ID --state failed
  batchd results BATCH_ID > results.jsonl
  batchd retry BATCH_ID
  batchd pause BATCH_ID; batchd resume BATCH_ID
  batchd update BATCH_ID --priority 10 --max-per-second 20
  batchd list --state running --json | jq .batch_id
  batchd events --state completed --label team=billing

The server is --target, else ${TARGET_ENV}, else {DEFAULT_TARGET}.
Over TLS: --tls (the system's root CAs) or --tls-ca ca.pem; for mTLS add
--tls-cert and --tls-key.
"""


def _event_type(text: str) -> int:
    names = [t.name.lower() for t in BatchEventType if t.value]
    try:
        return int(BatchEventType[text.upper().replace("-", "_")])
    except KeyError:
        raise argparse.ArgumentTypeError(
            f"unknown event type {text!r} (choose from {', '.join(names)})"
        ) from None


def _state(enum_type: type[BatchState] | type[ItemState]) -> Callable[[str], int]:
    names = [s.name.lower() for s in enum_type if s.value]

    def parse(text: str) -> int:
        try:
            state = enum_type[text.upper()]
        except KeyError:
            raise argparse.ArgumentTypeError(
                f"unknown state {text!r} (choose from {', '.join(names)})"
            ) from None
        return int(state)

    parse.__name__ = "state"
    return parse


_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def start_at(text: str, now: datetime | None = None) -> datetime:
    """`--start-at`: an ISO 8601 time (without an offset: UTC) or `+<n><s|m|h|d>` from
    `now` (default: the clock)."""
    if text.startswith("+"):
        number, unit = text[1:-1], text[-1:]
        try:
            delay = float(number) * _UNITS[unit]
        except (KeyError, ValueError):
            raise argparse.ArgumentTypeError(
                f"{text!r}: write +<number><s|m|h|d>, as +90s or +10m"
            ) from None
        return (now or datetime.now(UTC)) + timedelta(seconds=delay)
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r}: an ISO 8601 time (2026-12-24T18:00:00Z) or +10m"
        ) from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _key_value(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key, value


def _add_json(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print JSON for scripts")


def build_parser() -> argparse.ArgumentParser:
    # --target, --timeout and the TLS flags work before or after the verb.
    shared = argparse.ArgumentParser(add_help=False)
    shared.add_argument(
        "--target",
        default=argparse.SUPPRESS,
        help=f"the server, HOST:PORT (default: ${TARGET_ENV}, else {DEFAULT_TARGET})",
    )
    shared.add_argument(
        "--timeout",
        type=float,
        default=argparse.SUPPRESS,
        metavar="SECONDS",
        help=f"deadline of each call but uploads and watches (default: {DEFAULT_TIMEOUT:g})",
    )
    add_token_flag(shared)
    add_tls_flags(shared)
    parser = argparse.ArgumentParser(
        prog="batchd",
        description=_DESCRIPTION,
        epilog=_EPILOG,
        parents=[shared],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    verbs = parser.add_subparsers(dest="verb", required=True, metavar="VERB")

    def verb(name: str, help: str) -> argparse.ArgumentParser:
        return verbs.add_parser(name, parents=[shared], help=help, description=help)

    submit = verb("submit", "submit a batch from JSON Lines; prints the batch id")
    submit.add_argument("handler", metavar="HANDLER", help="the handler that runs every item")
    submit.add_argument(
        "file",
        metavar="FILE",
        nargs="?",
        default="-",
        help='JSON Lines, one {"custom_id": ..., "params": {...}} per line; '
        "- or none for stdin. A line without custom_id gets line-<n>",
    )
    submit.add_argument("--chunk-size", type=int, metavar="N", help="items per chunk")
    submit.add_argument(
        "--block-size", type=int, metavar="N", help="items per handler call (bulk handlers)"
    )
    submit.add_argument("--max-attempts", type=int, metavar="N", help="attempts per item")
    submit.add_argument("--max-concurrent", type=int, metavar="N", help="items in flight")
    submit.add_argument("--max-per-second", type=float, metavar="R", help="items started/s")
    submit.add_argument("--burst", type=int, metavar="N", help="items above the rate at once")
    submit.add_argument("--rate-limit-key", metavar="KEY", help="a rate limit shared by batches")
    submit.add_argument("--priority", type=int, metavar="P", help="higher runs first")
    submit.add_argument(
        "--item-timeout", type=float, metavar="SECONDS", help="the longest one attempt may take"
    )
    submit.add_argument(
        "--completion-window",
        type=float,
        metavar="SECONDS",
        help="items not finished this long after submission end EXPIRED (default: 24 h)",
    )
    submit.add_argument(
        "--start-at",
        type=start_at,
        metavar="TIME",
        help="start then, not now: ISO 8601 (UTC unless it says) or +90s, +10m, +2h, +1d; "
        "at most 30 days ahead",
    )
    submit.add_argument(
        "--start-early",
        action="store_true",
        help="start items as they are uploaded, not once the file is: an upload that "
        "breaks off then leaves the batch CANCELLED with what ran (FILE must be a file: "
        "its items are counted first)",
    )
    submit.add_argument(
        "--callback-url",
        metavar="URL",
        help="an https URL POSTed a signed CloudEvent when the batch ends",
    )
    submit.add_argument("--request-id", metavar="ID", help="makes a retried submit safe")
    submit.add_argument("--batch-id", metavar="ID", help="choose the batch id")
    submit.add_argument(
        "--metadata",
        type=_key_value,
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a label for the batch (repeatable)",
    )
    submit.add_argument(
        "--items-per-message",
        type=int,
        default=1000,
        metavar="N",
        help="items per upload message (default: 1000)",
    )
    submit.add_argument("--watch", action="store_true", help="then follow it as `watch` does")
    submit.add_argument(
        "--interval", type=float, default=0.25, metavar="SECONDS", help="with --watch"
    )
    _add_json(submit)

    watch = verb(
        "watch",
        "follow a batch to its end: exit 0 if every item succeeded, 1 if any failed, "
        "expired or was cancelled",
    )
    watch.add_argument("batch_id", metavar="BATCH_ID")
    watch.add_argument(
        "--interval",
        type=float,
        default=0.25,
        metavar="SECONDS",
        help="least time between two updates (default: 0.25)",
    )
    _add_json(watch)

    get = verb("get", "show one batch")
    get.add_argument("batch_id", metavar="BATCH_ID")
    _add_json(get)

    list_ = verb("list", "list batches, newest first")
    list_.add_argument(
        "--state",
        type=_state(BatchState),
        action="append",
        default=[],
        metavar="STATE",
        help="only batches in this state (repeatable): "
        + ", ".join(s.name.lower() for s in BatchState if s.value),
    )
    list_.add_argument("--limit", type=int, default=0, metavar="N", help="at most N batches")
    _add_json(list_)

    events = verb(
        "events",
        "follow the events of your batches (created, started, finished, ...): one JSON "
        "line each, with a cursor to resume from",
    )
    events.add_argument(
        "--state",
        type=_state(BatchState),
        action="append",
        default=[],
        metavar="STATE",
        help="only events leaving the batch in this state (repeatable)",
    )
    events.add_argument(
        "--label",
        type=_key_value,
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="only batches with this metadata pair (repeatable: all must match)",
    )
    events.add_argument("--handler", default="", metavar="NAME", help="only this handler's")
    events.add_argument(
        "--type",
        type=_event_type,
        action="append",
        default=[],
        metavar="TYPE",
        help="only events of this type (repeatable): "
        + ", ".join(t.name.lower() for t in BatchEventType if t.value),
    )
    start = events.add_mutually_exclusive_group()
    start.add_argument(
        "--cursor", default="", metavar="CURSOR", help="start after this event's cursor"
    )
    start.add_argument(
        "--from-oldest", action="store_true", help="start with the oldest event kept"
    )
    events.add_argument(
        "--limit", type=int, default=0, metavar="N", help="stop after N events (0: never)"
    )
    events.add_argument(
        "--heartbeats",
        action="store_true",
        help='print heartbeats too ({"heartbeat": true, "cursor": ...})',
    )

    cancel = verb("cancel", "cancel a batch (idempotent)")
    cancel.add_argument("batch_id", metavar="BATCH_ID")
    _add_json(cancel)

    pause = verb("pause", "pause a queued or running batch: no new item starts (idempotent)")
    pause.add_argument("batch_id", metavar="BATCH_ID")
    _add_json(pause)

    resume = verb("resume", "resume a paused batch (idempotent)")
    resume.add_argument("batch_id", metavar="BATCH_ID")
    _add_json(resume)

    update = verb("update", "change a batch's priority, rate or concurrency while it runs")
    update.add_argument("batch_id", metavar="BATCH_ID")
    update.add_argument("--priority", type=int, metavar="N", help="higher runs first")
    update.add_argument(
        "--max-per-second",
        type=float,
        metavar="RATE",
        help="items started per second (0: no limit)",
    )
    update.add_argument("--burst", type=int, metavar="N", help="starts allowed above the rate")
    update.add_argument(
        "--max-concurrent", type=int, metavar="N", help="items in flight (0: no limit)"
    )
    _add_json(update)

    retry = verb("retry", "run FAILED and EXPIRED items again; the batch returns to RUNNING")
    retry.add_argument("batch_id", metavar="BATCH_ID")
    retry.add_argument(
        "--item",
        dest="custom_ids",
        action="append",
        default=[],
        metavar="CUSTOM_ID",
        help="only this item (repeatable; default: every failed and expired item)",
    )
    retry.add_argument("--request-id", metavar="ID", help="makes a repeated retry safe")
    retry.add_argument("--watch", action="store_true", help="then follow it as `watch` does")
    retry.add_argument(
        "--interval", type=float, default=0.25, metavar="SECONDS", help="with --watch"
    )
    _add_json(retry)

    delete = verb("delete", "delete a finished batch and its item outcomes")
    delete.add_argument("batch_id", metavar="BATCH_ID")

    items = verb("items", "list item outcomes; failed items with their error")
    items.add_argument("batch_id", metavar="BATCH_ID")
    items.add_argument(
        "--state",
        type=_state(ItemState),
        action="append",
        default=[],
        metavar="STATE",
        help="only items in this state (repeatable): "
        + ", ".join(s.name.lower() for s in ItemState if s.value),
    )
    items.add_argument("--limit", type=int, default=0, metavar="N", help="at most N items")
    _add_json(items)

    results = verb(
        "results",
        "write a finished batch's results to stdout as JSON Lines, one line per item",
    )
    results.add_argument("batch_id", metavar="BATCH_ID")
    results.add_argument(
        "--order",
        choices=("submission", "id"),
        default="submission",
        help="line order: as submitted (default) or by custom_id",
    )
    results.add_argument(
        "--after",
        default="",
        metavar="CURSOR",
        help="carry on an export that broke off after CURSOR (printed on stderr then)",
    )

    handlers = verb("handlers", "list the handlers that workers serve")
    _add_json(handlers)
    return parser
