"""What every handler's process pool (image.resize's, email.send's renders) does in
each of its processes: live no longer than the worker that owns it, and leave Ctrl-C to
that worker."""

from __future__ import annotations

import os
import signal
import threading
import time

__all__ = ["OWNER_CHECK", "serve_owner"]

# How often a pool process checks that the worker that owns it is still alive.
OWNER_CHECK = 1.0


def serve_owner(owner_pid: int | None) -> None:
    """For a pool process's initializer. A terminal's Ctrl-C reaches the whole process
    group: the worker drains and then shuts its pool down, so the process ignores SIGINT
    rather than die mid-task. With `owner_pid`, the process exits once that process (the
    worker) is gone: a SIGKILLed worker cannot shut its pool down, and a pool process (a
    child of the forkserver, not of the worker) would otherwise wait for work for ever,
    holding its memory."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if owner_pid is not None:
        threading.Thread(
            target=_exit_without, args=(owner_pid,), name="owner watch", daemon=True
        ).start()


def _exit_without(owner_pid: int) -> None:
    while True:
        time.sleep(OWNER_CHECK)
        try:
            os.kill(owner_pid, 0)  # signal 0: only asks whether the process exists
        except ProcessLookupError:
            os._exit(0)
        except PermissionError:
            pass  # exists, under another user: not ours to judge
