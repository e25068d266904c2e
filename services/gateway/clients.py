"""The gateway's clients of the other services, one class per remote API, typed both ways.

Each call sends the request Struct of shared/contracts.py and decodes the reply Struct, so a
malformed reply is an `internal` error naming the field, never a KeyError in a handler:

* SessionClient: `session.get_many` (reads coalesced, see SessionReads), `session.set`,
  `session.patch`, `session.delete`, `session.ping`.
* Limiter: `session.limit`, rate limits and quotas shared by every replica.
* HistoryClient: `session.conversation.*`, a user's conversations.
* QueryClient: `query.ping` (sources and dialects), `query.schema` (describe_schema) and
  `query.schema.search` (search_schema).
* ExamplesClient: `session.examples.*`, the verified examples of each source.
* ConnectionsClient: users' own databases, `session.connection.*` (the records, passwords
  sealed) and `query.connection.*` (create, change, test: the query service opens them).
* RecentClient: `session.recent.*`, a user's recent queries per source.

The query stream (`query.execute`) has its own consumer, shared/stream.py, used by relay.py.
The session maps themselves (a session's `data`, a patch's reply) stay open maps: they are
what Flask-Session stores.
"""

from __future__ import annotations

import asyncio
import contextvars
import time
from collections.abc import Sequence
from typing import Any

import msgspec
import structlog
from nats.aio.client import Client as NATS

from services.gateway.sessions import new_sid
from shared.access import DEFAULT_SOURCE, unknown_source
from shared.bus import request, request_bytes, wait_connected
from shared.codec import decode
from shared.contracts import (
    MAX_SESSION_BATCH,
    Caller,
    ConnectionChanges,
    ConnectionCreate,
    ConnectionDelete,
    ConnectionDeleted,
    ConnectionFound,
    ConnectionGet,
    ConnectionList,
    ConnectionRecord,
    ConnectionRecords,
    ConnectionRef,
    ConnectionSettings,
    ConnectionTest,
    ConnectionTested,
    ConnectionUpdate,
    ConnectionView,
    ConversationAppend,
    ConversationAppended,
    ConversationDeleted,
    ConversationInfo,
    ConversationList,
    ConversationLoad,
    ConversationLoaded,
    ConversationPage,
    ConversationPatch,
    ConversationRef,
    Example,
    ExamplePropose,
    ExampleReply,
    ExampleSimilar,
    ExamplesReply,
    LimitRequest,
    LimitResult,
    LimitWindow,
    Ok,
    Ping,
    QueryPong,
    RecentAdd,
    RecentList,
    RecentQueries,
    SchemaReply,
    SchemaRequest,
    SchemaSearchReply,
    SchemaSearchRequest,
    SessionDelete,
    SessionDeleted,
    SessionGetMany,
    SessionGetManyReply,
    SessionPatch,
    SessionPong,
    SessionRead,
    SessionSet,
    Subjects,
)
from shared.errors import INTERNAL, UNAVAILABLE, UNKNOWN_SOURCE, ServiceError
from shared.logging import current_request_id

log = structlog.get_logger(__name__)

Window = LimitWindow
"""One fixed window: `Window(name="minute", seconds=60, limit=10)`; limit 0 turns it off."""

SCHEMA_TIMEOUT_S = 15.0
"""How long the gateway waits for a description (the query service stops at QUERY_SCHEMA_TIMEOUT_S, 10 s by default)."""
SEARCH_TIMEOUT_S = 20.0
"""A source's first search waits for its catalog (QUERY_SCHEMA_TIMEOUT_S, 10 s by default), not for the value samples."""


async def _call[R: msgspec.Struct](nc: NATS, subject: str, payload: msgspec.Struct, reply: type[R], timeout: float) -> R:
    """One request: the Struct out, the reply Struct in. An error reply raises its ServiceError; a reply
    that is not a `reply` raises `internal` (the other service's bug, not the caller's), naming the field."""
    return await request(nc, subject, payload, timeout=timeout, reply=reply)


