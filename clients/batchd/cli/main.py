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

from batchd.cli._auth import token_from
from batchd.cli._jsonl import JsonlItems
from batchd.cli._output import (
    print_batch,
    print_batches,
    print_error,
    print_handlers,
    print_items,
    print_json,
    to_jsonable,
)
from batchd.cli._parser import TARGET_ENV, build_parser
from batchd.cli._progress import follow
from batchd.cli._results import Interrupted, export_to, resume_hint
from batchd.cli._tls import TLSSetupError, explain, tls_from
from batchd.client import (
    DEFAULT_TARGET,
    DEFAULT_TIMEOUT,
    Batch,
    BatchdError,
    BatchOptions,
    BatchState,
    Client,
    ExportOrder,
    ItemState,
    RetryPolicy,
)

__all__ = ["main"]

T = TypeVar("T")


class _Io:
    """Where output goes; one per run so that tests can capture it."""

    def __init__(self, out: TextIO, err: TextIO) -> None:
        self.out = out
        self.err = err
        self.console = Console(file=out)


Command = Callable[[Client, argparse.Namespace, _Io], int]

# Someone is watching: find a restarted server within two seconds, not grpc's
# default of up to two minutes between connection attempts.
_CHANNEL_OPTIONS = (
    ("grpc.initial_reconnect_backoff_ms", 200),
    ("grpc.max_reconnect_backoff_ms", 2000),
)


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
        callback_url=args.callback_url or "",
        block_size=args.block_size or 0,
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
        count = _count_items(stream) if args.start_early else None
        items = JsonlItems(stream)
        try:
            result = client.upload(
                args.handler,
                items,
                options=_options(args),
                metadata=dict(args.metadata),
                request_id=args.request_id,
                batch_id=args.batch_id,
                items_per_message=args.items_per_message,
                start_time=args.start_at,
                start_early=args.start_early,
                item_count=count,
            )
        except BatchdError as exc:
            # The client checks each item as it pulls it: a fault it names is the last
            # line read.
            raise items.locate(exc) from None
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


def _count_items(stream: BinaryIO) -> int:
    """The items of a JSONL file (its non-blank lines), counted ahead of an upload that
    announces them (--start-early); the stream is rewound."""
    if not stream.seekable():
        raise _UsageError(
            "--start-early needs FILE to be a file, not a pipe: it counts the items first"
        )
    count = sum(1 for line in stream if line.strip())
    stream.seek(0)
    return count


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


def _events(client: Client, args: argparse.Namespace, io: _Io) -> int:
    events = client.watch_batches(
        states=[BatchState(s) for s in args.state],
        labels=dict(args.label),
        handler=args.handler,
        types=args.type,
        cursor=args.cursor,
        from_oldest=args.from_oldest,
        heartbeats=args.heartbeats,
    )
    printed = 0
    for event in events:
        if event.heartbeat:
            print_json({"heartbeat": True, "cursor": event.cursor}, io.out)
            continue
        line = to_jsonable(event)
        del line["heartbeat"]
        print_json(line, io.out)
        printed += 1
        if args.limit and printed >= args.limit:
            break
    return 0


def _cancel(client: Client, args: argparse.Namespace, io: _Io) -> int:
    return _print_state(client.cancel(args.batch_id), args, io)


def _print_state(batch: Batch, args: argparse.Namespace, io: _Io) -> int:
    if args.json:
        print_json(batch, io.out)
    else:
        print(f"{batch.batch_id} {batch.state.name}", file=io.out)
    return 0


def _pause(client: Client, args: argparse.Namespace, io: _Io) -> int:
    return _print_state(client.pause(args.batch_id), args, io)


def _resume(client: Client, args: argparse.Namespace, io: _Io) -> int:
    return _print_state(client.resume(args.batch_id), args, io)


def _update(client: Client, args: argparse.Namespace, io: _Io) -> int:
    changes = {
        "priority": args.priority,
        "max_per_second": args.max_per_second,
        "burst": args.burst,
        "max_concurrent": args.max_concurrent,
    }
    if all(value is None for value in changes.values()):
        raise _UsageError(
            "update: give at least one of --priority, --max-per-second, --burst, --max-concurrent"
        )
    batch = client.update(
        args.batch_id,
        priority=args.priority,
        max_per_second=args.max_per_second,
        burst=args.burst,
        max_concurrent=args.max_concurrent,
    )
    if args.json:
        print_json(batch, io.out)
    else:
        options = batch.options
        print(
            f"{batch.batch_id} {batch.state.name}: priority {options.priority}, "
            f"max_per_second {options.max_per_second}, burst {options.burst}, "
            f"max_concurrent {options.max_concurrent}",
            file=io.out,
        )
    return 0


def _retry(client: Client, args: argparse.Namespace, io: _Io) -> int:
    result = client.retry(args.batch_id, args.custom_ids, request_id=args.request_id)
    if args.json:
        print_json(result, io.out)
    else:
        print(
            f"{result.batch.batch_id} {result.batch.state.name}: {result.requeued} "
            f"{'item' if result.requeued == 1 else 'items'} requeued",
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


def _results(client: Client, args: argparse.Namespace, io: _Io) -> int:
    order = ExportOrder.parse(args.order)
    out = getattr(io.out, "buffer", None)
    if out is None:
        raise _UsageError("results: stdout takes no bytes")
    io.out.flush()
    try:
        written = export_to(client, args.batch_id, out, io.err, order=order, after=args.after)
    except Interrupted as exc:
        print(f"{exc.written} lines written before the export broke off", file=io.err)
        print(resume_hint(args.batch_id, order, exc.cursor), file=io.err)
        raise exc.cause from None
    if io.err.isatty():
        print(f"{written} results of batch {args.batch_id}", file=io.err)
    return 0


def _handlers(client: Client, args: argparse.Namespace, io: _Io) -> int:
    print_handlers(client.handlers(), io.out, as_json=args.json)
    return 0


_COMMANDS: dict[str, Command] = {
    "submit": _submit,
    "watch": _watch,
    "get": _get,
    "list": _list,
    "events": _events,
    "cancel": _cancel,
    "retry": _retry,
    "pause": _pause,
    "resume": _resume,
    "update": _update,
    "delete": _delete,
    "items": _items,
    "results": _results,
    "handlers": _handlers,
}


class _UsageError(Exception):
    """A problem with the command line or local files, reported as `error: ...`."""


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the `batchd` command; returns its exit status."""
    args = build_parser().parse_args(argv)
    io = _Io(sys.stdout, sys.stderr)
    target = getattr(args, "target", None) or os.environ.get(TARGET_ENV) or DEFAULT_TARGET
    timeout = getattr(args, "timeout", DEFAULT_TIMEOUT)
    command = _COMMANDS[args.verb]
    token = token_from(args, os.environ)
    tls = None
    try:
        tls = tls_from(args, os.environ)
        with Client(
            target, timeout=timeout, channel_options=_CHANNEL_OPTIONS, token=token, tls=tls
        ) as client:
            return command(client, args, io)
    except BatchdError as exc:
        print_error(explain(exc, target, tls), io.err)
        return 2
    except (_UsageError, TLSSetupError) as exc:
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
