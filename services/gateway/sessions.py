"""Sessions as the gateway sees them: the cookie (optionally signed like Flask-Session) and NATS calls, reads coalesced."""

from __future__ import annotations

import asyncio
import contextvars
import re
import secrets
from typing import Any

import msgspec
import structlog
from aiohttp import web
from itsdangerous import BadSignature, Signer
from nats.aio.client import Client as NATS

from services.gateway.config import GatewayConfig
from shared.bus import request, request_bytes
from shared.codec import decode
from shared.contracts import MAX_SESSION_BATCH, SessionGetMany, SessionGetManyReply, SessionRead, Subjects
from shared.errors import INTERNAL, UNAVAILABLE, ServiceError
from shared.logging import current_request_id

log = structlog.get_logger(__name__)

# Flask-Session makes sids with secrets.token_urlsafe(32); accept any url-safe token of sane length.
_SID = re.compile(r"^[A-Za-z0-9_-]{16,128}$")


def new_sid() -> str:
    return secrets.token_urlsafe(32)


class SessionCookie:
    """Reads and writes the `session` cookie exactly as Flask-Session 0.8 does."""

    def __init__(self, config: GatewayConfig) -> None:
        self._config = config
        # Flask-Session's _get_signer: Signer(app.secret_key, salt="flask-session", key_derivation="hmac").
        self._signer = Signer(config.secret_key, salt="flask-session", key_derivation="hmac") if config.use_signer else None

    def sid(self, request: web.Request) -> str | None:
        """The session id in the request's cookie, or None if absent, malformed or tampered with."""
        raw = request.cookies.get(self._config.cookie_name)
        if not raw:
            return None
        if self._signer is not None:
            try:
                raw = self._signer.unsign(raw.encode()).decode()
            except (BadSignature, UnicodeError):
                return None
        return raw if _SID.match(raw) else None

    def set(self, response: web.StreamResponse, sid: str) -> None:
        value = self._signer.sign(sid.encode()).decode() if self._signer is not None else sid
        response.set_cookie(
            self._config.cookie_name,
            value,
            max_age=self._config.session_lifetime,
            path="/",
            httponly=True,
            samesite="Lax",
            secure=self._config.cookie_secure or None,
        )

    def expire(self, response: web.StreamResponse) -> None:
        response.del_cookie(self._config.cookie_name, path="/", secure=self._config.cookie_secure or None, httponly=True, samesite="Lax")


_READS = msgspec.msgpack.Encoder()
_REPLY = msgspec.msgpack.Decoder(SessionGetManyReply)
MAX_BATCHES_IN_FLIGHT = 2


class _Read:
    __slots__ = ("future", "request_id", "sid")

    def __init__(self, sid: str, request_id: str | None, future: asyncio.Future[dict[str, Any] | None]) -> None:
        self.sid = sid
        self.request_id = request_id
        self.future = future


