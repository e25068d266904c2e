"""The NATS handlers of session.get/get_many/set/patch/delete/ping (shapes in shared/contracts.py)."""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Awaitable, Callable

import msgspec
import structlog
from nats.aio.msg import Msg

from services.session.metrics import CALLS, timed_call
from services.session.store import SessionStore
from shared.codec import encode
from shared.contracts import (
    NO_SESSION,
    SID_PATTERN,
    ErrorBody,
    Ok,
    Ping,
    SessionDelete,
    SessionDeleted,
    SessionGet,
    SessionGetMany,
    SessionGetManyReply,
    SessionPatch,
    SessionPong,
    SessionRead,
    SessionReadResult,
    SessionReply,
    SessionSet,
    decode_payload,
)
from shared.errors import BAD_REQUEST, INTERNAL, ServiceError
from shared.logging import mask

log = structlog.get_logger(__name__)

SID_RE = re.compile(SID_PATTERN)

Reply = SessionReply | SessionDeleted | SessionPong | Ok

_ENCODER = msgspec.msgpack.Encoder()
_NO_SESSION = SessionReadResult()
_GET_OK = CALLS.labels(op="get", outcome="ok")


def _session(stored: bytes | None) -> SessionReply:
    """The reply carries the stored map's bytes as they are (the store checked that they are a map)."""
    return SessionReply(NO_SESSION if stored is None else msgspec.Raw(stored))


class SessionHandlers:
    """Calls the store for each request (decoded and checked by shared.bus.Server) and shapes the reply."""

    def __init__(self, store: SessionStore) -> None:
        self._store = store

    async def _timed(self, op: str, sid: str | None, call: Callable[[], Awaitable[Reply]]) -> Reply:
        return await timed_call(op, call, "session_call", sid=mask(sid), store=self._store.name)

    async def get(self, req: SessionGet, _: Msg) -> Reply:
        sid = req.sid

        async def call() -> Reply:
            if not SID_RE.match(sid):
                return SessionReply()  # such a sid is never stored, so it has no session
            return _session(await self._store.get(sid))

        return await self._timed("get", sid, call)

    async def get_many(self, data: bytes, _: Msg) -> bytes:
        """`session.get_many`: each read as `get` would serve it, one result (or error) per read.

        On Redis the store sends the batch as one pipeline of GETEX; metrics and the debug
        line stay per read, and each read's log lines carry its own request id.
        """
        reads = decode_payload(data, SessionGetMany).reads
        start = time.perf_counter()
        results: list[SessionReadResult] = [_NO_SESSION] * len(reads)
        stored: list[int] = []
        for i, read in enumerate(reads):
            if not read.sid:
                results[i] = SessionReadResult(error=ErrorBody(BAD_REQUEST, "sid must be a non-empty string"))
            elif SID_RE.match(read.sid):
                stored.append(i)
            # else: such a sid is never stored, so it has no session
        try:
            outcomes = await self._store.get_many([reads[i].sid for i in stored], [reads[i].request_id for i in stored]) if stored else []
        except BaseException:
            self._observe_reads(reads, results, start, failed=True)
            raise
        for i, outcome in zip(stored, outcomes, strict=True):
            if outcome is None:
                continue
            if isinstance(outcome, ServiceError):
                results[i] = SessionReadResult(error=ErrorBody(outcome.code, outcome.message))
            elif isinstance(outcome, Exception):
                with structlog.contextvars.bound_contextvars(request_id=reads[i].request_id):
                    log.error("handler_failed", op="get", exc_info=outcome)
                results[i] = SessionReadResult(error=ErrorBody(INTERNAL, "internal error; see the service log"))
            else:
                results[i] = SessionReadResult(session=msgspec.Raw(outcome))
        self._observe_reads(reads, results, start)
        return _ENCODER.encode(SessionGetManyReply(results=results))

    def _observe_reads(self, reads: list[SessionRead], results: list[SessionReadResult], start: float, *, failed: bool = False) -> None:
        """Per read, as `_timed` does for one call: the latency histogram and the debug line."""
        elapsed = time.perf_counter() - start
        debug = log.is_enabled_for(logging.DEBUG)
        for read, result in zip(reads, results, strict=True):
            outcome = "error" if failed else result.error.code if result.error is not None else "ok"
            child = _GET_OK if outcome == "ok" else CALLS.labels(op="get", outcome=outcome)
            child.observe(elapsed)
            if debug:
                with structlog.contextvars.bound_contextvars(request_id=read.request_id):
                    log.debug("session_call", op="get", sid=mask(read.sid), store=self._store.name, outcome=outcome, ms=round(elapsed * 1000, 3), batch=len(reads))

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
