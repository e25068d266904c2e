"""The user's recent queries (`session.recent.add` / `list`): the last RECENT_MAX per user and source, newest first.

In Redis each user and source has one sorted set, `recent:<uid>:<source>`, of SQL texts scored by
when they last ran (in microseconds, so that two queries of one millisecond keep their order): a repeated query moves to the top instead of being listed twice. One
MULTI adds, trims to RECENT_MAX and renews the expiry (CONVERSATION_LIFETIME, as history).
While Redis cannot be reached, this replica keeps them in its memory (bounded) and says so
(`local: true`), as the limiter does.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable

import redis.exceptions as rex
import structlog
from nats.aio.msg import Msg
from redis.asyncio import Redis

from services.session.metrics import REDIS_COMMANDS
from services.session.redis_store import describe
from shared.contracts import RECENT_MAX, Ok, RecentAdd, RecentList, RecentQueries, RecentQuery

log = structlog.get_logger(__name__)

KEY_PREFIX = "recent:"
LOCAL_MAX_LISTS = 10_000
"""Bound of the (user, source) lists kept in memory while Redis is down; the least recently used go first."""


class RecentStore:
    """Answers `session.recent.*`: Redis while it answers, this replica's memory while it does not."""

    def __init__(self, client: Redis | None, *, lifetime_s: int, redis_usable: Callable[[], bool] = lambda: True) -> None:
        self._client = client
        self._lifetime_s = lifetime_s
        self._redis_usable = redis_usable
        self._local: OrderedDict[tuple[str, str], dict[str, int]] = OrderedDict()
        self._commands = {name: REDIS_COMMANDS.labels(command=name) for name in ("multi_recent", "zrevrange")}

    async def close(self) -> None:
        if self._client is not None:
            await self._client.aclose(close_connection_pool=True)

    def _key(self, uid: str, source: str) -> str:
        return f"{KEY_PREFIX}{uid}:{source}"

    def _redis(self) -> Redis | None:
        return self._client if self._client is not None and self._redis_usable() else None

    async def add(self, req: RecentAdd, _msg: Msg | None = None) -> Ok:
        now_us = time.time_ns() // 1000
        now = now_us // 1000
        client = self._redis()
        if client is not None:
            key = self._key(req.uid, req.source)
            try:
                self._commands["multi_recent"].inc()
                async with client.pipeline(transaction=True) as pipe:
                    pipe.zadd(key, {req.sql: now_us})
                    pipe.zremrangebyrank(key, 0, -(RECENT_MAX + 1))
                    pipe.expire(key, self._lifetime_s)
                    await pipe.execute()
                return Ok()
            except (rex.RedisError, OSError, TimeoutError) as exc:
                log.warning("recent_local", reason=describe(exc), consequence="this replica keeps recent queries in memory until Redis answers")
        entries = self._local.pop((req.uid, req.source), {})
        entries.pop(req.sql, None)
        entries[req.sql] = now
        while len(entries) > RECENT_MAX:
            del entries[next(iter(entries))]
        self._local[(req.uid, req.source)] = entries
        while len(self._local) > LOCAL_MAX_LISTS:
            self._local.popitem(last=False)
        return Ok()

    async def list(self, req: RecentList, _msg: Msg | None = None) -> RecentQueries:
        client = self._redis()
        if client is not None:
            try:
                self._commands["zrevrange"].inc()
                rows = await client.zrevrange(self._key(req.uid, req.source), 0, req.limit - 1, withscores=True)
                return RecentQueries([RecentQuery(sql=member.decode() if isinstance(member, bytes) else member, at=int(score) // 1000) for member, score in rows])
            except (rex.RedisError, OSError, TimeoutError) as exc:
                log.warning("recent_local", reason=describe(exc), consequence="this replica answers recent queries from its memory until Redis answers")
        entries = self._local.get((req.uid, req.source), {})
        newest = list(reversed(entries.items()))[: req.limit]  # the newest was inserted last
        return RecentQueries([RecentQuery(sql=sql, at=at) for sql, at in newest], local=True)
