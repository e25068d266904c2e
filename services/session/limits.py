"""Rate limits and quotas (`session.limit`): fixed windows counted in Redis, one command per call.

Every window of a call is checked and counted by one Lua script (limit.lua) run with
EVALSHA on one hash per limiter key (`limit:{u:<uid>}:quota`, `limit:{login:<ip>}`: one
Redis Cluster slot), on Redis's own clock, so replicas share the counts and never race: no
read-then-increment, and a refused call counts nowhere. While the outage router
(services/session/outage.py) finds Redis down, each replica counts in its own memory (the
reply says `local: true`) until the router's probe finds Redis back; the local counts are
dropped once Redis answers again.
"""

from __future__ import annotations

import time
from pathlib import Path

import redis.exceptions as rex
import structlog
from nats.aio.msg import Msg
from redis.asyncio import Redis

from services.session.keys import limit_key
from services.session.metrics import LIMIT_CALLS, REDIS_COMMANDS
from services.session.outage import OutageRouter
from services.session.redis_store import RedisUnavailable, classify, close_client, describe, send_once
from shared.contracts import LimitRequest, LimitResult, LimitWindow, WindowUsage
from shared.errors import BAD_REQUEST, ServiceError

log = structlog.get_logger(__name__)

LOCAL_MAX_COUNTERS = 100_000
"""Bound of the in-memory counters kept while Redis is down."""
SCRIPT = (Path(__file__).with_name("limit.lua")).read_text()


class _CountedClient:
    """The two commands redis-py's Script sends, counted in session_redis_commands_total.

    With `once`, EVALSHA is never sent twice (redis_store.send_once): for scripts that count or append.
    """

    def __init__(self, client: Redis, *, once: bool = False) -> None:
        self._client = client
        self._once = once
        self._evalsha = REDIS_COMMANDS.labels(command="evalsha")
        self._script_load = REDIS_COMMANDS.labels(command="script_load")

    async def evalsha(self, sha: str, numkeys: int, *args: object) -> object:
        self._evalsha.inc()
        if self._once:
            return await send_once(self._client, "EVALSHA", sha, numkeys, *args)
        return await self._client.evalsha(sha, numkeys, *args)  # type: ignore[arg-type]

    async def script_load(self, source: str) -> str:
        self._script_load.inc()
        return await self._client.script_load(source)


def _result(windows: list[LimitWindow], used: list[int], resets: list[int], allowed: bool, *, local: bool) -> LimitResult:
    usage = {w.name: WindowUsage(used=u, limit=w.limit, resets_in=r) for w, u, r in zip(windows, used, resets, strict=True)}
    retry_after = None
    if not allowed:
        retry_after = max(r for w, u, r in zip(windows, used, resets, strict=True) if w.limit and u >= w.limit)
    return LimitResult(allowed=allowed, windows=usage, retry_after=retry_after, local=local)


class LocalCounters:
    """The script's algorithm in this process's memory, on this machine's clock."""

    def __init__(self, max_counters: int = LOCAL_MAX_COUNTERS) -> None:
        self._counts: dict[tuple[str, str, int], tuple[int, float]] = {}  # -> (count, expires at)
        self._max = max_counters

    def clear(self) -> None:
        self._counts.clear()

    def hit(self, key: str, windows: list[LimitWindow], consume: bool) -> LimitResult:
        now = time.time()
        second = int(now)
        slots: list[tuple[str, str, int] | None] = []
        used, resets = [], []
        for w in windows:
            index = second // w.seconds
            resets.append((index + 1) * w.seconds - second)
            slot = (key, w.name, index) if w.limit else None
            slots.append(slot)
            used.append(self._counts.get(slot, (0, 0.0))[0] if slot else 0)
        allowed = all(not w.limit or u < w.limit for w, u in zip(windows, used, strict=True))
        if allowed and consume:
            self._make_room(now)
            for i, slot in enumerate(slots):
                if slot is not None:
                    used[i] += 1
                    self._counts[slot] = (used[i], now + resets[i] + 1)
        return _result(windows, used, resets, allowed, local=True)

    def _make_room(self, now: float) -> None:
        if len(self._counts) < self._max:
            return
        self._counts = {slot: entry for slot, entry in self._counts.items() if entry[1] > now}
        while len(self._counts) >= self._max:  # still full of live windows: forget the oldest
            del self._counts[next(iter(self._counts))]


