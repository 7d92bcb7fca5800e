"""Redis refusing writes, as batchd's error tree names it (docs/operations.md, "When Redis
is unreachable or full").

Redis answers, but will not write:

- `OOM command not allowed when used memory > 'maxmemory'`: full, under the
  `noeviction` policy (the only one batchd runs with: any other evicts batches).
  `Exhausted`, with a retry delay: it clears as batches expire or memory is added.
- `MISCONF ...`: its last persistence write (an RDB snapshot or the append-only file)
  failed, and `stop-writes-on-bgsave-error` stops writes until one succeeds.
  `Unavailable`: an operator has a disk to fix.
- `READONLY You can't write against a read only replica`: a replica (a failover under
  way, or a URL naming the wrong server). `Unavailable`.

Redis checks these before a script, a transaction's commands or a single command runs,
so a refused write has written nothing: each of batchd's writes is one of those.
"""

from __future__ import annotations

from redis.exceptions import OutOfMemoryError, ReadOnlyError, ResponseError

from batchd.core.errors import BatchdError, Exhausted, Unavailable

__all__ = ["FULL_RETRY_AFTER", "redis_refusal", "refuses_writes"]

# RetryInfo of a write refused for want of memory: batches expire, or an operator acts.
FULL_RETRY_AFTER = 30.0
_MISCONF = "MISCONF "


# How redis-py prefixes the error of a command in a pipeline: the command (its keys and
# arguments, which a submitter may have chosen) comes first, Redis's reply after.
_IN_PIPELINE = " of pipeline caused error: "


def refuses_writes(exc: BaseException) -> bool:
    """`exc` is Redis refusing a write for a state of its own (full, unable to persist,
    a replica), not a mistake in the command."""
    if isinstance(exc, OutOfMemoryError | ReadOnlyError):
        return True
    return _misconf(exc)


def _misconf(exc: BaseException) -> bool:
    """MISCONF, which redis-py raises as a plain ResponseError."""
    if not isinstance(exc, ResponseError):
        return False
    reply = str(exc.args[0]) if exc.args else ""
    reply = reply.rpartition(_IN_PIPELINE)[2].lstrip("('\"")
    return reply.startswith(_MISCONF)


def redis_refusal(exc: BaseException) -> BatchdError | None:
    """The error a caller is told for Redis refusing a write, or None when `exc` is not
    one (see the module docstring)."""
    if isinstance(exc, OutOfMemoryError):
        return Exhausted(
            "the batch store is full (Redis refuses writes: out of memory); nothing was "
            "written, try again later",
            FULL_RETRY_AFTER,
        )
    if isinstance(exc, ReadOnlyError):
        return Unavailable(
            "the batch store is read-only (Redis answered as a replica); nothing was "
            "written, try again"
        )
    if _misconf(exc):
        return Unavailable(
            "the batch store cannot save to disk (Redis refuses writes: MISCONF); nothing "
            "was written, try again"
        )
    return None
