"""Keys: the per-chunk keys the Lua scripts build from the batch prefix are ours."""

from __future__ import annotations

from batchd.core.keys import Keys


def test_the_scripts_build_the_same_chunk_keys() -> None:
    keys = Keys("x:")
    prefix = keys.batch_prefix("b-1")
    assert prefix == "x:b:{b-1}:"
    # core/lua/_batch.lua: PREFIX .. 'c:' .. n, 'o:' .. n, 'w:' .. n
    assert keys.chunk("b-1", 7) == prefix + "c:7"
    assert keys.outcomes("b-1", 7) == prefix + "o:7"
    assert keys.waiting("b-1", 7) == prefix + "w:7"
    # core/lua/delete_batch.lua: PREFIX .. 'byname'
    assert keys.ids_by_name("b-1") == prefix + "byname"
    # Every per-batch key shares the prefix (and so the hash tag).
    for key in (
        keys.meta("b-1"),
        keys.ids("b-1"),
        keys.chunk_states("b-1"),
        keys.running("b-1"),
        keys.attempts("b-1"),
        keys.failed("b-1"),
        keys.expired("b-1"),
        keys.upload_lock("b-1"),
    ):
        assert key.startswith(prefix)
    assert keys.lease_member("b-1", 7) == "b-1/7"
