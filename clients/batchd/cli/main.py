"""The `batchd` command: submit, follow and inspect batches. It uses batchd.client only."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import timedelta
from typing import BinaryIO, TextIO, TypeVar

from rich.console import Console

from batchd.cli._jsonl import read_items
from batchd.cli._output import (
    print_batch,
    print_batches,
    print_error,
    print_handlers,
    print_items,
    print_json,
)
from batchd.cli._progress import follow
from batchd.client import (
    DEFAULT_TARGET,
    DEFAULT_TIMEOUT,
    BatchdError,
    BatchOptions,
    BatchState,
    Client,
    ItemState,
    RetryPolicy,
)

__all__ = ["build_parser", "main"]

TARGET_ENV = "BATCHD_TARGET"

T = TypeVar("T")

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
  batchd watch BATCH_ID
  batchd items BATCH_ID --state failed
  batchd retry BATCH_ID
  batchd list --state running --json | jq .batch_id

The server is --target, else ${TARGET_ENV}, else {DEFAULT_TARGET}.
"""


class _Io:
    """Where output goes; one per run so that tests can capture it."""

    def __init__(self, out: TextIO, err: TextIO) -> None:
        self.out = out
        self.err = err
        self.console = Console(file=out)


Command = Callable[[Client, argparse.Namespace, _Io], int]


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


