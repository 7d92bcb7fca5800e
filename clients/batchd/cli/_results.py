"""`batchd results`: a finished batch's results as one JSON Lines file on stdout.

Each line is one item (docs/client.md, "Results as one file"). Lines are written and
flushed a message at a time, so that after an error or Ctrl-C the file ends with a whole
line and the cursor printed on stderr resumes it: `batchd results ID --after CURSOR >>
out.jsonl`. A progress bar shows on stderr when it is a terminal.
"""

from __future__ import annotations

from typing import BinaryIO, TextIO

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from batchd.client import BatchdError, Client, ExportOrder

__all__ = ["export_to", "resume_hint"]


def resume_hint(batch_id: str, order: ExportOrder, cursor: str) -> str:
    """The command that carries on an export broken off after `cursor`."""
    flag = " --order id" if order is ExportOrder.CUSTOM_ID else ""
    return f"resume with: batchd results {batch_id}{flag} --after {cursor} >> FILE"


class Interrupted(Exception):
    """An export broken off (an error or Ctrl-C) after `written` lines."""

    def __init__(self, cause: BaseException, cursor: str, written: int) -> None:
        super().__init__(str(cause))
        self.cause = cause
        self.cursor = cursor
        self.written = written


def export_to(
    client: Client,
    batch_id: str,
    out: BinaryIO,
    err: TextIO,
    *,
    order: ExportOrder,
    after: str = "",
) -> int:
    """Writes the export to `out`; returns the lines written. Raises Interrupted, with
    the cursor to resume from, when the export breaks off after some lines."""
    cursor, written = after, 0
    progress = _progress(err)
    task = None
    try:
        for page in client.export_results(batch_id, order=order, after=after):
            out.write(page.lines)
            out.flush()
            cursor, written = page.cursor, written + page.line_count
            if progress is not None:
                if task is None:
                    progress.start()
                    task = progress.add_task("exporting", total=page.total_items)
                progress.update(task, completed=page.position)
    except (BatchdError, KeyboardInterrupt) as exc:
        if cursor and cursor != after:
            raise Interrupted(exc, cursor, written) from exc
        raise
    finally:
        if progress is not None:
            progress.stop()
    return written


def _progress(err: TextIO) -> Progress | None:
    if not err.isatty():
        return None
    return Progress(
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=Console(file=err),
        transient=True,
    )
