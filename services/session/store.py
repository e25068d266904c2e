"""The session store the handlers use: Redis while it answers, the fallback while it does not.

Modes (see docs/session.md, "Outages"):

* `redis`: every call is one Redis command.
* `fallback`: Redis failed; calls go to the fallback (JetStream KV shared by all replicas, or
  memory). A probe pings Redis every 0.5 s, and a call that finds nothing in the fallback
  pings it at once, since a peer may already have moved that session back to Redis.
* `recovering`: Redis answers again. A background pass writes every fallback entry back
  (newest version wins, deletions too) and removes it; a call first moves its own sid's
  entry, if any, so it never reads or overwrites an older Redis value. The replica stays
  in this mode until the fallback is empty and at least a few seconds have passed, to
  pick up changes from peers that noticed the recovery a probe later.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import msgpack
import structlog

from services.session.fallback import Fallback, FallbackUnavailable
from services.session.metrics import CORRUPT, REDIS_REFUSED, STORE_DEGRADED, STORE_FALLBACK, WRITEBACK
from services.session.redis_store import CorruptSession, RedisRefused, RedisStore, RedisUnavailable
from shared.codec import encode
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


class Mode(enum.Enum):
    REDIS = "redis"
    FALLBACK = "fallback"
    RECOVERING = "recovering"


def decode_session(sid: str, raw: bytes | None, store: str) -> dict[str, Any] | None:
    """Stored bytes to a session map; undecodable bytes count as no session (and are logged)."""
    if raw is None:
        return None
    try:
        value = msgpack.unpackb(raw, raw=False, strict_map_key=False)
    except Exception as exc:  # msgpack raises several types, and UnicodeDecodeError for bad str
        return _corrupt(sid, store, f"{type(exc).__name__}", len(raw))
    if not isinstance(value, dict):
        return _corrupt(sid, store, f"a {type(value).__name__}, not a map", len(raw))
    return value


def _decoded_map(raw: bytes) -> dict[str, Any] | None:
    """The session map in stored bytes, or None when they are not one (decode_session then says why)."""
    try:
        value = msgpack.unpackb(raw, raw=False, strict_map_key=False)
    except Exception:  # msgpack raises several types, and UnicodeDecodeError for bad str
        return None
    return value if isinstance(value, dict) else None


def _bound(request_id: str | None) -> contextlib.AbstractContextManager[object]:
    """Log under one call's request id while serving a batch of calls."""
    return structlog.contextvars.bound_contextvars(request_id=request_id) if request_id else contextlib.nullcontext()


def _corrupt(sid: str, store: str, error: str, size: int) -> None:
    CORRUPT.inc()
    log.warning("session_corrupt", sid=mask(sid), store=store, error=error, bytes=size)
    return None


def apply_patch(raw: bytes, changes: dict[str, Any], unset: list[str]) -> bytes | None:
    """The fallback's version of the Redis patch script, on decoded maps."""
    try:
        value = msgpack.unpackb(raw, raw=False, strict_map_key=False)
    except Exception:
        return None
    if not isinstance(value, dict):
        return None
    for name in unset:
        value.pop(name, None)
    value.update(changes)
    return encode(value)


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