_READS = msgspec.msgpack.Encoder()
_REPLY = msgspec.msgpack.Decoder(SessionGetManyReply)
MAX_BATCHES_IN_FLIGHT = 2
READ_RETRY_S = 3.0
"""How long a session read is asked again while the bus reconnects (a NATS cluster node gone)."""


class _Read:
    """One waiting read: its sid, the request id it serves, and the future its caller awaits."""

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

    async def _request(self, data: bytes) -> bytes:
        """`session.get_many`, asked again while the bus moves to another server (reads are idempotent).

        A NATS cluster node going away drops the replies in flight; within READ_RETRY_S the
        client is on another node and the session service subscribed there again, so the read
        is answered instead of failing a request that a moment later would have worked. With a
        single NATS server there is no other node to move to: the read fails at once (503).
        """
        deadline = asyncio.get_running_loop().time() + READ_RETRY_S
        pause = 0.05
        while True:
            try:
                return await request_bytes(self._nc, self._subject, data, timeout=self._timeout)
            except ServiceError as exc:
                remaining = deadline - asyncio.get_running_loop().time()
                if exc.code != UNAVAILABLE or remaining <= 0 or len(self._nc.servers) < 2 or not await wait_connected(self._nc, remaining):
                    raise
                await asyncio.sleep(pause)  # connected, but the session service may still be subscribing again
                pause = min(pause * 2, 0.4)

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
            reply = _REPLY.decode(await self._request(data))
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
        await request(self._nc, self._subjects.session_set, SessionSet(sid, data, replace_sid), timeout=self._timeout)
        return sid

    async def patch(self, sid: str, set_fields: dict[str, Any] | None = None, unset: list[str] | None = None) -> dict[str, Any] | None:
        """Set and remove fields atomically; the session after the patch (an open map), or None when there is none."""
        reply = await request(self._nc, self._subjects.session_patch, SessionPatch(sid, set_fields or {}, unset or []), timeout=self._timeout)
        session = reply.get("session")
        return session if isinstance(session, dict) else None

    async def delete(self, sid: str) -> None:
        await _call(self._nc, self._subjects.session_delete, SessionDelete(sid), SessionDeleted, self._timeout)

    async def ping(self, timeout: float = 1.0) -> bool:
        return (await _call(self._nc, self._subjects.session_ping, Ping(), SessionPong, timeout)).ok


class Limiter:
    """Counts calls per key in fixed windows through the session service (one Redis command a call)."""

    def __init__(self, nc: NATS, subjects: Subjects, timeout: float) -> None:
        self._nc = nc
        self._subjects = subjects
        self._timeout = timeout

    async def hit(self, key: str, windows: Sequence[Window], *, consume: bool = True) -> LimitResult:
        """Count one call of `key` in every window, unless one is full; `consume=False` only reads.

        Raises ServiceError (bad_request for a malformed key or window, unavailable/timeout
        when no session replica answers).
        """
        return await _call(self._nc, self._subjects.session_limit, LimitRequest(key, list(windows), consume), LimitResult, self._timeout)


class HistoryClient:
    """The gateway's client of `session.conversation.*`, one NATS request per call."""

    def __init__(self, nc: NATS, subjects: Subjects, timeout: float) -> None:
        self._nc = nc
        self._subjects = subjects
        self._timeout = timeout

    async def _call[S: msgspec.Struct](self, op: str, payload: msgspec.Struct, kind: type[S]) -> S:
        return await _call(self._nc, self._subjects.session_conversation(op), payload, kind, self._timeout)

    async def load(self, uid: str, conversation_id: str, *, max_bytes: int, min_messages: int = 2) -> ConversationLoaded:
        return await self._call("load", ConversationLoad(uid, conversation_id, max_bytes, min_messages), ConversationLoaded)

    async def append(self, uid: str, conversation_id: str, messages: list[dict[str, Any]], replace_last_of: int | None = None) -> ConversationAppended:
        # The messages go out as the maps the turn built; the session service decodes them as StoredMessage.
        payload = ConversationAppend(uid, conversation_id, messages, replace_last_of)  # type: ignore[arg-type]
        return await self._call("append", payload, ConversationAppended)

    async def list(self, uid: str, *, limit: int, cursor: str | None) -> ConversationPage:
        return await self._call("list", ConversationList(uid, limit, cursor), ConversationPage)

    async def create(self, uid: str, conversation_id: str) -> ConversationInfo:
        return await self._call("create", ConversationRef(uid, conversation_id), ConversationInfo)

    async def patch(self, uid: str, conversation_id: str, title: str) -> ConversationInfo:
        return await self._call("patch", ConversationPatch(uid, conversation_id, title), ConversationInfo)

    async def delete(self, uid: str, conversation_id: str) -> None:
        await self._call("delete", ConversationRef(uid, conversation_id), ConversationDeleted)


