"""The NATS handlers of session.get/set/patch/delete/ping (shapes in shared/contracts.py)."""

from __future__ import annotations

import re
import time
from collections.abc import Awaitable, Callable
from typing import Any

import structlog
from nats.aio.msg import Msg

from services.session.metrics import CALLS
from services.session.store import SessionStore
from shared.codec import encode
from shared.errors import BAD_REQUEST, ServiceError
from shared.logging import mask

log = structlog.get_logger(__name__)

# What Flask-Session generates (secrets.token_urlsafe) and what a JetStream KV key accepts.
SID_RE = re.compile(r"^[A-Za-z0-9_-]{1,256}$")

Reply = dict[str, Any]


def _sid(req: dict[str, Any], field: str = "sid") -> str:
    sid = req.get(field)
    if not isinstance(sid, str) or not sid:
        raise ServiceError(BAD_REQUEST, f"{field} must be a non-empty string")
    return sid


def _storable_sid(req: dict[str, Any], field: str = "sid") -> str:
    sid = _sid(req, field)
    if not SID_RE.match(sid):
        raise ServiceError(BAD_REQUEST, f"{field} must be 1-256 characters of A-Z, a-z, 0-9, '-' and '_'")
    return sid


def _fields(value: Any, what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ServiceError(BAD_REQUEST, f"{what} must be a map")
    if not all(isinstance(k, str) for k in value):
        raise ServiceError(BAD_REQUEST, f"{what} must have string keys")
    return value


class SessionHandlers:
    """Validates each request, calls the store, and shapes the reply."""

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

    async def get(self, req: dict[str, Any], _: Msg) -> Reply:
        sid = _sid(req)

        async def call() -> Reply:
            if not SID_RE.match(sid):
                return {"session": None}  # such a sid is never stored, so it has no session
            return {"session": await self._store.get(sid)}

        return await self._timed("get", sid, call)

    async def set(self, req: dict[str, Any], _: Msg) -> Reply:
        sid = _storable_sid(req)
        data = _fields(req.get("data"), "data")
        replace_sid = req.get("replace_sid")
        if replace_sid is not None and not isinstance(replace_sid, str):
            raise ServiceError(BAD_REQUEST, "replace_sid must be a string or null")
        old = replace_sid if replace_sid and SID_RE.match(replace_sid) and replace_sid != sid else None

        async def call() -> Reply:
            await self._store.set(sid, encode(data), old)
            return {"ok": True}

        return await self._timed("set", sid, call)

    async def patch(self, req: dict[str, Any], _: Msg) -> Reply:
        sid = _sid(req)
        changes = _fields(req.get("set") or {}, "set")
        unset = req.get("unset") or []
        if not isinstance(unset, list) or not all(isinstance(name, str) for name in unset):
            raise ServiceError(BAD_REQUEST, "unset must be a list of strings")
        both = set(changes) & set(unset)
        if both:
            raise ServiceError(BAD_REQUEST, f"fields both set and unset: {', '.join(sorted(both))}")

        async def call() -> Reply:
            if not SID_RE.match(sid):
                return {"session": None}
            if not changes and not unset:
                return {"session": await self._store.get(sid)}
            return {"session": await self._store.patch(sid, changes, unset)}

        return await self._timed("patch", sid, call)

    async def delete(self, req: dict[str, Any], _: Msg) -> Reply:
        sid = _sid(req)

        async def call() -> Reply:
            if not SID_RE.match(sid):
                return {"deleted": False}
            return {"deleted": await self._store.delete(sid)}

        return await self._timed("delete", sid, call)

    async def ping(self, _req: dict[str, Any], _: Msg) -> Reply:
        return {"ok": True, "store": self._store.name, "degraded": self._store.degraded}
