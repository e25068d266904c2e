"""Sessions: each call served from Redis, or from the fallback during an outage.

Which of the two serves a call, and how an outage ends, is the outage router's
(services/session/outage.py); this module says what a session call does on each side:
the Redis command, and its counterpart on the fallback entries (read-through while Redis
refuses only writes, and a re-check of Redis when a sid is missing from the fallback).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Sequence
from typing import Any

import msgpack
import structlog

from services.session.fallback import FallbackUnavailable
from services.session.metrics import CORRUPT
from services.session.outage import OutageRouter
from services.session.redis_store import CorruptSession, RedisStore, RedisUnavailable
from shared.codec import encode
from shared.logging import mask

log = structlog.get_logger(__name__)

_DROP_ATTEMPTS = 5


def checked_session(sid: str, raw: bytes | None, store: str) -> bytes | None:
    """The stored bytes, untouched, when they hold a MessagePack map; else None (logged and counted as corrupt).

    The bytes go to the caller as stored: decoded here only to check them, never re-encoded.
    """
    if raw is None:
        return None
    try:
        value = msgpack.unpackb(raw, raw=False, strict_map_key=False)
    except Exception as exc:  # msgpack raises several types, and UnicodeDecodeError for bad str
        return _corrupt(sid, store, f"{type(exc).__name__}", len(raw))
    if not isinstance(value, dict):
        return _corrupt(sid, store, f"a {type(value).__name__}, not a map", len(raw))
    return raw


def _is_map(raw: bytes) -> bool:
    """Whether stored bytes hold a session map (checked_session then says why not)."""
    try:
        return isinstance(msgpack.unpackb(raw, raw=False, strict_map_key=False), dict)
    except Exception:  # msgpack raises several types, and UnicodeDecodeError for bad str
        return False


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


class SessionStore:
    """The session calls, each through the outage router: the Redis command, or its fallback counterpart."""

    def __init__(self, redis: RedisStore | None, router: OutageRouter) -> None:
        self._redis = redis
        self._router = router
        self._fallback = router.fallback
        if redis is not None:
            router.add_writer("", redis.write_back)  # every fallback entry no other store claims is a session

    @property
    def name(self) -> str:
        """The store serving calls now: redis, jetstream or memory."""
        return self._router.name

    @property
    def degraded(self) -> bool:
        return self._router.degraded

    @property
    def _on_redis(self) -> RedisStore:
        """Redis, for the router's on_redis side (which it calls only when Redis is configured)."""
        assert self._redis is not None
        return self._redis

    async def close(self) -> None:
        if self._redis is not None:
            await self._redis.close()

    @staticmethod
    async def _session_from_redis(sid: str, read: Awaitable[bytes | None]) -> bytes | None:
        try:
            return checked_session(sid, await read, "redis")
        except CorruptSession as exc:
            return _corrupt(sid, "redis", str(exc), -1)

    async def _drop(self, sid: str) -> bool:
        """Remove sid from the fallback when it is the only store; True if a session was there."""
        for _ in range(_DROP_ATTEMPTS):
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
        if self._redis is None or not self._router.redis_readable:
            return False, None
        try:
            return True, await self._redis.peek(sid)
        except CorruptSession as exc:
            return True, _corrupt(sid, "redis", str(exc), -1)
        except RedisUnavailable as exc:
            self._router.failed(exc)
            return False, None

    # --- calls ------------------------------------------------------------------------

    async def get(self, sid: str, *, recheck: bool = True) -> bytes | None:
        """The session's stored MessagePack map, or None."""

        async def from_fallback() -> bytes | None:
            entry = await self._fallback.get(sid)
            if entry is None:
                read, raw = await self._read_through(sid)
                if read:
                    return checked_session(sid, raw, "redis")
                if recheck and await self._router.redis_is_back():
                    return await self.get(sid, recheck=False)
            return checked_session(sid, entry.value if entry else None, self._fallback.name)

        return await self._router.call(lambda: self._session_from_redis(sid, self._on_redis.get(sid)), from_fallback, sid)

    async def get_many(self, sids: Sequence[str], request_ids: Sequence[str | None] | None = None) -> list[bytes | None | Exception]:
        """`get` for several sids at once, as the gateway batches them: one result per sid, in order.

        On Redis, through the router like every call: during recovery the sids' entries are moved
        back first, then one pipeline of GETEX (one command per sid, as `get` sends). On the
        fallback, and for every sid whose command failed, each sid goes through `get` itself
        (degrading first, so the outage is handled once): fallback, read-through, recheck and write-back
        stay exactly those of `get`. A result is what `get(sid)` returns, or the exception it
        raises, so one bad sid fails alone. `request_ids` (one per sid) are bound to what is
        logged for each sid.
        """
        rids = request_ids if request_ids is not None else [None] * len(sids)
        results: list[bytes | None | Exception] = [None] * len(sids)
        retry: list[int] = []

        async def on_redis() -> None:
            replies = await self._on_redis.get_many(sids)
            for i, (sid, reply) in enumerate(zip(sids, replies, strict=True)):
                if reply is None:
                    continue
                if isinstance(reply, bytes) and _is_map(reply):
                    results[i] = reply
                    continue
                with _bound(rids[i]):  # only what may log pays for the request id
                    if isinstance(reply, CorruptSession):
                        results[i] = _corrupt(sid, "redis", str(reply), -1)
                    elif isinstance(reply, RedisUnavailable):
                        self._router.failed(reply)
                        retry.append(i)
                    elif isinstance(reply, Exception):
                        results[i] = reply
                    else:
                        results[i] = checked_session(sid, reply, "redis")  # says why it is no session

        async def from_fallback() -> None:
            retry[:] = range(len(sids))

        await self._router.call(on_redis, from_fallback, *sids)
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
            self._router.changed()

        await self._router.call(lambda: self._on_redis.set(sid, value, replace_sid), from_fallback, sid, replace_sid)

    async def patch(self, sid: str, changes: dict[str, Any], unset: list[str], *, recheck: bool = True) -> bytes | None:
        """Set and remove top-level fields; the session's new stored map, or None when there is none."""

        async def on_redis() -> bytes | None:
            pairs = [(name, encode(name) + encode(value)) for name, value in changes.items()]
            return await self._session_from_redis(sid, self._on_redis.patch(sid, pairs, unset))

        async def from_fallback() -> bytes | None:
            new = await self._fallback.update(sid, lambda raw: apply_patch(raw, changes, unset))
            if new is None and self._router.redis_readable and await self._fallback.get(sid, touch=False) is None:
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
                    self._router.changed()
                    return checked_session(sid, new, self._fallback.name)
            if new is None and recheck and await self._router.redis_is_back():
                return await self.patch(sid, changes, unset, recheck=False)
            if new is not None:
                self._router.changed()
            return checked_session(sid, new, self._fallback.name)

        return await self._router.call(on_redis, from_fallback, sid)

    async def delete(self, sid: str) -> bool:
        async def from_fallback() -> bool:
            if self._redis is None:
                return await self._drop(sid)
            entry = await self._fallback.get(sid, touch=False)
            # Recorded even when unknown here: the session may exist in Redis and must go there too.
            await self._fallback.put(sid, None)
            self._router.changed()
            return entry is not None and entry.value is not None

        return await self._router.call(lambda: self._on_redis.delete(sid), from_fallback, sid)
