"""`batchd watch`: a live progress bar on a terminal, one line per snapshot elsewhere.

The client's `watch()` reconnects by itself, so a server restart only pauses the
display. Exit status: 0 when the batch COMPLETED with every item succeeded, 1 when
items failed, expired or were cancelled (or the batch FAILED or was CANCELLED).
"""

from __future__ import annotations

from typing import TextIO

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from batchd.cli._output import format_duration, print_json
from batchd.client import BatchProgress, BatchState, Client

__all__ = ["exit_status", "follow", "snapshot_line"]

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


def snapshot_line(p: BatchProgress) -> str:
    """One snapshot as one line of `key=value`s, for logs and pipes."""
    c = p.counts
    when = p.observe_time.isoformat().replace("+00:00", "Z") if p.observe_time else "-"
    return (
        f"{when} {p.batch_id} {p.state.name} {c.finished}/{p.total_items} "
        f"({p.fraction * 100:.1f}%) succeeded={c.succeeded} failed={c.failed} "
        f"running={c.running} pending={c.pending} cancelled={c.cancelled} "
        f"expired={c.expired} rate={p.items_per_second:.1f}/s eta={format_duration(p.eta)}"
        + (f" limit={p.effective_rate:.1f}/s" if p.effective_rate else "")
    )


def render(batch_id: str, p: BatchProgress | None) -> RenderableType:
    """The live display: state, a bar with counts, items/s and ETA."""
    if p is None:
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
        ("  pending ", "dim"),
        f"{c.pending:,}",
        ("  cancelled ", "dim"),
        (f"{c.cancelled:,}", "magenta" if c.cancelled else ""),
    )
    if c.expired:
        counts.append("  expired ", "dim")
        counts.append(f"{c.expired:,}", "bold yellow")
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
    return Group(head, bar, counts, rate)


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
    """Watches a batch to its end, printing as it goes; returns the exit status."""
    last: BatchProgress | None = None
    snapshots = client.watch(batch_id, min_interval=min_interval)
    if as_json or not console.is_terminal:
        for progress in snapshots:
            last = progress
            if as_json:
                print_json(progress, out)
            else:
                print(snapshot_line(progress), file=out, flush=True)
    else:
        with Live(render(batch_id, None), console=console, refresh_per_second=4) as live:
            for progress in snapshots:
                last = progress
                live.update(render(batch_id, progress))
    if last is not None and not as_json:
        _hint(batch_id, last, err)
    return exit_status(last)


def _hint(batch_id: str, last: BatchProgress, err: TextIO) -> None:
    c = last.counts
    if c.failed:
        print(f"{c.failed} items failed: batchd items {batch_id} --state failed", file=err)
    if c.expired:
        print(f"{c.expired} items expired: batchd items {batch_id} --state expired", file=err)
    if c.failed or c.expired:
        print(f"to run them again: batchd retry {batch_id}", file=err)
