"""A tenant's event follower blocks in XREAD for less than the server waits for a Redis
reply: a quiet stream's XREAD must not read as a silent Redis."""

from __future__ import annotations

import pytest

from batchd.core.config import Settings
from batchd.server.batch_events import FOLLOW_BLOCK_MS, follow_block_ms


@pytest.mark.parametrize("timeout", [Settings.redis_timeout, 1.0, 0.2, 0.001])
def test_the_follower_blocks_for_half_the_reply_bound_at_most(timeout: float) -> None:
    block = follow_block_ms(timeout)
    assert 1 <= block <= timeout * 1000 / 2 or block == 1
    assert block <= FOLLOW_BLOCK_MS


def test_without_a_reply_bound_the_follower_blocks_as_long_as_ever() -> None:
    assert follow_block_ms(0) == FOLLOW_BLOCK_MS
