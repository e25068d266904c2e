"""Redis held BUSY by an endless Lua script, for tests of a store outage that is not a lost connection."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import pytest
import redis

from tests.harness import wait_until


@asynccontextmanager
async def busy_redis(url: str) -> AsyncIterator[Callable[[], Awaitable[None]]]:
    """Run `while true do end` on the Redis at `url` until it answers BUSY; yield `end`, which kills the script.

    The server's busy-reply-threshold must be low already. On the way out the script is killed if it
    still runs, and the script's own client must have seen it killed.
    """

    def endless_script() -> None:
        blocked = redis.Redis.from_url(url)
        try:
            with pytest.raises(redis.exceptions.ResponseError, match="killed"):
                blocked.eval("while true do end", 0)
        finally:
            blocked.close()

    script = asyncio.create_task(asyncio.to_thread(endless_script))
    checker = redis.Redis.from_url(url)

    async def end() -> None:
        checker.script_kill()
        await script

    try:

        def busy() -> bool:
            try:
                checker.ping()
            except redis.exceptions.ResponseError as exc:
                return "BUSY" in str(exc)
            return False

        await asyncio.to_thread(wait_until, busy, 10.0, "Redis to answer BUSY")
        yield end
    finally:
        if not script.done():
            await end()
        checker.close()