class Recovery:
    """The background work of an outage: the probe that notices Redis is back, and the write-back
    of what the fallback took meanwhile, with the per-sid locks that order a write-back and a
    call on the same session. It changes no mode itself: it tells the store what it found."""

    def __init__(self, store: SessionStore, redis: RedisStore, fallback: Fallback, *, probe_interval_s: float, settle_s: float) -> None:
        self._store = store
        self._redis = redis
        self._fallback = fallback
        self._probe_interval_s = probe_interval_s
        self._settle_s = settle_s
        self._locks = [asyncio.Lock() for _ in range(64)]
        self._probe_task: asyncio.Task[None] | None = None
        self._writeback_task: asyncio.Task[None] | None = None
        self._ping: asyncio.Future[bool] | None = None
        self._writers: dict[str, Writer] = {}

    async def close(self) -> None:
        tasks = [t for t in (self._probe_task, self._writeback_task, self._ping) if t is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    # --- probing ----------------------------------------------------------------------

    def start_probing(self) -> None:
        if self._probe_task is None or self._probe_task.done():
            self._probe_task = asyncio.create_task(self._probe_loop(), name="session-redis-probe")

    async def _probe_loop(self) -> None:
        while self._store.mode is Mode.FALLBACK:
            await asyncio.sleep(self._probe_interval_s)
            await self.probe()

    async def probe(self) -> bool:
        """Is Redis serving again? One ping at a time however many callers ask."""
        if self._ping is None:
            self._ping = asyncio.ensure_future(self._check())
            self._ping.add_done_callback(self._ping_done)
        return await asyncio.shield(self._ping)

    def _ping_done(self, _: asyncio.Future[bool]) -> None:
        self._ping = None

    async def _check(self) -> bool:
        try:
            await self._redis.ping()
            await self._redis.load_scripts()
            await self._redis.check_writable()
        except RedisUnavailable as exc:
            self._store._note_failure(exc)
            return False
        except Exception as exc:  # an unexpected reply: keep probing, say why
            log.warning("redis_probe_failed", error=f"{type(exc).__name__}: {exc}")
            return False
        self._store._redis_accepts()
        return True

    # --- write-back -------------------------------------------------------------------

    def start_writeback(self) -> None:
        self._writeback_task = asyncio.create_task(self._write_back(), name="session-writeback")

    def stop_writeback(self) -> None:
        task, self._writeback_task = self._writeback_task, None
        if task is not None and task is not asyncio.current_task():
            task.cancel()

    def lock(self, key: str) -> asyncio.Lock:
        """The lock that orders this replica's changes to `key`'s fallback entry and its write-back."""
        return self._locks[hash(key) % len(self._locks)]

    def add_writer(self, key_prefix: str, writer: Writer) -> None:
        """Fallback entries whose key starts with `key_prefix` (never a sid) are written back by `writer`, not as sessions."""
        self._writers[key_prefix] = writer

    async def _write_entry(self, key: str, value: bytes | None, version: int) -> bool:
        for prefix, writer in self._writers.items():
            if key.startswith(prefix):
                return await writer(key, value, version)
        return await self._redis.write_back(key, value, version)

    async def migrate(self, sid: str) -> str | None:
        """Move sid's fallback entry, if any, to Redis; the outcome, or None if there was none."""
        async with self.lock(sid):
            for _ in range(_MIGRATE_ATTEMPTS):
                entry = await self._fallback.get(sid, touch=False)
                if entry is None:
                    return None
                applied = await self._write_entry(sid, entry.value, entry.version)
                if await self._fallback.remove(sid, entry.version):
                    outcome = ("set" if entry.value is not None else "delete") if applied else "superseded"
                    WRITEBACK.labels(outcome=outcome).inc()
                    return outcome
                # Changed in the fallback meanwhile (a peer is still on it): write the newer version.
        return None

    async def migrate_first(self, *sids: str | None) -> None:
        """Before a call during recovery: move its own sids' entries, so it never reads or overwrites an older Redis value."""
        for sid in sids:
            if sid:
                try:
                    await self.migrate(sid)
                except FallbackUnavailable as exc:
                    log.warning("writeback_lookup_failed", sid=mask(sid), error=str(exc))

    async def _write_back(self) -> None:
        started = time.monotonic()
        counts = {"set": 0, "delete": 0, "superseded": 0}
        drained = False
        while self._store.mode is Mode.RECOVERING:
            try:
                sids = await self._fallback.pending()
                outcomes = [await self.migrate(sid) for sid in sids]
            except RedisUnavailable as exc:
                self._store._degrade(exc, reason="Redis failed during write-back")
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
            if sids and any(outcomes):
                continue  # more may have arrived meanwhile: look again at once
            if not sids:
                if not drained:
                    drained = True
                    self._store._outage_over(counts)
                if time.monotonic() - started >= self._settle_s:
                    self._store._set_mode(Mode.REDIS)
                    return
            await asyncio.sleep(self._probe_interval_s)


class SessionStore:
    """Serves session calls from Redis or the fallback, and writes an outage back to Redis.

    Every call takes one path, `_call(on_redis, on_fallback)`; the mode changes, and is
    logged, in one place, `_set_mode`; the background work of an outage is `Recovery`'s.
    """

    def __init__(
        self,
        redis: RedisStore | None,
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
        settle = (SETTLE_S if fallback.shared else 0.0) if settle_s is None else settle_s
        self._recovery = Recovery(self, redis, fallback, probe_interval_s=probe_interval_s, settle_s=settle) if redis is not None else None
        self._own_locks = [asyncio.Lock() for _ in range(64)] if redis is None else []

    # --- state ------------------------------------------------------------------------

    @property
    def mode(self) -> Mode:
        return self._mode

    @property
    def name(self) -> str:
        """The store serving calls now: redis, jetstream or memory."""
        return "redis" if self._redis is not None and self._mode is not Mode.FALLBACK else self._fallback.name

    @property
    def degraded(self) -> bool:
        """True when Redis is configured but calls do not (yet) go to it alone."""
        return self._redis is not None and self._outage is not None

    async def start(self) -> None:
        """Check Redis once; without it, serve from the fallback and keep probing."""
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
            self._degrade(exc, reason="Redis unreachable at start")
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
        if self._recovery is not None:
            await self._recovery.close()
        if self._redis is not None and not self._fallback.shared and self._outage is not None and self._outage.changes and self._mode is not Mode.REDIS:
            log.warning("outage_changes_dropped", store=self._fallback.name, changes=self._outage.changes, reason="stopping before Redis came back")
        await self._fallback.close()
        if self._redis is not None:
            await self._redis.close()

    def _set_mode(self, mode: Mode, *, reason: str = "", error: RedisUnavailable | None = None, pending: int | None = None) -> None:
        """The one place the mode changes, each change logged once and counted."""
        assert self._recovery is not None, "without Redis the store never leaves the fallback"
        self._mode = mode
        if mode is Mode.FALLBACK:
            if self._outage is None:
                self._outage = Outage(time.monotonic())
            STORE_FALLBACK.inc()
            STORE_DEGRADED.set(1)
            if error is not None and not isinstance(error, RedisRefused):  # a refusal was just reported by its own line
                log.warning("store_degraded", store=self._fallback.name, shared=self._fallback.shared, reason=reason, error=str(error), redis_readable=error.readable)
            self._recovery.stop_writeback()
            self._recovery.start_probing()
        elif mode is Mode.RECOVERING:
            if self._outage is None:  # an earlier outage's leftovers, found at start
                self._outage = Outage(time.monotonic())
                STORE_DEGRADED.set(1)
            log.info("store_recovering", store="redis", pending=pending)
            self._recovery.start_writeback()
        else:
            log.info("store_settled", store="redis")

    def _degrade(self, exc: RedisUnavailable, *, reason: str = "Redis call failed") -> None:
        self._note_failure(exc)
        if self._mode is not Mode.FALLBACK:
            self._set_mode(Mode.FALLBACK, reason=reason, error=exc)

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
        """The write-back emptied the fallback: Redis alone holds the sessions again."""
        outage_s = time.monotonic() - self._outage.since if self._outage is not None else 0.0
        self._outage = None
        STORE_DEGRADED.set(0)
        log.info("store_recovered", store="redis", written=counts["set"], deleted=counts["delete"], superseded=counts["superseded"], outage_s=round(outage_s, 3))

    async def _redis_is_back(self) -> bool:
        """For a call that found nothing in the fallback: might Redis have it now?

        A peer that noticed the recovery first may have moved the session back already.
        Concurrent callers share one ping, so a dead Redis costs one failed connect per round.
        """
        if self._recovery is None:
            return False
        if self._mode is not Mode.FALLBACK:
            return True
        return await self._recovery.probe()

    # --- the one call path --------------------------------------------------------------

    async def _call(self, on_redis: Callable[[RedisStore], Awaitable[T]], on_fallback: Callable[[], Awaitable[T]], *sids: str | None) -> T:
        """Serve one call: on Redis while it serves (during recovery after moving `sids`' entries
        back first); on an outage, degrade and serve the same call from the fallback."""
        if self._redis is not None and self._mode is not Mode.FALLBACK:
            assert self._recovery is not None
            try:
                if self._mode is Mode.RECOVERING:
                    await self._recovery.migrate_first(*sids)
                return await on_redis(self._redis)
            except RedisUnavailable as exc:
                self._degrade(exc)
        try:
            return await on_fallback()
        except FallbackUnavailable as exc:
            log.error("fallback_failed", store=self._fallback.name, error=str(exc))
            raise ServiceError(UNAVAILABLE, "the session store is unavailable (Redis and its fallback both failed)") from None

    @staticmethod
    async def _session_from_redis(sid: str, read: Awaitable[bytes | None]) -> dict[str, Any] | None:
        try:
            return decode_session(sid, await read, "redis")
        except CorruptSession as exc:
            return _corrupt(sid, "redis", str(exc), -1)

    def _changed_in_outage(self) -> None:
        if self._outage is not None:
            self._outage.changes += 1

    async def _drop(self, sid: str) -> bool:
        """Remove sid from the fallback when it is the only store; True if a session was there."""
        for _ in range(_MIGRATE_ATTEMPTS):
            entry = await self._fallback.get(sid, touch=False)
            if entry is None:
                return False
            if await self._fallback.remove(sid, entry.version):
                return entry.value is not None
        raise FallbackUnavailable(f"session {mask(sid)} kept changing while being deleted")

    async def _read_through(self, sid: str) -> tuple[bool, bytes | None]:
        """While Redis refuses only writes (OOM, READONLY), a session missing from the fallback is read from Redis.

        (True, bytes or None) when Redis answered, (False, None) when it could not be asked.
        """
        if self._redis is None or self._mode is not Mode.FALLBACK or not self._health.readable:
            return False, None
        try:
            return True, await self._redis.peek(sid)
        except CorruptSession as exc:
            return True, _corrupt(sid, "redis", str(exc), -1)
        except RedisUnavailable as exc:
            self._note_failure(exc)
            return False, None

    # --- calls ------------------------------------------------------------------------

    async def get(self, sid: str, *, recheck: bool = True) -> dict[str, Any] | None:
        async def from_fallback() -> dict[str, Any] | None:
            entry = await self._fallback.get(sid)
            if entry is None:
                read, raw = await self._read_through(sid)
                if read:
                    return decode_session(sid, raw, "redis")
                if recheck and await self._redis_is_back():
                    return await self.get(sid, recheck=False)
            return decode_session(sid, entry.value if entry else None, self._fallback.name)

        return await self._call(lambda redis: self._session_from_redis(sid, redis.get(sid)), from_fallback, sid)

    async def get_many(self, sids: Sequence[str], request_ids: Sequence[str | None] | None = None) -> list[dict[str, Any] | None | Exception]:
        """`get` for several sids at once, as the gateway batches them: one result per sid, in order.

        On Redis, through `_call` like every call: during recovery the sids' entries are moved
        back first, then one pipeline of GETEX (one command per sid, as `get` sends). On the
        fallback, and for every sid whose command failed, each sid goes through `get` itself
        (degrading first, so the outage is handled once): fallback, read-through, recheck and write-back
        stay exactly those of `get`. A result is what `get(sid)` returns, or the exception it
        raises, so one bad sid fails alone. `request_ids` (one per sid) are bound to what is
        logged for each sid.
        """
        rids = request_ids if request_ids is not None else [None] * len(sids)
        results: list[dict[str, Any] | None | Exception] = [None] * len(sids)
        retry: list[int] = []

        async def on_redis(redis: RedisStore) -> None:
            replies = await redis.get_many(sids)
            for i, (sid, reply) in enumerate(zip(sids, replies, strict=True)):
                if reply is None:
                    continue
                if isinstance(reply, bytes):
                    session = _decoded_map(reply)
                    if session is not None:
                        results[i] = session
                        continue
                with _bound(rids[i]):  # only what may log pays for the request id
                    if isinstance(reply, CorruptSession):
                        results[i] = _corrupt(sid, "redis", str(reply), -1)
                    elif isinstance(reply, RedisUnavailable):
                        self._degrade(reply)
                        retry.append(i)
                    elif isinstance(reply, Exception):
                        results[i] = reply
                    else:
                        results[i] = decode_session(sid, reply, "redis")  # says why it is no session

        async def from_fallback() -> None:
            retry[:] = range(len(sids))

        await self._call(on_redis, from_fallback, *sids)
        if retry:
            calls = []
            for i in retry:
                with _bound(rids[i]):  # the task copies the context: each sid logs under its own request id
                    calls.append(asyncio.ensure_future(self.get(sids[i])))
            for i, outcome in zip(retry, await asyncio.gather(*calls, return_exceptions=True), strict=True):
                if isinstance(outcome, BaseException) and not isinstance(outcome, Exception):
                    raise outcome
                results[i] = outcome
        return results

    async def set(self, sid: str, value: bytes, replace_sid: str | None = None) -> None:
        async def from_fallback() -> None:
            await self._fallback.put(sid, value)
            if replace_sid and replace_sid != sid:
                if self._redis is None:
                    await self._drop(replace_sid)
                else:
                    # Recorded even when unknown here: the old sid may exist in Redis and must go there too.
                    await self._fallback.put(replace_sid, None)
            self._changed_in_outage()

        await self._call(lambda redis: redis.set(sid, value, replace_sid), from_fallback, sid, replace_sid)

    async def patch(self, sid: str, changes: dict[str, Any], unset: list[str], *, recheck: bool = True) -> dict[str, Any] | None:
        async def on_redis(redis: RedisStore) -> dict[str, Any] | None:
            pairs = [(name, encode(name) + encode(value)) for name, value in changes.items()]
            return await self._session_from_redis(sid, redis.patch(sid, pairs, unset))

        async def from_fallback() -> dict[str, Any] | None:
            new = await self._fallback.update(sid, lambda raw: apply_patch(raw, changes, unset))
            if new is None and self._health.readable and await self._fallback.get(sid, touch=False) is None:
                # Not in the fallback at all (a deletion there leaves an entry, and must not be undone from Redis).
                read, raw = await self._read_through(sid)
                if read:
                    if raw is None:
                        return None
                    new = apply_patch(raw, changes, unset)
                    if new is None:
                        return _corrupt(sid, "redis", "not a MessagePack map", len(raw))
                    # Redis takes no writes now: the patched session lives in the fallback until write-back.
                    await self._fallback.put(sid, new)
                    self._changed_in_outage()
                    return decode_session(sid, new, self._fallback.name)
            if new is None and recheck and await self._redis_is_back():
                return await self.patch(sid, changes, unset, recheck=False)
            if new is not None:
                self._changed_in_outage()
            return decode_session(sid, new, self._fallback.name)

        return await self._call(on_redis, from_fallback, sid)

    async def delete(self, sid: str) -> bool:
        async def from_fallback() -> bool:
            if self._redis is None:
                return await self._drop(sid)
            entry = await self._fallback.get(sid, touch=False)
            # Recorded even when unknown here: the session may exist in Redis and must go there too.
            await self._fallback.put(sid, None)
            self._changed_in_outage()
            return entry is not None and entry.value is not None

        return await self._call(lambda redis: redis.delete(sid), from_fallback, sid)

    # --- for other data kept beside the sessions (conversation history) -------------------
    # The same modes, fallback and write-back; their fallback entries are told apart by key prefix.

    def add_writer(self, key_prefix: str, writer: Writer) -> None:
        """Fallback entries whose key starts with `key_prefix` (never a sid) are written back by `writer`."""
        if self._recovery is not None:
            self._recovery.add_writer(key_prefix, writer)

    @property
    def on_redis(self) -> bool:
        """Whether calls go to Redis now (after moving their own fallback entry back, see `migrate_first`)."""
        return self._redis is not None and self._mode is not Mode.FALLBACK

    @property
    def redis_readable(self) -> bool:
        """While on the fallback: Redis still answers reads (it refused only writes)."""
        return self._redis is not None and self._health.readable

    @property
    def fallback(self) -> Fallback:
        return self._fallback

    def redis_failed(self, exc: RedisUnavailable) -> None:
        """A Redis call failed: serve from the fallback until the probe finds Redis again."""
        self._degrade(exc)

    async def migrate_first(self, key: str) -> None:
        """While recovering: write back `key`'s fallback entry before the call touches Redis."""
        if self._recovery is not None and self._mode is Mode.RECOVERING:
            await self._recovery.migrate_first(key)

    async def fallback_call(self, call: Callable[[], Awaitable[T]]) -> T:
        try:
            return await call()
        except FallbackUnavailable as exc:
            log.error("fallback_failed", store=self._fallback.name, error=str(exc))
            raise ServiceError(UNAVAILABLE, "the session store is unavailable (Redis and its fallback both failed)") from None

    def changed_in_outage(self) -> None:
        self._changed_in_outage()

    def lock(self, key: str) -> asyncio.Lock:
        """The lock that orders this replica's changes to `key`'s fallback entry (and its write-back)."""
        if self._recovery is None:
            return self._own_locks[hash(key) % len(self._own_locks)]
        return self._recovery.lock(key)

    async def redis_is_back(self) -> bool:
        return await self._redis_is_back()
