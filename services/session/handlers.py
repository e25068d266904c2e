"""The NATS handlers of session.get/set/patch/delete/ping (shapes in shared/contracts.py)."""

from __future__ import annotations

import re
import time
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec
import structlog
from nats.aio.msg import Msg

from services.session.metrics import CALLS
from services.session.store import SessionStore
from shared.codec import encode
from shared.contracts import NO_SESSION, SID_PATTERN, Ok, Ping, SessionDelete, SessionDeleted, SessionGet, SessionPatch, SessionPong, SessionReply, SessionSet
from shared.errors import BAD_REQUEST, ServiceError
from shared.logging import mask

log = structlog.get_logger(__name__)

SID_RE = re.compile(SID_PATTERN)

Reply = SessionReply | SessionDeleted | SessionPong | Ok


def _session(session: dict[str, Any] | None) -> SessionReply:
    return SessionReply(NO_SESSION if session is None else msgspec.Raw(encode(session)))


class SessionHandlers:
    """Calls the store for each request (decoded and checked by shared.bus.Server) and shapes the reply."""

    def __init__(self, store: SessionStore) -> None:
        self._store = store

    async def _timed(self, op: str, sid: str | None, call: Callable[[], Awaitable[Reply]]) -> Reply:
        start = time.perf_counter()
        outcome = "error"
        try:
            reply = await call()
            outcome = "ok"
            return reply
        except ServiceError as exc:
            outcome = exc.code
            raise
        finally:
            elapsed = time.perf_counter() - start
            CALLS.labels(op=op, outcome=outcome).observe(elapsed)
            log.debug("session_call", op=op, sid=mask(sid), store=self._store.name, outcome=outcome, ms=round(elapsed * 1000, 3))

    async def get(self, req: SessionGet, _: Msg) -> Reply:
        sid = req.sid

        async def call() -> Reply:
            if not SID_RE.match(sid):
                return SessionReply()  # such a sid is never stored, so it has no session
            return _session(await self._store.get(sid))

        return await self._timed("get", sid, call)

    async def set(self, req: SessionSet, _: Msg) -> Reply:
        sid, data, replace_sid = req.sid, req.data, req.replace_sid
        old = replace_sid if replace_sid and SID_RE.match(replace_sid) and replace_sid != sid else None

        async def call() -> Reply:
            await self._store.set(sid, encode(data), old)
            return Ok()

        return await self._timed("set", sid, call)

    async def patch(self, req: SessionPatch, _: Msg) -> Reply:
        sid, changes, unset = req.sid, req.set, req.unset
        both = set(changes) & set(unset)
        if both:
            raise ServiceError(BAD_REQUEST, f"fields both set and unset: {', '.join(sorted(both))}")

        async def call() -> Reply:
            if not SID_RE.match(sid):
                return SessionReply()
            if not changes and not unset:
                return _session(await self._store.get(sid))
            return _session(await self._store.patch(sid, changes, unset))

        return await self._timed("patch", sid, call)

    async def delete(self, req: SessionDelete, _: Msg) -> Reply:
        sid = req.sid

        async def call() -> Reply:
            if not SID_RE.match(sid):
                return SessionDeleted(False)
            return SessionDeleted(await self._store.delete(sid))

        return await self._timed("delete", sid, call)

    async def ping(self, _req: Ping, _: Msg) -> Reply:
        return SessionPong(ok=True, store=self._store.name, degraded=self._store.degraded)