class SessionReads:
    """Coalesces session reads: those that arrive while a batch is in flight go together as one `session.get_many`.

    No timer: a read is sent at the next turn of the event loop when fewer than
    MAX_BATCHES_IN_FLIGHT batches are out, else with the next batch, sent as soon as one
    comes back. Each read still gets its own result or error, its own expiry sliding and
    fallback on the session service, and carries its request id for the service's logs.
    """

    def __init__(self, nc: NATS, subject: str, timeout: float, *, max_in_flight: int = MAX_BATCHES_IN_FLIGHT) -> None:
        self._nc = nc
        self._subject = subject
        self._timeout = timeout
        self._max_in_flight = max_in_flight
        self._waiting: list[_Read] = []
        self._in_flight = 0
        self._scheduled = False
        self._tasks: set[asyncio.Task[None]] = set()

    async def get(self, sid: str) -> dict[str, Any] | None:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[dict[str, Any] | None] = loop.create_future()
        self._waiting.append(_Read(sid, current_request_id(), future))
        if not self._scheduled and self._in_flight < self._max_in_flight:
            self._scheduled = True
            loop.call_soon(self._send_waiting, context=contextvars.Context())
        return await future

    def _send_waiting(self) -> None:
        self._scheduled = False
        while self._waiting and self._in_flight < self._max_in_flight:
            batch, self._waiting = self._waiting[:MAX_SESSION_BATCH], self._waiting[MAX_SESSION_BATCH:]
            batch = [read for read in batch if not read.future.done()]  # requests cancelled while waiting
            if not batch:
                continue
            self._in_flight += 1
            # A batch serves many requests: it runs under none of their log contexts.
            task = asyncio.get_running_loop().create_task(self._send(batch), context=contextvars.Context())
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _send(self, batch: list[_Read]) -> None:
        try:
            data = _READS.encode(SessionGetMany([SessionRead(read.sid, read.request_id) for read in batch]))
            reply = _REPLY.decode(await request_bytes(self._nc, self._subject, data, timeout=self._timeout))
            if reply.error is not None:
                raise ServiceError(reply.error.code, reply.error.message)
            if len(reply.results) != len(batch):
                raise ServiceError(INTERNAL, f"session.get_many answered {len(reply.results)} reads of {len(batch)}")
            for read, result in zip(batch, reply.results, strict=True):
                if read.future.done():
                    continue
                if result.error is not None:
                    read.future.set_exception(ServiceError(result.error.code, result.error.message))
                    continue
                try:
                    session = decode(result.session)
                except ServiceError as exc:
                    read.future.set_exception(ServiceError(INTERNAL, f"malformed session in the session.get_many reply: {exc.message}"))
                else:
                    read.future.set_result(session if isinstance(session, dict) else None)
        except ServiceError as exc:
            self._fail(batch, exc.code, exc.message)
        except asyncio.CancelledError:  # the gateway is stopping
            self._fail(batch, UNAVAILABLE, "the gateway is shutting down")
            raise
        except Exception as exc:
            log.error("session_reads_failed", error=f"{type(exc).__name__}: {exc}", reads=len(batch))
            self._fail(batch, INTERNAL, f"malformed session.get_many reply: {type(exc).__name__}")
        finally:
            self._in_flight -= 1
            if self._waiting:
                self._send_waiting()

    @staticmethod
    def _fail(batch: list[_Read], code: str, message: str) -> None:
        for read in batch:
            if not read.future.done():
                read.future.set_exception(ServiceError(code, message))


class SessionClient:
    """Session reads (coalesced, see SessionReads) and writes, each write one NATS request to the session service."""

    def __init__(self, nc: NATS, subjects: Subjects, timeout: float) -> None:
        self._nc = nc
        self._subjects = subjects
        self._timeout = timeout
        self._reads = SessionReads(nc, subjects.session_get_many, timeout)

    async def get(self, sid: str) -> dict[str, Any] | None:
        return await self._reads.get(sid)

    async def create(self, data: dict[str, Any], replace_sid: str | None) -> str:
        sid = new_sid()
        await request(self._nc, self._subjects.session_set, {"sid": sid, "data": data, "replace_sid": replace_sid}, timeout=self._timeout)
        return sid

    async def patch(self, sid: str, set_fields: dict[str, Any] | None = None, unset: list[str] | None = None) -> dict[str, Any] | None:
        payload: dict[str, Any] = {"sid": sid, "set": set_fields or {}, "unset": unset or []}
        reply = await request(self._nc, self._subjects.session_patch, payload, timeout=self._timeout)
        session = reply.get("session")
        return session if isinstance(session, dict) else None

    async def delete(self, sid: str) -> None:
        await request(self._nc, self._subjects.session_delete, {"sid": sid}, timeout=self._timeout)

    async def ping(self, timeout: float = 1.0) -> bool:
        reply = await request(self._nc, self._subjects.session_ping, {}, timeout=timeout)
        return bool(reply.get("ok"))