class QueryClient:
    """The gateway's client of `query.ping` and `query.schema` (the query stream is shared/stream.py's)."""

    def __init__(self, nc: NATS, subjects: Subjects) -> None:
        self._nc = nc
        self._subjects = subjects

    async def ping(self, timeout: float) -> QueryPong:
        """The configured sources, the default one, and each one's dialect."""
        return await _call(self._nc, self._subjects.query_ping, Ping(), QueryPong, timeout)

    async def schema(self, source: str | None, tables: Sequence[str] | None, timeout: float = SCHEMA_TIMEOUT_S, *, role: str | None = None, connection: ConnectionRef | None = None) -> SchemaReply:
        """The `query.schema` reply for `source` (None: the default source) or the user's own `connection`: an overview,
        or details of `tables`, as the database role `role` may read them (None: the source's account; docs/access.md).

        Raises ServiceError: bad_request, unknown_source (naming only `source`), query_timeout, unavailable, timeout.
        """
        if connection is not None:
            return await _call(self._nc, self._subjects.query_schema, SchemaRequest(None, list(tables) if tables is not None else None, connection=connection), SchemaReply, timeout)
        request = SchemaRequest(source, list(tables) if tables is not None else None, caller=Caller(role=role) if role else None)
        try:
            return await _call(self._nc, self._subjects.query_schema, request, SchemaReply, timeout)
        except ServiceError as exc:
            if exc.code == UNKNOWN_SOURCE:  # the query service lists every source; this user may not see them all
                raise unknown_source(source or DEFAULT_SOURCE) from None
            raise

    async def search(self, query: str, source: str | None, limit: int, timeout: float = SEARCH_TIMEOUT_S, *, role: str | None = None, connection: ConnectionRef | None = None) -> SchemaSearchReply:
        """The `query.schema.search` reply: the tables of `source` or of the user's own `connection` most relevant to
        `query`, best first, with join paths, only tables the database role `role` may read (None: the source's account; docs/access.md).

        Raises ServiceError: bad_request, unknown_source (naming only `source`), not_found (a connection deleted meanwhile), query_timeout, unavailable, timeout.
        """
        if connection is not None:
            return await _call(self._nc, self._subjects.query_schema_search, SchemaSearchRequest(query=query, limit=limit, connection=connection), SchemaSearchReply, timeout)
        request = SchemaSearchRequest(query=query, source=source, limit=limit, caller=Caller(role=role) if role else None)
        try:
            return await _call(self._nc, self._subjects.query_schema_search, request, SchemaSearchReply, timeout)
        except ServiceError as exc:
            if exc.code == UNKNOWN_SOURCE:
                raise unknown_source(source or DEFAULT_SOURCE) from None
            raise


class _SessionOps:
    """A client of one group of `session.*` requests, each with the same time limit."""

    def __init__(self, nc: NATS, subjects: Subjects, timeout: float) -> None:
        self._nc = nc
        self._subjects = subjects
        self._timeout = timeout


