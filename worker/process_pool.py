"""The process pools of handlers whose work would stall the worker's event loop (image.resize's
decoding, email.send's rendering): `HandlerPool`, started by the first task, replaced
when broken; and `serve_owner`, what each of its processes does first — live no longer
than the worker that owns it, and leave Ctrl-C to that worker."""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import os
import signal
import threading
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from typing import Any, TypeVar

__all__ = ["OWNER_CHECK", "HandlerPool", "serve_owner"]

# How often a pool process checks that the worker that owns it is still alive.
OWNER_CHECK = 1.0

T = TypeVar("T")


class HandlerPool:
    """`processes` processes of one handler in one worker, each set up by `initializer`
    (which must call `serve_owner` with the `owner_pid` it is given last). Started by
    the first task — a worker that never runs the handler starts no process —, every
    process at once. Processes come from a "forkserver" (else "spawn"): the worker runs
    an event loop and threads, which a fork would copy in an unknown state; `preload`
    names modules the server imports once, so that its processes start without
    importing them again."""

    def __init__(
        self,
        processes: int,
        initializer: Callable[..., None],
        initargs: tuple[Any, ...] = (),
        *,
        preload: tuple[str, ...] = (),
    ) -> None:
        self.processes = max(processes, 1)
        self._initializer = initializer
        self._initargs = initargs
        self._preload = list(preload)
        self._pool: ProcessPoolExecutor | None = None
        self._starting = asyncio.Lock()

    @property
    def executor(self) -> ProcessPoolExecutor | None:
        """The running pool, None before the first task and after a `replace`."""
        return self._pool

    async def run(self, function: Callable[..., T], *args: Any) -> T:
        """`function(*args)` in a process of the pool (BrokenProcessPool if one died:
        `replace` the pool then)."""
        pool = await self.started()
        return await asyncio.get_running_loop().run_in_executor(pool, function, *args)

    async def started(self) -> ProcessPoolExecutor:
        """The pool, started now if it is not: every process, before the first task."""
        async with self._starting:
            if self._pool is None:
                pool = self._new()
                loop = asyncio.get_running_loop()
                try:
                    await asyncio.gather(
                        *(loop.run_in_executor(pool, _warm_up) for _ in range(self.processes))
                    )
                except BaseException:
                    pool.shutdown(wait=False, cancel_futures=True)
                    raise
                self._pool = pool
            return self._pool

    def replace(self, broken: ProcessPoolExecutor, *, kill: bool = False) -> None:
        """Drops a broken pool (`kill`: its processes too, for a task that overran); the
        next task starts a fresh one. Tasks that shared the broken pool all land here:
        only the first replaces it."""
        if self._pool is not broken:
            return
        self._pool = None
        if kill:
            # ProcessPoolExecutor has no way to stop a running task (kill_workers is
            # Python 3.14's): its processes are killed directly. Pinned by a test.
            for process in list(broken._processes.values()):
                with contextlib.suppress(ProcessLookupError):
                    process.kill()
        broken.shutdown(wait=False, cancel_futures=True)

    async def close(self) -> None:
        """Shuts the pool down, waiting for its running tasks (off the event loop)."""
        if self._pool is not None:
            pool, self._pool = self._pool, None
            await asyncio.to_thread(pool.shutdown, wait=True, cancel_futures=True)

    def _new(self) -> ProcessPoolExecutor:
        context: multiprocessing.context.BaseContext
        if "forkserver" in multiprocessing.get_all_start_methods():
            forkserver = multiprocessing.get_context("forkserver")
            if self._preload:
                # Only counts before the server's first start; no other part of batchd
                # sets a list.
                forkserver.set_forkserver_preload(self._preload)
            context = forkserver
        else:
            context = multiprocessing.get_context("spawn")
        return ProcessPoolExecutor(
            max_workers=self.processes,
            mp_context=context,
            initializer=self._initializer,
            initargs=(*self._initargs, os.getpid()),
        )


def _warm_up() -> None:
    """Nothing: submitted once per process at start-up, so that the processes exist (and
    have run their initializer) before the first task needs them."""


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