def _key_value(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key, value


def _add_json(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print JSON for scripts")


def build_parser() -> argparse.ArgumentParser:
    # --target and --timeout work before or after the verb.
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
    parser = argparse.ArgumentParser(
        prog="batchd",
        description=_DESCRIPTION,
        epilog=_EPILOG,
        parents=[shared],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    verbs = parser.add_subparsers(dest="verb", required=True, metavar="VERB")

    def verb(name: str, command: Command, help: str) -> argparse.ArgumentParser:
        sub = verbs.add_parser(name, parents=[shared], help=help, description=help)
        sub.set_defaults(command=command)
        return sub

    submit = verb("submit", _submit, "submit a batch from JSON Lines; prints the batch id")
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
        _watch,
        "follow a batch to its end: exit 0 if every item succeeded, 1 if any failed "
        "or was cancelled",
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

    get = verb("get", _get, "show one batch")
    get.add_argument("batch_id", metavar="BATCH_ID")
    _add_json(get)

    list_ = verb("list", _list, "list batches, newest first")
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

    cancel = verb("cancel", _cancel, "cancel a batch (idempotent)")
    cancel.add_argument("batch_id", metavar="BATCH_ID")
    _add_json(cancel)

    retry = verb(
        "retry", _retry, "run FAILED and EXPIRED items again; the batch returns to RUNNING"
    )
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

    delete = verb("delete", _delete, "delete a finished batch and its item outcomes")
    delete.add_argument("batch_id", metavar="BATCH_ID")

    items = verb("items", _items, "list item outcomes; failed items with their error")
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

    handlers = verb("handlers", _handlers, "list the handlers that workers serve")
    _add_json(handlers)
    return parser


def _options(args: argparse.Namespace) -> BatchOptions:
    return BatchOptions(
        chunk_size=args.chunk_size or 0,
        retry_policy=RetryPolicy(max_attempts=args.max_attempts) if args.max_attempts else None,
        max_concurrent=args.max_concurrent or 0,
        max_per_second=args.max_per_second or 0.0,
        burst=args.burst or 0,
        rate_limit_key=args.rate_limit_key or "",
        priority=args.priority or 0,
        item_timeout=timedelta(seconds=args.item_timeout) if args.item_timeout else None,
        completion_window=(
            timedelta(seconds=args.completion_window) if args.completion_window else None
        ),
    )


@contextmanager
def _open_input(path: str) -> Iterator[BinaryIO]:
    if path == "-":
        try:
            fd = sys.stdin.fileno()
        except (AttributeError, OSError, ValueError):  # a stand-in stdin without a descriptor
            yield sys.stdin.buffer
            return
        # A reader of our own, not sys.stdin: the upload reads it on a grpc thread,
        # and after Ctrl-C that thread may still be blocked in a read. Were it holding
        # sys.stdin's lock, the interpreter would abort at exit trying to close it.
        with open(fd, "rb", closefd=False) as stream:
            yield stream
        return
    try:
        stream = open(path, "rb")  # noqa: SIM115 (closed below; opening errors reported apart)
    except OSError as exc:
        raise _UsageError(f"cannot read {path}: {exc.strerror}") from None
    with stream:
        yield stream


def _submit(client: Client, args: argparse.Namespace, io: _Io) -> int:
    # Always UploadBatch: one path for 1 item or 10 million, lines read as they are
    # sent, no 10,000-item / 4 MiB SubmitBatch limits to trip over. The service
    # stages uploads exactly like submits, so small inputs lose nothing.
    with _open_input(args.file) as stream:
        result = client.upload(
            args.handler,
            read_items(stream),
            options=_options(args),
            metadata=dict(args.metadata),
            request_id=args.request_id,
            batch_id=args.batch_id,
            items_per_message=args.items_per_message,
        )
    batch = result.batch
    if args.json:
        print_json({"batch": batch, "replayed": result.replayed}, io.out)
    else:
        print(batch.batch_id, file=io.out, flush=True)
    if result.replayed:
        print(f"request {batch.request_id} was seen before: the original batch", file=io.err)
    if not args.watch:
        return 0
    return _follow(client, batch.batch_id, args, io)


def _follow(client: Client, batch_id: str, args: argparse.Namespace, io: _Io) -> int:
    return follow(
        client,
        batch_id,
        min_interval=args.interval,
        console=io.console,
        out=io.out,
        err=io.err,
        as_json=args.json,
    )


def _watch(client: Client, args: argparse.Namespace, io: _Io) -> int:
    return _follow(client, args.batch_id, args, io)


def _get(client: Client, args: argparse.Namespace, io: _Io) -> int:
    batch = client.get(args.batch_id)
    if args.json:
        print_json(batch, io.out)
    else:
        print_batch(batch, io.out)
    return 0


def _limited(items: Iterator[T], limit: int) -> Iterator[T]:
    for n, item in enumerate(items):
        if limit and n >= limit:
            return
        yield item


def _list(client: Client, args: argparse.Namespace, io: _Io) -> int:
    page_size = min(args.limit, 1000) if args.limit else 0
    batches = client.list(states=[BatchState(s) for s in args.state], page_size=page_size)
    count = print_batches(_limited(batches, args.limit), io.out, as_json=args.json)
    if not count and not args.json:
        print("no batches", file=io.err)
    return 0


def _cancel(client: Client, args: argparse.Namespace, io: _Io) -> int:
    batch = client.cancel(args.batch_id)
    if args.json:
        print_json(batch, io.out)
    else:
        print(f"{batch.batch_id} {batch.state.name}", file=io.out)
    return 0


def _retry(client: Client, args: argparse.Namespace, io: _Io) -> int:
    result = client.retry(args.batch_id, args.custom_ids, request_id=args.request_id)
    if args.json:
        print_json(result, io.out)
    else:
        print(
            f"{result.batch.batch_id} {result.batch.state.name}: {result.requeued} items requeued",
            file=io.out,
            flush=True,
        )
    if not args.watch:
        return 0
    return _follow(client, args.batch_id, args, io)


def _delete(client: Client, args: argparse.Namespace, io: _Io) -> int:
    client.delete(args.batch_id)
    print(f"{args.batch_id} deleted", file=io.out)
    return 0


def _items(client: Client, args: argparse.Namespace, io: _Io) -> int:
    page_size = min(args.limit, 1000) if args.limit else 1000
    items = client.items(
        args.batch_id, states=[ItemState(s) for s in args.state], page_size=page_size
    )
    count = print_items(_limited(items, args.limit), io.out, as_json=args.json)
    if not count and not args.json:
        print("no items", file=io.err)
    return 0


def _handlers(client: Client, args: argparse.Namespace, io: _Io) -> int:
    print_handlers(client.handlers(), io.out, as_json=args.json)
    return 0


class _UsageError(Exception):
    """A problem with the command line or local files, reported as `error: ...`."""


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the `batchd` command; returns its exit status."""
    args = build_parser().parse_args(argv)
    io = _Io(sys.stdout, sys.stderr)
    target = getattr(args, "target", None) or os.environ.get(TARGET_ENV) or DEFAULT_TARGET
    timeout = getattr(args, "timeout", DEFAULT_TIMEOUT)
    command: Command = args.command
    try:
        with Client(target, timeout=timeout) as client:
            return command(client, args, io)
    except BatchdError as exc:
        print_error(exc, io.err)
        return 2
    except _UsageError as exc:
        print(f"error: {exc}", file=io.err)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=io.err)
        return 130
    except BrokenPipeError:
        # `batchd list | head`: the reader left; say nothing more.
        _silence_stdout()
        return 0


def _silence_stdout() -> None:
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass


if __name__ == "__main__":
    sys.exit(main())
