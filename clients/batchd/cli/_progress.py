"""`batchd watch`: a live progress bar on a terminal, one line per snapshot elsewhere.

The client's `watch()` reconnects by itself; a lost stream shows at once, as
"reconnecting…" in the bar or as one line on stderr when piped, and the display
carries on with the next snapshot. Ctrl-C stops the watch, not the batch (exit 130).
Exit status: 0 when the batch COMPLETED with every item succeeded, 1 when items
failed, expired or were cancelled (or the batch FAILED or was CANCELLED).
"""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from typing import TextIO

from rich.console import Console, ConsoleOptions, Group, RenderableType, RenderResult
from rich.live import Live
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from batchd.cli._output import format_duration, print_json
from batchd.client import BatchProgress, BatchState, Client, WatchReconnect, WatchRetry

__all__ = ["INTERRUPTED_EXIT", "WATCH_RETRY", "exit_status", "follow", "render", "snapshot_line"]

INTERRUPTED_EXIT = 130
"""The exit status of a watch stopped by Ctrl-C, as for any SIGINT."""

WATCH_RETRY = WatchRetry(initial_backoff=0.2, max_backoff=2.0, max_retries=60)
"""A person is watching: reconnect every two seconds at most, for a minute or two."""

STALE_AFTER = 8.0
"""Seconds without a message (the service sends a heartbeat every 5 s) after which the
bar says how long it has heard nothing."""

_STATE_STYLES = {
    BatchState.QUEUED: "yellow",
    BatchState.RUNNING: "cyan",
    BatchState.CANCELLING: "magenta",
    BatchState.COMPLETED: "green",
    BatchState.FAILED: "red",
    BatchState.CANCELLED: "magenta",
    BatchState.PAUSED: "yellow",
}


def exit_status(progress: BatchProgress | None) -> int:
    """0 for a batch COMPLETED with every item succeeded, else 1."""
    if progress is None:
        return 1
    ok = (
        progress.state == BatchState.COMPLETED and progress.counts.succeeded == progress.total_items
    )
    return 0 if ok else 1


def _iso(value: datetime | None) -> str:
    return value.isoformat().replace("+00:00", "Z") if value else "-"


def snapshot_line(p: BatchProgress) -> str:
    """One snapshot as one line of `key=value`s, for logs and pipes."""
    c = p.counts
    line = (
        f"{_iso(p.observe_time)} {p.batch_id} {p.state.name} {c.finished}/{p.total_items} "
        f"({p.fraction * 100:.1f}%) succeeded={c.succeeded} failed={c.failed} "
        f"running={c.running} claimed={c.claimed} pending={c.pending} "
        f"cancelled={c.cancelled} expired={c.expired} rate={p.items_per_second:.1f}/s "
        f"eta={format_duration(p.eta)}"
    )
    if p.effective_rate:
        line += f" limit={p.effective_rate:.1f}/s"
    if p.uploading:
        line += " uploading=yes"
    if p.waiting_reason:
        # Last and JSON-quoted: the reason is free text, the fields before it are not.
        line += f" waiting={json.dumps(p.waiting_reason, ensure_ascii=False)}"
    return line


def reconnect_line(batch_id: str, lost: WatchReconnect) -> str:
    """The line a piped watch writes (to stderr) when it loses its stream."""
    now = _iso(datetime.now(UTC))
    return f"{now} {batch_id} reconnecting… ({lost.error.code.name}: {lost.error.message})"


def render(
    batch_id: str,
    p: BatchProgress | None,
    *,
    lost: WatchReconnect | None = None,
    lost_for: float = 0.0,
    silent_for: float = 0.0,
) -> RenderableType:
    """The live display: state, a bar with counts, items/s and ETA; while the stream is
    `lost`, since `lost_for` seconds, "reconnecting…" instead of the rate and ETA."""
    if p is None:
        if lost is not None:
            return _reconnecting(batch_id, lost, lost_for)
        return Text(f"batch {batch_id}: connecting…", style="dim")
    c = p.counts
    head = Text.assemble(
        ("batch ", "dim"),
        (p.batch_id, "bold"),
        "  ",
        (p.state.name, _STATE_STYLES.get(p.state, "")),
    )
    bar = Table.grid(padding=(0, 2))
    bar.add_row(
        ProgressBar(total=max(p.total_items, 1), completed=c.finished, width=40),
        Text(f"{p.fraction * 100:5.1f}%  {c.finished:,}/{p.total_items:,}"),
    )
    counts = Text.assemble(
        ("succeeded ", "dim"),
        (f"{c.succeeded:,}", "green"),
        ("  failed ", "dim"),
        (f"{c.failed:,}", "bold red" if c.failed else ""),
        ("  running ", "dim"),
        f"{c.running:,}",
        ("  claimed ", "dim"),
        f"{c.claimed:,}",
        ("  pending ", "dim"),
        f"{c.pending:,}",
        ("  cancelled ", "dim"),
        (f"{c.cancelled:,}", "magenta" if c.cancelled else ""),
    )
    if c.expired:
        counts.append("  expired ", "dim")
        counts.append(f"{c.expired:,}", "bold yellow")
    lines: list[RenderableType] = [head, bar, counts]
    if lost is not None:
        # The rate and ETA of a snapshot that is getting old would mislead.
        lines.append(_reconnecting(batch_id, lost, lost_for))
        return Group(*lines)
    lines.append(_rate(p))
    if p.waiting_reason and not p.state.is_terminal:
        lines.append(Text.assemble(("waiting  ", "dim"), (p.waiting_reason, "yellow")))
    if p.uploading and not p.state.is_terminal:
        lines.append(Text.assemble(("uploading  ", "dim"), "items are still coming"))
    if silent_for >= STALE_AFTER:
        lines.append(Text(f"no word from the server for {silent_for:.0f}s", style="yellow"))
    return Group(*lines)


