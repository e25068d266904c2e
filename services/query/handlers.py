"""The query.execute and query.ping handlers, and the task that streams one query's rows.

query.execute (its request decoded and checked by shared.bus.Server) opens the source, checks
the SQL, then replies `QueryAccepted` at once; a background task runs the query and publishes
meta, rows chunks, then end or error through a StreamProducer (shared/stream.py), which waits
for the consumer's credit.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import aclosing
from dataclasses import dataclass
from typing import Any

import structlog
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from services.query import metrics
from services.query.admission import Admission
from services.query.config import PREVIEW_ROWS, QueryConfig
from services.query.connections.handlers import connections_off
from services.query.connections.pools import UserPools
from services.query.engines import Cursor, Engine, Sources
from services.query.engines.base import SHUTTING_DOWN, timeout_message
from services.query.guard import check_read_only
from services.query.values import RowEncoder
from services.query.wire import FETCH_ROWS_AT_LIMIT
from shared.contracts import QUERY_OPEN_TIMEOUT_S, QUERY_START_TIMEOUT_S, Caller, ColumnInfo, Ping, QueryAccepted, QueryExecute, QueryPong, Subjects
from shared.errors import (
    INTERNAL,
    QUERY_TIMEOUT,
    UNAVAILABLE,
    ServiceError,
)
from shared.stream import StreamCancelled, StreamProducer

log = structlog.get_logger(__name__)

LOGGED_SQL_CHARS = 200
# The first fetch is small so that the preview goes out at once, whatever the result size.
FIRST_FETCH_ROWS = FETCH_ROWS_AT_LIMIT  # never over the fetch budget, whatever the rows
MAX_FETCH_ROWS = 50_000
# Room left in a NATS message for the stream envelope and headers.
ENVELOPE_BYTES = 4096


@dataclass
class _Progress:
    source: str
    sql: str
    started: float
    dialect: str | None = None
    row_count: int = 0
    truncated: bool = False
    chunks: int = 0
    bytes: int = 0
    first_rows_ms: float | None = None

    def fields(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "dialect": self.dialect,
            "row_count": self.row_count,
            "truncated": self.truncated,
            "chunks": self.chunks,
            "bytes": self.bytes,
            "first_rows_ms": self.first_rows_ms,
            "duration_ms": round((time.monotonic() - self.started) * 1000, 1),
            "sql": loggable_sql(self.sql),
        }


def loggable_sql(sql: str) -> str:
    """The SQL on one line, cut to LOGGED_SQL_CHARS, so logs stay small and literals mostly out."""
    flat = " ".join(sql.split())
    return flat if len(flat) <= LOGGED_SQL_CHARS else flat[:LOGGED_SQL_CHARS] + "…"


def not_answering(source: str) -> ServiceError:
    return ServiceError(UNAVAILABLE, f"the database {source} is not answering; try again")


# Why a stream's work was stopped before it finished (the message of the cancellation).
CLIENT_GONE = "the client cancelled the stream"


class QueryHandlers:
    """Serves query.execute and query.ping, and keeps track of the streams it started."""

    def __init__(self, config: QueryConfig, nc: NATS, sources: Sources, subjects: Subjects, pools: UserPools) -> None:
        self._config = config
        self._nc = nc
        self._sources = sources
        self._subjects = subjects
        self._pools = pools
        self._streams: set[asyncio.Task[None]] = set()
        self.admission = Admission(config.max_concurrent, config.queue_max, config.queue_wait_s)
        self.accepting = True

    @property
    def streams_in_flight(self) -> int:
        return len(self._streams)

    async def ping(self, _req: Ping, _msg: Msg) -> QueryPong:
        dialects = {name: self._sources.resolve(name).dialect for name in self._sources.names}
        return QueryPong(ok=True, sources=self._sources.names, default=self._sources.default, dialects=dialects, connections=self._config.connections_keys is not None)

    async def _engine(self, req: QueryExecute, progress: _Progress) -> Engine:
        """The opened engine of the request's source or of the user's own connection (checked out until the stream ends)."""
        if req.connection is not None:
            if self._config.connections_keys is None:
                raise connections_off()
            progress.source = "connection"
            try:
                # Within the gateway's QUERY_START_TIMEOUT_S, so that the caller gets this answer, not a timeout.
                async with asyncio.timeout(min(QUERY_START_TIMEOUT_S - 0.5, QUERY_OPEN_TIMEOUT_S + self._config.connections_connect_timeout_s)):
                    engine = await self._pools.checkout(req.connection)
            except TimeoutError:
                raise not_answering("of this connection") from None
            progress.dialect = engine.dialect
            return engine
        engine = self._sources.resolve(req.source)
        progress.source = engine.name
        progress.dialect = engine.dialect
        self._sources.check_caller(engine, req.caller)
        # Opened first: the guard asks the source's function catalog about every call. Bounded,
        # so that the gateway, which waits QUERY_START_TIMEOUT_S for this reply, gets this one.
        try:
            async with asyncio.timeout(QUERY_OPEN_TIMEOUT_S):
                await self._sources.open(engine)
        except TimeoutError:
            raise not_answering(engine.name) from None
        return engine

    async def execute(self, req: QueryExecute, _msg: Msg) -> QueryAccepted:
        started = time.monotonic()
        sql = req.sql
        progress = _Progress(req.source or self._sources.default, sql, started)
        engine: Engine | None = None
        admitted = False
        try:
            if not self.accepting:
                raise ServiceError(UNAVAILABLE, "the query service is shutting down; try again")
            # First, so a declined or queued request holds nothing (no source opened, no subscription).
            await self.admission.acquire(req.caller.user_id if req.caller else "", wait=req.wait)
            admitted = True
            engine = await self._engine(req, progress)
            policy = engine.function_policy(self._config.allowed_functions.get(engine.name, frozenset()) if engine.owner is None else frozenset())
            # In a thread: parsing a long statement then only slows the loop, it does not stop it.
            await asyncio.to_thread(check_read_only, sql, engine.dialect, policy, self._config.max_cell_bytes, allow_activity_views=self._config.allow_activity_views)
            producer = StreamProducer(self._nc, self._subjects, req, ack_timeout_s=self._config.ack_timeout_s)
            await producer.open()
        except BaseException as exc:
            if admitted:
                self.admission.release()
            if engine is not None and engine.owner is not None:
                self._pools.checkin(engine)
            if isinstance(exc, ServiceError):
                self._record_failure(progress, exc)
            raise
        # A user's own database runs as the account they gave: ACCESS_POLICY roles are the operator's sources' (docs/connections.md).
        caller = req.caller if engine.owner is None else None
        task = asyncio.create_task(self._stream(engine, sql, caller, producer, progress))
        self._streams.add(task)
        metrics.STREAMS_IN_FLIGHT.inc()
        task.add_done_callback(lambda done: self._stream_done(done, engine))
        return QueryAccepted(accepted=True)

    def _stream_done(self, task: asyncio.Task[None], engine: Engine) -> None:
        self._streams.discard(task)
        self.admission.release()
        metrics.STREAMS_IN_FLIGHT.dec()
        if engine.owner is not None:
            self._pools.checkin(engine)

    async def shutdown(self, grace_s: float) -> None:
        """Take no more queries; give running streams `grace_s` to finish, then cut them off."""
        self.accepting = False
        if not self._streams:
            return
        log.info("streams_draining", streams=len(self._streams), grace_s=grace_s)
        _, pending = await asyncio.wait(set(self._streams), timeout=grace_s)
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.wait(pending, timeout=10)

    async def _stream(self, engine: Engine, sql: str, caller: Caller | None, producer: StreamProducer, progress: _Progress) -> None:
        """Run the query to its end, unless the client cancels (which can come while the database
        works, with no send to notice it) or the service shuts down; publish how it ended."""
        work = asyncio.create_task(self._run_timed(engine, sql, caller, producer, progress))
        gone = asyncio.create_task(producer.cancelled.wait())
        stopped: str | None = None
        try:
            try:
                await asyncio.wait((work, gone), return_when=asyncio.FIRST_COMPLETED)
            except asyncio.CancelledError:
                stopped = SHUTTING_DOWN
            else:
                if not work.done():
                    stopped = CLIENT_GONE
            finally:
                gone.cancel()
            if stopped is not None:
                work.cancel(msg=stopped)
            await asyncio.wait((work,))
            await self._report(work, stopped, producer, progress)
        finally:
            await producer.close()
        if stopped == SHUTTING_DOWN:
            raise asyncio.CancelledError(stopped)

    async def _report(self, work: asyncio.Task[None], stopped: str | None, producer: StreamProducer, progress: _Progress) -> None:
        """Log, count and publish (as an error message) how the finished `work` ended."""
        try:
            work.result()
        except ServiceError as exc:
            await producer.fail(exc)
            self._record_failure(progress, exc)
        except StreamCancelled as exc:
            self._record_cancel(progress, str(exc))
        except asyncio.CancelledError:
            if stopped == CLIENT_GONE:
                self._record_cancel(progress, CLIENT_GONE)
                return
            error = ServiceError(UNAVAILABLE, "the query service is shutting down; run the query again")
            await producer.fail(error)
            self._record_failure(progress, error)
        except Exception:
            log.exception("query_failed", code=INTERNAL, **progress.fields())
            metrics.QUERIES.labels(progress.source, INTERNAL).inc()
            await producer.fail(ServiceError(INTERNAL, "internal error in the query service; see its log"))

    async def _run_timed(self, engine: Engine, sql: str, caller: Caller | None, producer: StreamProducer, progress: _Progress) -> None:
        try:
            async with asyncio.timeout(self._config.timeout_s):
                await self._run(engine, sql, caller, producer, progress)
        except TimeoutError:
            raise ServiceError(QUERY_TIMEOUT, timeout_message(self._config.timeout_s)) from None

    async def _run(self, engine: Engine, sql: str, caller: Caller | None, producer: StreamProducer, progress: _Progress) -> None:
        config = self._config
        if engine.owner is None:
            await self._sources.open(engine)
        async with engine.query(sql, config.timeout_s, caller) as cursor:
            first = await cursor.fetch(min(FIRST_FETCH_ROWS, config.max_rows))
            encoder = RowEncoder(cursor.columns)
            columns = [ColumnInfo(column.name, column.type) for column in cursor.columns]
            await producer.send_meta(columns, encoder.preview(first[:PREVIEW_ROWS], config.preview_cell_chars))
            progress.first_rows_ms = round((time.monotonic() - progress.started) * 1000, 1)
            metrics.FIRST_ROWS.labels(progress.source).observe(progress.first_rows_ms / 1000)
            # Closed before the engine frees the cursor: a read still running is stopped first.
            async with aclosing(self._batches(cursor, encoder, first, progress)) as batches:
                async for chunks in batches:
                    for count, payload in chunks:
                        await producer.send_rows(payload, progress.row_count, count)
                        progress.row_count += count
                        progress.chunks += 1
                        progress.bytes += len(payload)
        await producer.end(progress.row_count, progress.truncated)
        self._record_done(progress)

    async def _batches(self, cursor: Cursor, encoder: RowEncoder, first: Sequence[Sequence[Any]], progress: _Progress) -> AsyncIterator[list[tuple[int, bytes]]]:
        """`first`, then the rest of the result up to QUERY_MAX_ROWS, as batches of (rows, JSON chunk).

        The next batch is read (and encoded) while the caller publishes the one yielded, and
        batches are sized to come to about QUERY_CHUNK_BYTES of JSON each; the engine says when
        the result is finished (a batch may come short of its size before that). Sets
        `progress.truncated` when rows were left out.
        """
        config = self._config
        # A hard cap per message well under the server's max_payload; batches aim at `target`.
        limit = max(1024, min(config.chunk_bytes * 4, self._nc.max_payload - ENVELOPE_BYTES))
        target = min(config.chunk_bytes, limit)
        chunks = encoder.chunks(first, limit)
        asked, got, fetched = min(FIRST_FETCH_ROWS, config.max_rows), len(first), len(first)
        finished = got < asked  # a first fetch stops early only at the end of the result
        pending: asyncio.Task[tuple[int, list[tuple[int, bytes]], bool]] | None = None
        try:
            while True:
                probing = fetched >= config.max_rows  # only to learn whether rows were left out
                if not finished:
                    size = sum(len(payload) for _, payload in chunks) / max(got, 1)
                    asked = 1 if probing else max(1, min(MAX_FETCH_ROWS, config.max_rows - fetched, int(target / max(size, 1.0))))
                    pending = asyncio.create_task(cursor.fetch_chunks(asked, encoder, limit, fetched))
                yield chunks
                if pending is None:
                    return
                got, chunks, finished = await pending
                pending = None
                if probing:
                    progress.truncated = got > 0
                    return
                fetched += got
        finally:
            if pending is not None:  # left early: stop the read before the engine frees the cursor
                pending.cancel()
                await asyncio.wait([pending])
                if not pending.cancelled():
                    pending.exception()  # retrieved: the error that matters is the one propagating

    def _record_done(self, progress: _Progress) -> None:
        fields = progress.fields()
        log.info("query_done", **fields)
        metrics.QUERIES.labels(progress.source, "done").inc()
        metrics.DURATION.labels(progress.source).observe(fields["duration_ms"] / 1000)
        metrics.ROWS.labels(progress.source).inc(progress.row_count)
        metrics.BYTES.labels(progress.source).inc(progress.bytes)

    def _record_failure(self, progress: _Progress, exc: ServiceError) -> None:
        log.info("query_failed", code=exc.code, message=exc.message, **progress.fields())
        # Only configured names become label values; a request's own string must not.
        source = progress.source if progress.source in self._sources.names or progress.source == "connection" else "unknown"
        metrics.QUERIES.labels(source, exc.code).inc()
        if progress.row_count:
            metrics.ROWS.labels(source).inc(progress.row_count)

    def _record_cancel(self, progress: _Progress, reason: str) -> None:
        log.info("query_cancelled", reason=reason, **progress.fields())
        metrics.QUERIES.labels(progress.source, "cancelled").inc()
