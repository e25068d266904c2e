"""The NATS handlers of session.get/get_many/set/patch/delete/ping (shapes in shared/contracts.py)."""

from __future__ import annotations

import logging
import re

import msgspec
import structlog
from nats.aio.msg import Msg

from services.session.metrics import BATCH_READS
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
_READ_OK = BATCH_READS.labels(outcome="ok")


def _session(stored: bytes | None) -> SessionReply:
    """The reply carries the stored map's bytes as they are (the store checked that they are a map)."""
    return SessionReply(NO_SESSION if stored is None else msgspec.Raw(stored))


class SessionHandlers:
    """Calls the store for each request (decoded, checked and measured by shared.bus.Server) and shapes the reply."""

    def __init__(self, store: SessionStore) -> None:
        self._store = store

    async def get(self, req: SessionGet, _: Msg) -> Reply:
        if not SID_RE.match(req.sid):
            return SessionReply()  # such a sid is never stored, so it has no session
        return _session(await self._store.get(req.sid))

    async def get_many(self, data: bytes, _: Msg) -> bytes:
        """`session.get_many`: each read as `get` would serve it, one result (or error) per read.

        On Redis the store sends the batch as one pipeline of GETEX. The dispatcher measures
        the batch; each read is counted by outcome, and its log lines carry its own request id.
        """
        reads = decode_payload(data, SessionGetMany).reads
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
            self._count_reads(reads, results, failed=True)
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
        self._count_reads(reads, results)
        return _ENCODER.encode(SessionGetManyReply(results=results))

    def _count_reads(self, reads: list[SessionRead], results: list[SessionReadResult], *, failed: bool = False) -> None:
        """Per read of a batch: BATCH_READS by outcome and, at debug level, a line with the read's own request id."""
        debug = log.is_enabled_for(logging.DEBUG)
        for read, result in zip(reads, results, strict=True):
            outcome = "error" if failed else result.error.code if result.error is not None else "ok"
            (_READ_OK if outcome == "ok" else BATCH_READS.labels(outcome=outcome)).inc()
            if debug:
                with structlog.contextvars.bound_contextvars(request_id=read.request_id):
                    log.debug("session_read", sid=mask(read.sid), store=self._store.name, outcome=outcome, batch=len(reads))

    async def set(self, req: SessionSet, _: Msg) -> Reply:
        sid, data, replace_sid = req.sid, req.data, req.replace_sid
        old = replace_sid if replace_sid and SID_RE.match(replace_sid) and replace_sid != sid else None
        await self._store.set(sid, encode(data), old)
        return Ok()

    async def patch(self, req: SessionPatch, _: Msg) -> Reply:
        sid, changes, unset = req.sid, req.set, req.unset
        both = set(changes) & set(unset)
        if both:
            raise ServiceError(BAD_REQUEST, f"fields both set and unset: {', '.join(sorted(both))}")
        if not SID_RE.match(sid):
            return SessionReply()
        if not changes and not unset:
            return _session(await self._store.get(sid))
        return _session(await self._store.patch(sid, changes, unset))

    async def delete(self, req: SessionDelete, _: Msg) -> Reply:
        if not SID_RE.match(req.sid):
            return SessionDeleted(False)
        return SessionDeleted(await self._store.delete(req.sid))

    async def ping(self, _req: Ping, _: Msg) -> Reply:
        return SessionPong(ok=True, store=self._store.name, degraded=self._store.degraded)