def _rate(p: BatchProgress) -> Text:
    elapsed = None
    if p.start_time is not None:
        end = p.end_time or p.observe_time
        elapsed = (end - p.start_time) if end is not None else None
    rate = Text.assemble(
        (f"{p.items_per_second:,.1f}", "bold"),
        (" items/s  ETA ", "dim"),
        format_duration(p.eta) if not p.state.is_terminal else "done",
    )
    if elapsed is not None:
        rate.append("  elapsed ", "dim")
        rate.append(format_duration(elapsed))
    if p.effective_rate:
        rate.append("  limit ", "dim")
        rate.append(f"{p.effective_rate:,.1f}/s")
    return rate


def _reconnecting(batch_id: str, lost: WatchReconnect, lost_for: float) -> Text:
    return Text.assemble(
        ("reconnecting…", "bold yellow"),
        (f" {lost_for:.0f}s, attempt {lost.attempt}", "yellow"),
        (f"  ({lost.error.code.name}: {lost.error.message})", "dim"),
    )


class _LiveView:
    """What the bar shows; Live re-renders it four times a second, so the time since the
    stream was lost (or last spoke) counts up while the watch waits."""

    def __init__(self, batch_id: str) -> None:
        self.batch_id = batch_id
        self.last: BatchProgress | None = None
        self.lost: WatchReconnect | None = None
        self._lost_at = 0.0
        self._heard_at = time.monotonic()

    def snapshot(self, progress: BatchProgress) -> None:
        self.last, self.lost = progress, None
        self._heard_at = time.monotonic()

    def reconnecting(self, lost: WatchReconnect) -> None:
        if self.lost is None:
            self._lost_at = time.monotonic()
        self.lost = lost

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        now = time.monotonic()
        yield render(
            self.batch_id,
            self.last,
            lost=self.lost,
            lost_for=now - self._lost_at,
            silent_for=now - self._heard_at,
        )


def follow(
    client: Client,
    batch_id: str,
    *,
    min_interval: float,
    console: Console,
    out: TextIO,
    err: TextIO,
    as_json: bool,
) -> int:
    """Watches a batch to its end, printing as it goes; returns the exit status
    (`INTERRUPTED_EXIT` after Ctrl-C, having said how to watch the batch again)."""
    last: BatchProgress | None = None
    try:
        if as_json or not console.is_terminal:
            last = _follow_lines(client, batch_id, min_interval, out, err, as_json)
        else:
            last = _follow_bar(client, batch_id, min_interval, console)
    except KeyboardInterrupt:
        print(
            f"interrupted: batch {batch_id} goes on; to follow it again: batchd watch {batch_id}",
            file=err,
            flush=True,
        )
        return INTERRUPTED_EXIT
    if last is not None and not as_json:
        _hint(batch_id, last, err)
    return exit_status(last)


def _follow_lines(
    client: Client, batch_id: str, min_interval: float, out: TextIO, err: TextIO, as_json: bool
) -> BatchProgress | None:
    def lost(reconnect: WatchReconnect) -> None:
        if reconnect.attempt == 1:  # one line per loss, not one per attempt
            print(reconnect_line(batch_id, reconnect), file=err, flush=True)

    last = None
    for progress in client.watch(
        batch_id, min_interval=min_interval, retry=WATCH_RETRY, on_reconnect=lost
    ):
        last = progress
        if as_json:
            print_json(progress, out)
        else:
            print(snapshot_line(progress), file=out, flush=True)
    return last


def _follow_bar(
    client: Client, batch_id: str, min_interval: float, console: Console
) -> BatchProgress | None:
    view = _LiveView(batch_id)
    with Live(view, console=console, refresh_per_second=4) as live:

        def lost(reconnect: WatchReconnect) -> None:
            view.reconnecting(reconnect)
            live.refresh()

        for progress in client.watch(
            batch_id, min_interval=min_interval, retry=WATCH_RETRY, on_reconnect=lost
        ):
            view.snapshot(progress)
            live.refresh()
    return view.last


def _hint(batch_id: str, last: BatchProgress, err: TextIO) -> None:
    c = last.counts
    if c.failed:
        items = "item" if c.failed == 1 else "items"
        print(f"{c.failed} {items} failed: batchd items {batch_id} --state failed", file=err)
    if c.expired:
        print(f"{c.expired} items expired: batchd items {batch_id} --state expired", file=err)
    if c.failed or c.expired:
        print(f"to run them again: batchd retry {batch_id}", file=err)
