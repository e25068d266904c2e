"""The one owner of Redis outages: whether calls go to Redis or the fallback, and the way back.

Every store of the session service (sessions, conversation history, quotas) routes its
calls through `OutageRouter.call(on_redis, on_fallback, *keys)`; none keeps a mode of its own.

Modes (see docs/session.md, "Outages"):

* `redis`: every call goes to Redis.
* `fallback`: Redis failed; calls go to the fallback (JetStream KV shared by all replicas, or
  memory). A probe pings Redis every 0.5 s, and a call that finds nothing in the fallback
  may ask at once (`redis_is_back`), since a peer may already have moved its entry back.
* `recovering`: Redis answers again. A background pass writes every fallback entry back
  (newest version wins, deletions too) and removes it; a call first moves its own keys'
  entries, if any, so it never reads or overwrites an older Redis value. The replica stays
  in this mode until the fallback is empty and at least a few seconds have passed, to
  pick up changes from peers that noticed the recovery a probe later.

The router owns the mode, the probe, the counters and gauges, the write-back and the
per-key locks. A store registers, per fallback key prefix, how its entries are written back.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol, TypeVar

import structlog

from services.session.fallback import Fallback, FallbackUnavailable
from services.session.metrics import REDIS_REFUSED, STORE_DEGRADED, STORE_FALLBACK, WRITEBACK
from services.session.redis_store import RedisRefused, RedisUnavailable
from shared.errors import UNAVAILABLE, ServiceError
from shared.logging import mask

log = structlog.get_logger(__name__)

T = TypeVar("T")
Writer = Callable[[str, bytes | None, int], Awaitable[bool]]
"""Writes back one fallback entry (key, value, version); False when a newer version was already written."""

PROBE_INTERVAL_S = 0.5
SETTLE_S = 5.0
"""How long a recovered replica keeps checking the shared fallback before each call."""
_MIGRATE_ATTEMPTS = 5
_LOCKS = 64


class Mode(enum.Enum):
    REDIS = "redis"
    FALLBACK = "fallback"
    RECOVERING = "recovering"


class RedisProbe(Protocol):
    """What the probe asks of Redis (services/session/redis_store.RedisStore)."""

    async def ping(self) -> None: ...
    async def load_scripts(self) -> None: ...
    async def check_writable(self) -> None: ...


@dataclass
class RedisHealth:
    """What the last failed call or probe learnt about Redis while it does not serve."""

    readable: bool = False
    """Redis still answers reads: it refused only writes (OOM, READONLY)."""
    refused: str | None = None
    """The cause while Redis refuses this client (authentication, permission, protected_mode)."""


@dataclass
class Outage:
    """From the switch to the fallback until everything it took is written back to Redis."""

    since: float
    changes: int = 0
    """Writes the fallback took: what a memory fallback loses if this replica stops first."""


class OutageRouter:
    """Routes each call to Redis or the fallback, and brings the replica back to Redis after an outage.

    The mode changes, and is logged, in one place, `_set_mode`.
    """

    def __init__(
        self,
        redis: RedisProbe | None,
        fallback: Fallback,
        *,
        probe_interval_s: float = PROBE_INTERVAL_S,
        settle_s: float | None = None,
    ) -> None:
        self._redis = redis
        self._fallback = fallback
        self._mode = Mode.REDIS if redis is not None else Mode.FALLBACK
        self._outage: Outage | None = None
        self._health = RedisHealth()
        self._probe_interval_s = probe_interval_s
        self._settle_s = (SETTLE_S if fallback.shared else 0.0) if settle_s is None else settle_s
        self._locks = [asyncio.Lock() for _ in range(_LOCKS)]
        self._writers: dict[str, Writer] = {}
        self._probe_task: asyncio.Task[None] | None = None
        self._writeback_task: asyncio.Task[None] | None = None
        self._ping: asyncio.Future[bool] | None = None

    # --- state ------------------------------------------------------------------------

    @property
    def mode(self) -> Mode:
        return self._mode

    @property
    def name(self) -> str:
        """The store serving calls now: redis, jetstream or memory."""
        return "redis" if self.on_redis else self._fallback.name

    @property
    def on_redis(self) -> bool:
        """Whether calls go to Redis now (during recovery after moving their own keys' entries back)."""
        return self._redis is not None and self._mode is not Mode.FALLBACK

    @property
    def degraded(self) -> bool:
        """True when Redis is configured but calls do not (yet) go to it alone."""
        return self._redis is not None and self._outage is not None

    @property
    def redis_readable(self) -> bool:
        """While on the fallback: Redis still answers reads (it refused only writes)."""
        return self._redis is not None and self._mode is Mode.FALLBACK and self._health.readable

    @property
    def fallback(self) -> Fallback:
        return self._fallback

    def add_writer(self, key_prefix: str, writer: Writer) -> None:
        """Fallback entries whose key starts with `key_prefix` are written back by `writer` (the longest prefix wins)."""
        self._writers[key_prefix] = writer

    def lock(self, key: str) -> asyncio.Lock:
        """The lock that orders this replica's changes to `key`'s fallback entry and its write-back."""
        return self._locks[hash(key) % len(self._locks)]

    def changed(self) -> None:
        """The fallback took a write during an outage."""
        if self._outage is not None:
            self._outage.changes += 1

    # --- start and stop ------------------------------------------------------------------

    async def start(self) -> None:
        """Check Redis once; without it, serve from the fallback and keep probing.

        Every store registers its writer before: a write-back of an earlier outage may begin here.
        """
        if self._redis is None:
            log.warning(
                "session_store_fallback",
                store=self._fallback.name,
                reason="neither UPSTASH_REDIS_URL nor REDIS_URL is set",
                shared=self._fallback.shared,
            )
            return
        try:
            await self._redis.ping()
            await self._redis.load_scripts()
        except RedisUnavailable as exc:
            self.failed(exc, reason="Redis unreachable at start")
            return
        try:
            leftovers = await self._fallback.pending()
        except FallbackUnavailable as exc:
            log.warning("fallback_check_failed", store=self._fallback.name, error=str(exc))
            leftovers = []
        if leftovers:
            # An earlier outage ended with no replica alive to write it back: do it now.
            self._set_mode(Mode.RECOVERING, pending=len(leftovers))

    async def close(self) -> None:
        """Stop the probe and the write-back, and close the fallback (each store closes its own Redis client)."""
        tasks = [t for t in (self._probe_task, self._writeback_task, self._ping) if t is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self._redis is not None and not self._fallback.shared and self._outage is not None and self._outage.changes and self._mode is not Mode.REDIS:
            log.warning("outage_changes_dropped", store=self._fallback.name, changes=self._outage.changes, reason="stopping before Redis came back")
        await self._fallback.close()

    # --- the one call path --------------------------------------------------------------

    async def call(self, on_redis: Callable[[], Awaitable[T]], on_fallback: Callable[[], Awaitable[T]], *keys: str | None) -> T:
        """Serve one call: on Redis while it serves (during recovery after moving `keys`' fallback
        entries back first); on an outage (RedisUnavailable), degrade and serve the same call from
        the fallback. A fallback that fails too is a ServiceError(UNAVAILABLE)."""
        if self._redis is not None and self._mode is not Mode.FALLBACK:
            try:
                if self._mode is Mode.RECOVERING:
                    await self._migrate_first(keys)
                return await on_redis()
            except RedisUnavailable as exc:
                self.failed(exc)
        try:
            return await on_fallback()
        except FallbackUnavailable as exc:
            log.error("fallback_failed", store=self._fallback.name, error=str(exc))
            raise ServiceError(UNAVAILABLE, "the session store is unavailable (Redis and its fallback both failed)") from None

    def failed(self, exc: RedisUnavailable, *, reason: str = "Redis call failed") -> None:
        """A Redis call failed: remember what Redis still does, and serve from the fallback until the probe finds it again."""
        self._note_failure(exc)
        if self._redis is not None and self._mode is not Mode.FALLBACK:
            self._set_mode(Mode.FALLBACK, reason=reason, error=exc)

    async def redis_is_back(self) -> bool:
        """For a call that found nothing in the fallback: might Redis have it now?

        A peer that noticed the recovery first may have moved the entry back already.
        Concurrent callers share one ping, so a dead Redis costs one failed connect per round.
        """
        if self._redis is None:
            return False
        if self._mode is not Mode.FALLBACK:
            return True
        return await self._probe()

    # --- mode ------------------------------------------------------------------------------

    def _set_mode(self, mode: Mode, *, reason: str = "", error: RedisUnavailable | None = None, pending: int | None = None) -> None:
        """The one place the mode changes, each change logged once and counted."""
        self._mode = mode
        if mode is Mode.FALLBACK:
            if self._outage is None:
                self._outage = Outage(time.monotonic())
            STORE_FALLBACK.inc()
            STORE_DEGRADED.set(1)
            if error is not None and not isinstance(error, RedisRefused):  # a refusal was just reported by its own line
                log.warning("store_degraded", store=self._fallback.name, shared=self._fallback.shared, reason=reason, error=str(error), redis_readable=error.readable)
            self._stop_writeback()
            if self._probe_task is None or self._probe_task.done():
                self._probe_task = asyncio.create_task(self._probe_loop(), name="session-redis-probe")
        elif mode is Mode.RECOVERING:
            if self._outage is None:  # an earlier outage's leftovers, found at start
                self._outage = Outage(time.monotonic())
                STORE_DEGRADED.set(1)
            log.info("store_recovering", store="redis", pending=pending)
            self._writeback_task = asyncio.create_task(self._write_back(), name="session-writeback")
        else:
            log.info("store_settled", store="redis")

    def _note_failure(self, exc: RedisUnavailable) -> None:
        """Remember whether Redis still reads, and report a refusal once per cause, as one line naming it."""
        self._health.readable = exc.readable
        cause = exc.cause if isinstance(exc, RedisRefused) else None
        if cause == self._health.refused:
            return
        self._health.refused = cause
        REDIS_REFUSED.set(0 if cause is None else 1)
        if isinstance(exc, RedisRefused):
            log.error(
                "redis_refused",
                cause=exc.cause,
                error=exc.detail,
                hint=exc.hint,
                store=self._fallback.name,
                shared=self._fallback.shared,
                consequence="sessions are served from the fallback store and written back once Redis accepts this service again",
            )

    def _redis_accepts(self) -> None:
        """A probe found Redis serving (reads and writes): start the write-back."""
        if self._health.refused is not None:
            log.info("redis_accepted", previous_cause=self._health.refused)
            REDIS_REFUSED.set(0)
        self._health = RedisHealth()
        if self._mode is Mode.FALLBACK:
            self._set_mode(Mode.RECOVERING)

    def _outage_over(self, counts: dict[str, int]) -> None:
        """The write-back emptied the fallback: Redis alone holds the data again."""
        outage_s = time.monotonic() - self._outage.since if self._outage is not None else 0.0
        self._outage = None
        STORE_DEGRADED.set(0)
        log.info("store_recovered", store="redis", written=counts["set"], deleted=counts["delete"], superseded=counts["superseded"], outage_s=round(outage_s, 3))

    # --- probing ----------------------------------------------------------------------

    async def _probe_loop(self) -> None:
        while self._mode is Mode.FALLBACK:
            await asyncio.sleep(self._probe_interval_s)
            await self._probe()

    async def _probe(self) -> bool:
        """Is Redis serving again? One ping at a time however many callers ask."""
        if self._ping is None:
            self._ping = asyncio.ensure_future(self._check())
            self._ping.add_done_callback(self._ping_done)
        return await asyncio.shield(self._ping)

    def _ping_done(self, _: asyncio.Future[bool]) -> None:
        self._ping = None

    async def _check(self) -> bool:
        assert self._redis is not None
        try:
            await self._redis.ping()
            await self._redis.load_scripts()
            await self._redis.check_writable()
        except RedisUnavailable as exc:
            self._note_failure(exc)
            return False
        except Exception as exc:  # an unexpected reply: keep probing, say why
            log.warning("redis_probe_failed", error=f"{type(exc).__name__}: {exc}")
            return False
        self._redis_accepts()
        return True

    # --- write-back -------------------------------------------------------------------

    def _stop_writeback(self) -> None:
        task, self._writeback_task = self._writeback_task, None
        if task is not None and task is not asyncio.current_task():
            task.cancel()

    async def _write_entry(self, key: str, value: bytes | None, version: int) -> bool:
        prefix = max((p for p in self._writers if key.startswith(p)), key=len, default=None)
        if prefix is None:
            log.error("writeback_no_writer", key=mask(key))
            return True  # nobody owns it: drop it rather than retry it forever
        return await self._writers[prefix](key, value, version)

    async def _migrate(self, key: str) -> str | None:
        """Move key's fallback entry, if any, to Redis; the outcome, or None if there was none."""
        async with self.lock(key):
            for _ in range(_MIGRATE_ATTEMPTS):
                entry = await self._fallback.get(key, touch=False)
                if entry is None:
                    return None
                applied = await self._write_entry(key, entry.value, entry.version)
                if await self._fallback.remove(key, entry.version):
                    outcome = ("set" if entry.value is not None else "delete") if applied else "superseded"
                    WRITEBACK.labels(outcome=outcome).inc()
                    return outcome
                # Changed in the fallback meanwhile (a peer is still on it): write the newer version.
        return None

    async def _migrate_first(self, keys: tuple[str | None, ...]) -> None:
        """Before a call during recovery: move its own keys' entries, so it never reads or overwrites an older Redis value."""
        for key in keys:
            if key:
                try:
                    await self._migrate(key)
                except FallbackUnavailable as exc:
                    log.warning("writeback_lookup_failed", sid=mask(key), error=str(exc))

    async def _write_back(self) -> None:
        started = time.monotonic()
        counts = {"set": 0, "delete": 0, "superseded": 0}
        drained = False
        while self._mode is Mode.RECOVERING:
            try:
                keys = await self._fallback.pending()
                outcomes = [await self._migrate(key) for key in keys]
            except RedisUnavailable as exc:
                self.failed(exc, reason="Redis failed during write-back")
                return
            except FallbackUnavailable as exc:
                log.warning("writeback_retry", store=self._fallback.name, error=str(exc))
                await asyncio.sleep(self._probe_interval_s)
                continue
            except Exception:  # never leave this replica stuck half-recovered: log, then try again
                log.exception("writeback_failed")
                await asyncio.sleep(self._probe_interval_s)
                continue
            for outcome in outcomes:
                if outcome is not None:
                    counts[outcome] += 1
            if keys and any(outcomes):
                continue  # more may have arrived meanwhile: look again at once
            if not keys:
                if not drained:
                    drained = True
                    self._outage_over(counts)
                if time.monotonic() - started >= self._settle_s:
                    self._set_mode(Mode.REDIS)
                    return
            await asyncio.sleep(self._probe_interval_s)
