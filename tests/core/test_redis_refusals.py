"""Which Redis errors are Redis refusing writes, and what callers are told of them."""

from __future__ import annotations

import pytest
from redis.exceptions import OutOfMemoryError, ReadOnlyError, ResponseError

from batchd.core.errors import Exhausted, Unavailable
from batchd.core.redis_refusals import redis_refusal, refuses_writes

MISCONF = (
    "MISCONF Valkey is configured to save RDB snapshots, but it's currently unable to "
    "persist to disk."
)


def in_pipeline(command: str, reply: str) -> ResponseError:
    """A pipeline's error as redis-py annotates it."""
    return ResponseError(f"Command # 1 ({command}) of pipeline caused error: ({reply!r},)")


@pytest.mark.parametrize(
    ("error", "kind"),
    [
        (OutOfMemoryError("command not allowed when used memory > 'maxmemory'."), Exhausted),
        (ReadOnlyError("You can't write against a read only replica."), Unavailable),
        (ResponseError(MISCONF), Unavailable),
        (in_pipeline("SET batchd:b:{x}:lock t PX 3600000 NX", MISCONF), Unavailable),
    ],
)
def test_a_refused_write_is_exhausted_or_unavailable(error: Exception, kind: type) -> None:
    assert refuses_writes(error)
    refusal = redis_refusal(error)
    assert isinstance(refusal, kind)
    assert refusal is not None
    assert "nothing was written" in refusal.message
    if isinstance(refusal, Exhausted):
        assert refusal.retry_after > 0


@pytest.mark.parametrize(
    "error",
    [
        ResponseError("ERR wrong number of arguments for 'set' command"),
        # A submitter's batch id in the command is not Redis's reply.
        in_pipeline("SET batchd:b:{MISCONF }:lock t", "ERR syntax error"),
        ValueError("MISCONF"),
    ],
)
def test_other_errors_are_not_refusals(error: Exception) -> None:
    assert not refuses_writes(error)
    assert redis_refusal(error) is None
