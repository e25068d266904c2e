"""The audit trail: one typed event per query, sign-in and sign-out, published to JetStream by the gateway (read back by
`GET /api/audit`, services/gateway/audit_http.py, and `admin audit`).

Events are published in the background with a JetStream ack and their id as Nats-Msg-Id, so a
retry after a lost ack is not stored twice. While the stream cannot take them they wait in a
bounded buffer (AUDIT_BUFFER; drops are counted and logged). With AUDIT_REQUIRED=1 a query is
refused with 503 before it runs while the stream cannot be reached.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections import deque
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import msgspec
import nats.errors
import nats.js.errors
import structlog
from aiohttp import web
from nats.aio.client import Client as NATS
from prometheus_client import Counter, Gauge

from services.gateway import keys
from services.gateway.config import GatewayConfig
from services.gateway.relay import QueryResult
from shared.access import DEFAULT_SOURCE
from shared.audit import event_kind, stream_config
from shared.contracts import AuditConnection, AuditEvent, AuditQuery, AuditSignIn, AuditSignOut, Subjects
from shared.errors import QUERY_REFUSED, QUERY_TIMEOUT, TIMEOUT, UNAVAILABLE, UNKNOWN_SOURCE, ServiceError
from shared.logging import current_request_id
from shared.users import signed_in_user, user_id

log = structlog.get_logger(__name__)

PUBLISHED = Counter("gateway_audit_events_total", "Audit events stored in the stream, by kind", ["kind"])
DROPPED = Counter("gateway_audit_events_dropped_total", "Audit events dropped because the buffer was full while the stream could not take them")
BUFFERED = Gauge("gateway_audit_events_buffered", "Audit events waiting for the stream")

PUBLISH_TIMEOUT_S = 2.0
CHECK_TIMEOUT_S = 1.0
BATCH = 64
RETRY_MIN_S = 0.2
RETRY_MAX_S = 5.0
FLUSH_ON_STOP_S = 3.0
ERRORS = (nats.errors.Error, nats.js.errors.Error, TimeoutError, OSError)


def new_event_id() -> str:
    return uuid.uuid4().hex


class AuditTrail:
    """Publishes audit events in order of arrival; the only writer of the audit stream."""

    def __init__(self, nc: NATS, subjects: Subjects, config: GatewayConfig) -> None:
        self._nc = nc
        self._js = nc.jetstream()
        self._subjects = subjects
        self._config = config
        self._stream = config.audit_stream
        self._buffer: deque[AuditEvent] = deque()
        self._wake = asyncio.Event()
        self._empty = asyncio.Event()  # set while nothing waits to be published
        self._empty.set()
        self._task: asyncio.Task[None] | None = None
        self._failing = False

    async def start(self) -> None:
        try:
            await self._declare()
        except ERRORS as exc:  # JetStream not reachable yet: events wait in the buffer, the stream is declared on the first retry
            log.warning("audit_stream_unavailable", stream=self._stream, error=str(exc) or type(exc).__name__)
        self._task = asyncio.create_task(self._publish_loop())

    async def _declare(self) -> None:
        c = self._config
        await self._js.add_stream(stream_config(self._stream, self._subjects, replicas=c.audit_replicas, max_age_s=c.audit_max_age_s, max_bytes=c.audit_max_bytes))

    async def stop(self) -> None:
        """Give the buffered events FLUSH_ON_STOP_S to reach the stream, then log what is lost."""
        if self._task is None:
            return
        if not self._failing:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._empty.wait(), FLUSH_ON_STOP_S)
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)
        if self._buffer:
            log.error("audit_events_lost_on_stop", events=len(self._buffer))

    async def check_writable(self) -> None:
        """With AUDIT_REQUIRED=1: 503 unless the audit stream answers now (nothing has run yet)."""
        if not self._config.audit_required:
            return
        try:
            await asyncio.wait_for(self._js.stream_info(self._stream), CHECK_TIMEOUT_S)
        except ERRORS as exc:
            log.warning("audit_required_refusal", stream=self._stream, error=str(exc) or type(exc).__name__)
            raise ServiceError(UNAVAILABLE, "the audit trail cannot take events right now, and AUDIT_REQUIRED=1: nothing was run; try again shortly") from None

    def record(self, event: AuditEvent) -> None:
        """Queue one event for the stream; when AUDIT_BUFFER events already wait, it is dropped and counted."""
        if len(self._buffer) >= self._config.audit_buffer:
            DROPPED.inc()
            log.error("audit_event_dropped", kind=event_kind(event), event_id=event.id, user_id=event.user_id, buffered=len(self._buffer))
            return
        self._buffer.append(event)
        BUFFERED.set(len(self._buffer))
        self._empty.clear()
        self._wake.set()

    async def _publish_loop(self) -> None:
        delay = RETRY_MIN_S
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._buffer:
                batch = [self._buffer[i] for i in range(min(BATCH, len(self._buffer)))]
                results = await self._publish_all(batch)
                done = 0
                for result in results:  # in order: the first failure and everything after it are sent again
                    if isinstance(result, BaseException):
                        break
                    done += 1
                for _ in range(done):
                    PUBLISHED.labels(event_kind(self._buffer.popleft())).inc()
                BUFFERED.set(len(self._buffer))
                if not self._buffer:
                    self._empty.set()
                if done == len(batch):
                    if self._failing:
                        log.info("audit_stream_recovered", stream=self._stream, buffered=len(self._buffer))
                        self._failing = False
                    delay = RETRY_MIN_S
                    continue
                error = next(r for r in results if isinstance(r, BaseException))
                if not self._failing:
                    log.warning("audit_events_buffered", stream=self._stream, buffered=len(self._buffer), error=str(error) or type(error).__name__, limit=self._config.audit_buffer)
                    self._failing = True
                await asyncio.sleep(delay)
                delay = min(RETRY_MAX_S, delay * 2)
                if isinstance(error, nats.js.errors.NoStreamResponseError | nats.errors.NoRespondersError):
                    try:
                        await self._declare()  # the stream was lost (JetStream restarted without its store): declare it again
                    except ERRORS:
                        pass

    async def _publish_all(self, batch: list[AuditEvent]) -> list[BaseException | None]:
        """Publish a batch concurrently (one event, the usual case under light load, without a task)."""
        if len(batch) == 1:
            try:
                await self._publish(batch[0])
            except Exception as exc:
                return [exc]
            return [None]
        return await asyncio.gather(*(self._publish(event) for event in batch), return_exceptions=True)

    async def _publish(self, event: AuditEvent) -> None:
        data = msgspec.msgpack.encode(event)
        await self._js.publish(self._subjects.audit(event_kind(event)), data, timeout=PUBLISH_TIMEOUT_S, stream=self._stream, headers={"Nats-Msg-Id": event.id})


AUDIT = web.AppKey("audit", AuditTrail)


async def audit_trail(app: web.Application) -> AsyncIterator[None]:
    """Cleanup context (after the NATS connection's): the publisher, flushed on stop."""
    trail = AuditTrail(app[keys.NATS_CLIENT], app[keys.SUBJECTS], app[keys.CONFIG])
    await trail.start()
    app[AUDIT] = trail
    yield
    await trail.stop()


_OUTCOMES = {QUERY_REFUSED: "refused", UNKNOWN_SOURCE: "refused", QUERY_TIMEOUT: "timeout", TIMEOUT: "timeout"}
CANCELLED = frozenset({"cancelled", "client_gone", "client_stalled"})


@dataclass
class QueryAudit:
    """The audit event of one query in the making: who, where and what at the start, how it ended at the end."""

    trail: AuditTrail
    user_id: str
    email: str | None
    source: str
    sql: str
    role: str | None = None
    conversation_id: str | None = None
    model: str | None = None
    turn: str | None = None
    started: float = field(default_factory=time.monotonic)
    request_id: str | None = field(default_factory=current_request_id)

    def finish(self, outcome: str, result: QueryResult, error: ServiceError | None = None) -> None:
        """Record the one event of this query; `outcome` is "ok", an error code, or a client outcome (client_gone...)."""
        kind: Literal["ok", "refused", "error", "cancelled", "timeout"] = "ok" if outcome == "ok" else "cancelled" if outcome in CANCELLED else _OUTCOMES.get(outcome, "error")  # type: ignore[assignment]
        self.trail.record(
            AuditQuery(
                id=new_event_id(),
                time=time.time(),
                user_id=self.user_id,
                email=self.email,
                request_id=self.request_id,
                source=self.source,
                role=self.role,
                sql=self.sql,
                outcome=kind,
                reason=error.message if error is not None else None,
                rows=result.row_count,
                bytes=result.bytes,
                duration_ms=round((time.monotonic() - self.started) * 1000, 2),
                conversation_id=self.conversation_id,
                model=self.model,
                turn=self.turn,
            )
        )


def query_audit(app: web.Application, session: Mapping[str, Any], source: str | None, sql: str, **chat: str | None) -> QueryAudit:
    """Start the audit event of a query by the signed-in user of `session`."""
    user = signed_in_user(session)
    email = user.get("email") if isinstance(user, Mapping) else None
    return QueryAudit(app[AUDIT], user_id(session) or "", email if isinstance(email, str) else None, source or DEFAULT_SOURCE, sql, **chat)


def record_session_event(app: web.Application, event: type[AuditSignIn] | type[AuditSignOut] | type[AuditConnection], user: Mapping[str, Any] | str | None, **fields: Any) -> None:
    """A sign-in, sign-out or connection event for `user` (a session's user map)."""
    email = user.get("email") if isinstance(user, Mapping) else None
    app[AUDIT].record(event(id=new_event_id(), time=time.time(), user_id=user_id(user) or "", email=email if isinstance(email, str) else None, request_id=current_request_id(), **fields))