class Limits:
    """Answers `session.limit`: Redis while the outage router sends calls there, this replica's memory while it does not."""

    def __init__(self, client: Redis | None, router: OutageRouter) -> None:
        self._client = client
        self._counted = _CountedClient(client, once=True) if client is not None else None
        self._script = client.register_script(SCRIPT) if client is not None else None
        self._router = router
        self._local = LocalCounters()
        self._local_since: float | None = None

    @property
    def local(self) -> bool:
        return self._local_since is not None

    async def load(self) -> None:
        """Load the script into Redis's cache ahead of the first call (best effort)."""
        if self._script is None or self._counted is None:
            return
        try:
            await self._counted.script_load(SCRIPT)
        except (rex.RedisError, OSError) as exc:
            self._go_local(describe(exc))

    async def close(self) -> None:
        if self._client is not None:
            await close_client(self._client)

    def _go_local(self, reason: str) -> None:
        if self._local_since is None:
            self._local_since = time.monotonic()
            log.warning("limiter_local", reason=reason, consequence="each session replica counts limits on its own until Redis answers")

    def _back_on_redis(self) -> None:
        if self._local_since is not None:
            log.info("limiter_redis", local_s=round(time.monotonic() - self._local_since, 3))
            self._local_since = None
            self._local.clear()

    async def hit(self, request: LimitRequest) -> LimitResult:
        names = [w.name for w in request.windows]
        if len(set(names)) != len(names):
            raise ServiceError(BAD_REQUEST, "invalid LimitRequest: window names must be unique - at `$.windows`")
        if self._script is None:
            self._go_local("no Redis is configured")
            return self._local_hit(request)
        reason = "the session store found Redis down"

        async def on_redis() -> LimitResult:
            nonlocal reason
            try:
                result = await self._redis_hit(request)
            except (rex.RedisError, OSError, TimeoutError) as exc:
                reason = describe(exc)
                mapped = classify(exc)
                if isinstance(mapped, RedisUnavailable):
                    raise mapped from exc  # an outage: the router serves every store from the fallback until Redis is back
                self._go_local(reason)  # an error reply only the limiter gets: count this call here
                return self._local_hit(request)
            self._back_on_redis()
            return result

        async def on_fallback() -> LimitResult:
            self._go_local(reason)
            return self._local_hit(request)

        return await self._router.call(on_redis, on_fallback)

    def _local_hit(self, request: LimitRequest) -> LimitResult:
        return self._local.hit(request.key, request.windows, request.consume)

    async def _redis_hit(self, request: LimitRequest) -> LimitResult:
        assert self._script is not None
        args: list[str | int] = [1 if request.consume else 0]
        for w in request.windows:
            args += [w.name, w.seconds, w.limit]
        reply = await self._script(keys=[limit_key(request.key)], args=args, client=self._counted)  # type: ignore[arg-type]
        assert isinstance(reply, list) and len(reply) == 1 + 2 * len(request.windows), reply
        return _result(request.windows, [int(v) for v in reply[1::2]], [int(v) for v in reply[2::2]], reply[0] == 1, local=False)

    async def handle(self, request: LimitRequest, _msg: Msg) -> LimitResult:
        """The `session.limit` handler (shared.bus.Server decodes the request)."""
        result = await self.hit(request)
        outcome = "allowed" if result.allowed else "refused"
        LIMIT_CALLS.labels(outcome=outcome if request.consume else "read", store="local" if result.local else "redis").inc()
        log.debug("limit", key=request.key, outcome=outcome, local=result.local)
        return result