class ExamplesClient(_SessionOps):
    """The gateway's client of `session.examples.*`: propose one (a thumbs-up), and the approved ones like a question."""

    async def propose(self, proposal: ExamplePropose) -> Example:
        return (await _call(self._nc, self._subjects.session_examples("propose"), proposal, ExampleReply, self._timeout)).example

    async def similar(self, source: str, question: str, limit: int) -> list[Example]:
        request = ExampleSimilar(source=source, question=question, limit=limit)
        return (await _call(self._nc, self._subjects.session_examples("similar"), request, ExamplesReply, self._timeout)).examples


RECENT_DEFAULT_SOURCE = "default"
"""The query service's name for the source used when a request names none."""


class RecentClient(_SessionOps):
    """The gateway's client of `session.recent.*`: the last RECENT_MAX queries of a user per source."""

    async def add(self, uid: str, source: str | None, sql: str) -> None:
        """Record `sql` as the user's newest query on `source` (None: the default source)."""
        await _call(self._nc, self._subjects.session_recent("add"), RecentAdd(uid, source or RECENT_DEFAULT_SOURCE, sql), Ok, self._timeout)

    async def list(self, uid: str, source: str | None, limit: int) -> RecentQueries:
        """The user's newest `limit` queries on `source` (None: the default source), newest first."""
        return await _call(self._nc, self._subjects.session_recent("list"), RecentList(uid, source or RECENT_DEFAULT_SOURCE, limit), RecentQueries, self._timeout)


CONNECTION_STORE_TIMEOUT_S = 3.0
CONNECTION_OPEN_TIMEOUT_S = 20.0
"""A create, change or test: the query service resolves, connects, checks the account, then stores."""
_ENABLED_CACHE_S = 5.0


class ConnectionsClient:
    """Users' own databases (docs/connections.md): records from the session service, opening through the query service.

    The password travels only in `create`/`update`, to the query service; nothing here keeps it.
    """

    def __init__(self, nc: NATS, subjects: Subjects) -> None:
        self._nc = nc
        self._subjects = subjects
        self._enabled_until = 0.0

    async def enabled(self) -> bool:
        """Whether the query service holds CONNECTIONS_KEYS (a yes is kept a few seconds, a no is asked again)."""
        if time.monotonic() < self._enabled_until:
            return True
        pong = await _call(self._nc, self._subjects.query_ping, Ping(), QueryPong, CONNECTION_STORE_TIMEOUT_S)
        if pong.connections:
            self._enabled_until = time.monotonic() + _ENABLED_CACHE_S
        return pong.connections

    async def _session[S: msgspec.Struct](self, op: str, payload: msgspec.Struct, kind: type[S]) -> S:
        return await _call(self._nc, self._subjects.session_connection(op), payload, kind, CONNECTION_STORE_TIMEOUT_S)

    async def _query[S: msgspec.Struct](self, op: str, payload: msgspec.Struct, kind: type[S]) -> S:
        return await _call(self._nc, self._subjects.query_connection(op), payload, kind, CONNECTION_OPEN_TIMEOUT_S)

    async def list(self, uid: str) -> list[ConnectionRecord]:
        """The user's records by name (their sealed passwords are opaque here and never sent on)."""
        return (await self._session("list", ConnectionList(uid), ConnectionRecords)).records

    async def get(self, ref: ConnectionRef) -> ConnectionRecord | None:
        return (await self._session("get", ConnectionGet(ref), ConnectionFound)).record

    async def delete(self, ref: ConnectionRef) -> bool:
        return (await self._session("delete", ConnectionDelete(ref), ConnectionDeleted)).deleted

    async def create(self, uid: str, settings: ConnectionSettings) -> ConnectionView:
        return await self._query("create", ConnectionCreate(uid, settings), ConnectionView)

    async def update(self, ref: ConnectionRef, changes: ConnectionChanges) -> ConnectionView:
        return await self._query("update", ConnectionUpdate(ref, changes), ConnectionView)

    async def test(self, ref: ConnectionRef) -> ConnectionTested:
        return await self._query("test", ConnectionTest(ref), ConnectionTested)
