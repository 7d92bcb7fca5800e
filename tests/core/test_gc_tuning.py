"""The young-generation threshold a process keeps while it holds open streams."""

from __future__ import annotations

import asyncio
import gc

from support.polling import poll

from batchd.core.gc_tuning import (
    YOUNG_PER_STREAM,
    YOUNG_THRESHOLD_MAX,
    scale_with_streams,
    young_threshold_for,
)


def test_the_threshold_grows_with_streams_between_the_base_and_a_ceiling() -> None:
    assert young_threshold_for(10_000, 0) == 10_000
    assert young_threshold_for(10_000, 999) == 10_000
    assert young_threshold_for(10_000, 5_000) == 5_000 * YOUNG_PER_STREAM
    assert young_threshold_for(10_000, 10**7) == YOUNG_THRESHOLD_MAX
    assert young_threshold_for(2 * YOUNG_THRESHOLD_MAX, 10**7) == 2 * YOUNG_THRESHOLD_MAX


async def test_the_threshold_follows_the_open_streams_and_is_put_back() -> None:
    base = gc.get_threshold()[0]
    streams = [0]

    async def threshold_is(wanted: int) -> bool | None:
        return True if gc.get_threshold()[0] == wanted else None

    scaling = asyncio.create_task(scale_with_streams(lambda: streams[0], every=0.01))
    try:
        streams[0] = base // YOUNG_PER_STREAM + 100
        await poll(lambda: threshold_is(streams[0] * YOUNG_PER_STREAM))
        streams[0] += 100
        await poll(lambda: threshold_is(streams[0] * YOUNG_PER_STREAM))
        streams[0] = 0
        await poll(lambda: threshold_is(base))
        streams[0] = base // YOUNG_PER_STREAM + 100
        await poll(lambda: threshold_is(streams[0] * YOUNG_PER_STREAM))
    finally:
        scaling.cancel()
        await asyncio.gather(scaling, return_exceptions=True)
    assert gc.get_threshold()[0] == base  # cancelled while raised: put back
