"""The store's Lua scripts (`core/lua/*.lua`), registered once per Redis client.

Each script is an atomic multi-key update over one batch's keys, all passed in KEYS
and all sharing the batch's hash tag; docs/design.md describes what each one does.
"""

from __future__ import annotations

from importlib import resources

from redis.asyncio import Redis
from redis.commands.core import AsyncScript


def _source(name: str) -> str:
    return resources.files("batchd.core").joinpath("lua", name).read_text(encoding="utf-8")


class Scripts:
    """`register_script` handles: EVALSHA, falling back to EVAL after a SCRIPT FLUSH."""

    def __init__(self, redis: Redis) -> None:
        self.claim_chunk: AsyncScript = redis.register_script(_source("claim_chunk.lua"))
        self.record_outcomes: AsyncScript = redis.register_script(_source("record_outcomes.lua"))
        self.cancel_batch: AsyncScript = redis.register_script(_source("cancel_batch.lua"))
        self.stage_chunk: AsyncScript = redis.register_script(_source("stage_chunk.lua"))
