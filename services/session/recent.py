"""The user's recent queries (`session.recent.add` / `list`): the last RECENT_MAX per user and source, newest first.

In Redis each user and source has one sorted set, `recent:<uid>:<source>`, of SQL texts scored by
when they last ran (in microseconds, so that two queries of one millisecond keep their order):
a repeated query moves to the top instead of being listed twice. One MULTI adds, trims to
RECENT_MAX and renews the expiry (CONVERSATION_LIFETIME, as history). The outage router decides
where a call goes, as for every store of the replica: while it serves from the fallback, or after
a Redis error that is not an outage, this replica keeps recent queries in its own memory (bounded)
and says so (`local: true`), as the limiter does; they are not written back to Redis.
"""

from __future__ import annotations

import time
from collections import OrderedDict

import redis.exceptions as rex
import structlog
from nats.aio.msg import Msg
from redis.asyncio import Redis

from services.session.metrics import REDIS_COMMANDS
from services.session.outage import OutageRouter
from services.session.redis_store import RedisUnavailable, classify, close_client, describe
from shared.contracts import RECENT_MAX, Ok, RecentAdd, RecentList, RecentQueries, RecentQuery

log = structlog.get_logger(__name__)

KEY_PREFIX = "recent:"
LOCAL_MAX_LISTS = 10_000
"""Bound of the (user, source) lists kept in memory while Redis is not used; the least recently used go first."""


class LocalRecent:
    """Recent queries in this replica's memory: newest last in each list, LOCAL_MAX_LISTS lists at most."""

    def __init__(self, max_lists: int = LOCAL_MAX_LISTS) -> None:
        self._lists: OrderedDict[tuple[str, str], dict[str, int]] = OrderedDict()
        self._max = max_lists

    def add(self, uid: str, source: str, sql: str, at: int) -> None:
        entries = self._lists.pop((uid, source), {})
        entries.pop(sql, None)
        entries[sql] = at
        while len(entries) > RECENT_MAX:
            del entries[next(iter(entries))]
        self._lists[(uid, source)] = entries
        while len(self._lists) > self._max:
            self._lists.popitem(last=False)

    def newest(self, uid: str, source: str, limit: int) -> list[RecentQuery]:
        entries = self._lists.get((uid, source), {})
        return [RecentQuery(sql=sql, at=at) for sql, at in list(reversed(entries.items()))[:limit]]


class RecentStore:
    """Answers `session.recent.*`: Redis while the outage router sends calls there, this replica's memory while it does not."""

    def __init__(self, client: Redis | None, router: OutageRouter, *, lifetime_s: int) -> None:
        self._client = client
        self._router = router
        self._lifetime_s = lifetime_s
        self._local = LocalRecent()
        self._commands = {name: REDIS_COMMANDS.labels(command=name) for name in ("multi_recent", "zrevrange")}

    async def close(self) -> None:
        if self._client is not None:
            await close_client(self._client)

    def _key(self, uid: str, source: str) -> str:
        return f"{KEY_PREFIX}{uid}:{source}"

    def _redis_failed(self, exc: BaseException) -> None:
        """An outage goes to the router (every store of the replica then uses the fallback); any other error is logged here."""
        mapped = classify(exc)
        if isinstance(mapped, RedisUnavailable):
            raise mapped from exc
        log.warning("recent_local", reason=describe(exc), consequence="this call is served from the replica's memory")

    async def add(self, req: RecentAdd, _msg: Msg | None = None) -> Ok:
        now_us = time.time_ns() // 1000

        async def on_redis() -> Ok:
            assert self._client is not None
            try:
                self._commands["multi_recent"].inc()
                async with self._client.pipeline(transaction=True) as pipe:
                    key = self._key(req.uid, req.source)
                    pipe.zadd(key, {req.sql: now_us})
                    pipe.zremrangebyrank(key, 0, -(RECENT_MAX + 1))
                    pipe.expire(key, self._lifetime_s)
                    await pipe.execute()
            except (rex.RedisError, OSError, TimeoutError) as exc:
                self._redis_failed(exc)
                return await on_fallback()
            return Ok()

        async def on_fallback() -> Ok:
            self._local.add(req.uid, req.source, req.sql, now_us // 1000)
            return Ok()

        if self._client is None:
            return await on_fallback()
        return await self._router.call(on_redis, on_fallback)

    async def list(self, req: RecentList, _msg: Msg | None = None) -> RecentQueries:
        async def on_redis() -> RecentQueries:
            assert self._client is not None
            try:
                self._commands["zrevrange"].inc()
                rows = await self._client.zrevrange(self._key(req.uid, req.source), 0, req.limit - 1, withscores=True)
            except (rex.RedisError, OSError, TimeoutError) as exc:
                self._redis_failed(exc)
                return await on_fallback()
            return RecentQueries([RecentQuery(sql=member.decode() if isinstance(member, bytes) else member, at=int(score) // 1000) for member, score in rows])

        async def on_fallback() -> RecentQueries:
            return RecentQueries(self._local.newest(req.uid, req.source, req.limit), local=True)

        if self._client is None:
            return await on_fallback()
        return await self._router.call(on_redis, on_fallback)
