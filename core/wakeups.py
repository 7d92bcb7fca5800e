"""Wake-ups over Redis pub/sub: a process that would otherwise find out at its next poll
is told at once. A wake-up only ever shortens a wait; a lost subscription (Redis away,
an ACL without the channel) leaves the process polling as before.

- `Keys.wake`: a commit publishes its batch's queue key; idle workers serving that queue
  look at it at once (batchd.worker.arq_worker).
- `Keys.ended`: the script that ends a batch publishes its id; the servers' progress
  feeds of that batch read it at once, so watchers get the terminal snapshot without
  waiting for the feed's next poll (batchd.server.progress).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

from redis.asyncio import Redis
from redis.exceptions import NoPermissionError, RedisError

from batchd.core.backoff import Backoff
from batchd.core.logs import get_logger

__all__ = ["listen", "wait"]

log = get_logger(__name__)

# Seconds a read for the next message waits: shorter than any connection's socket
# timeout (BATCHD_REDIS_TIMEOUT), which would end a read that waits longer.
READ_WAIT = 1.0


async def listen(
    redis: Redis,
    channel: str,
    on_message: Callable[[bytes], None],
    on_subscribed: Callable[[], None] | None = None,
) -> None:
    """Calls `on_message(data)` for each message on `channel`, until cancelled; after a
    Redis error, subscribes again (backing off) and calls `on_subscribed`, as after the
    first subscription (messages sent meanwhile are lost: look once). A refused
    subscription (NOPERM) ends it with a warning."""
    backoff = Backoff()
    while True:
        pubsub = redis.pubsub(ignore_subscribe_messages=True)
        try:
            await pubsub.subscribe(channel)
            if on_subscribed is not None:
                on_subscribed()
            while True:
                message = await pubsub.get_message(timeout=READ_WAIT)
                backoff.reset()
                if message is not None:
                    on_message(message["data"])
        except NoPermissionError as exc:
            log.warning("subscription_refused", channel=channel, error=str(exc))
            return
        except (RedisError, OSError) as exc:
            log.debug("subscription_lost", channel=channel, error=type(exc).__name__)
        finally:
            with contextlib.suppress(RedisError, OSError):
                await pubsub.aclose()
        await backoff.wait()


async def wait(woken: asyncio.Event, seconds: float) -> None:
    """Waits `seconds`, or less if `woken` is set meanwhile (or was); clears it."""
    if not woken.is_set():
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await woken.wait()
    woken.clear()
