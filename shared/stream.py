"""Flow-controlled streaming of a query result over NATS, both ends.

The producer (query service) never has more than `window` rows messages unacknowledged;
the consumer (gateway) acknowledges a rows message only after it has written it to its
HTTP client. So memory stays bounded on both sides whatever the result size, and a slow
browser slows the database read instead of filling a buffer. See shared/contracts.py.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import msgspec
import structlog
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from shared import contracts as c
from shared.bus import request, request_headers
from shared.codec import encode_message
from shared.errors import BUSY, INTERNAL, UNAVAILABLE, ServiceError

log = structlog.get_logger(__name__)

DEFAULT_WINDOW = c.DEFAULT_WINDOW
_STREAM_DECODER = msgspec.msgpack.Decoder(c.StreamMessage)
_CONTROL_DECODER = msgspec.msgpack.Decoder(c.ControlMessage)


class StreamCancelled(Exception):
    """Raised in the producer when the consumer cancelled or stopped acknowledging."""


class StreamProducer:
    """Publishes one query's stream to the gateway's inbox under the consumer's credit."""

    def __init__(
        self,
        nc: NATS,
        subjects: c.Subjects,
        req: c.QueryExecute,
        *,
        ack_timeout_s: float = 60.0,
        heartbeat_s: float = 1.0,
    ) -> None:
        self.stream_id = req.stream_id
        self.inbox = req.inbox
        self.window = req.window
        self._nc = nc
        self._control_subject = subjects.query_control(self.stream_id)
        self._ack_timeout_s = ack_timeout_s
        self._heartbeat_s = heartbeat_s
        self._sent_seq = 0
        self._acked_seq = 0
        self._credit = asyncio.Event()
        self.cancelled = asyncio.Event()
        self._sub: Subscription | None = None
        self._heartbeat: asyncio.Task[None] | None = None
        self._last_publish = time.monotonic()
        self._headers = request_headers()

    async def open(self) -> None:
        """Listen for acks and cancels; call before replying `accepted`."""
        self._sub = await self._nc.subscribe(self._control_subject, cb=self._on_control)
        self._heartbeat = asyncio.create_task(self._beat())

    async def close(self) -> None:
        if self._heartbeat is not None:
            self._heartbeat.cancel()
        if self._sub is not None:
            try:
                await self._sub.unsubscribe()
            except Exception:
                pass

    async def _on_control(self, msg: Msg) -> None:
        try:
            control = _CONTROL_DECODER.decode(msg.data)
        except msgspec.DecodeError as exc:  # ValidationError included: not from our consumer, ignored
            log.debug("control_message_ignored", error=str(exc))
            return
        match control:
            case c.Ack(seq=seq) if seq > self._acked_seq:
                self._acked_seq = seq
                self._credit.set()
            case c.Cancel():
                self.cancelled.set()
                self._credit.set()

    async def _beat(self) -> None:
        while True:
            await asyncio.sleep(self._heartbeat_s)
            if time.monotonic() - self._last_publish >= self._heartbeat_s:
                try:
                    await self._publish(c.StreamHeartbeat(self._sent_seq))
                except Exception as exc:  # NATS away: keep beating; the consumer's idle timer decides
                    log.debug("heartbeat_failed", error=str(exc) or type(exc).__name__)

    async def _publish(self, message: c.StreamMessage) -> None:
        self._last_publish = time.monotonic()
        await self._nc.publish(self.inbox, encode_message(message), headers=self._headers or None)

    def _check(self) -> None:
        if self.cancelled.is_set():
            raise StreamCancelled("the client cancelled the stream")

    async def send_meta(self, columns: list[c.ColumnInfo], preview: list[list[Any]]) -> None:
        self._check()
        await self._publish(c.StreamMeta(columns, preview))

    async def send_rows(self, rows_json: bytes, offset: int, count: int) -> None:
        """Publish one chunk, first waiting for credit; raises StreamCancelled."""
        deadline = time.monotonic() + self._ack_timeout_s
        while self._sent_seq - self._acked_seq >= self.window:
            self._check()
            self._credit.clear()
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise StreamCancelled(f"no acknowledgement for {self._ack_timeout_s:g}s; the consumer is gone")
            try:
                await asyncio.wait_for(self._credit.wait(), remaining)
            except TimeoutError:
                pass
        self._check()
        self._sent_seq += 1
        await self._publish(c.StreamRows(self._sent_seq, offset, count, rows_json))

    async def end(self, row_count: int, truncated: bool) -> None:
        await self._publish(c.StreamEnd(row_count, truncated))

    async def fail(self, error: ServiceError) -> None:
        try:
            await self._publish(c.StreamError(c.ErrorBody(error.code, error.message)))
        except Exception as exc:
            log.warning("stream_error_publish_failed", error=str(exc) or type(exc).__name__)


def _lost() -> ServiceError:
    return ServiceError(UNAVAILABLE, "part of the query result was lost while the message bus reconnected; run the query again")


class StreamConsumer:
    """The gateway's end: start a query and iterate over its stream messages."""

    def __init__(self, nc: NATS, subjects: c.Subjects, *, window: int = DEFAULT_WINDOW, idle_timeout_s: float = 5.0) -> None:
        self._nc = nc
        self._subjects = subjects
        self._window = window
        self._idle_timeout_s = idle_timeout_s
        self.stream_id = uuid.uuid4().hex
        self._sub: Subscription | None = None
        self._finished = False
        # What arrived so far, kept here rather than in messages() so that a second
        # messages() call carries on checking where the first one stopped.
        self._meta_seen = False
        self._next_seq = 1
        self._rows_seen = 0
        self._acked = 0

    async def start(self, sql: str, source: str | None, *, caller: c.Caller | None = None, connection: c.ConnectionRef | None = None, timeout: float = c.QUERY_START_TIMEOUT_S) -> None:
        """Subscribe to the inbox and ask a query replica to run `sql` on `source` or the user's `connection` (for `caller`, see docs/access.md); raises ServiceError.

        A replica with every slot taken declines the first tries (NATS's queue group then hands
        the next try to a replica picked afresh); the last try may wait in a replica's queue,
        fair between users, and only its `busy` reaches the caller.
        """
        inbox = self._nc.new_inbox()
        # No callback: messages wait in the subscription until read; the window bounds them.
        self._sub = await self._nc.subscribe(inbox)
        try:
            for attempt in range(c.QUERY_ADMISSION_TRIES):
                last = attempt == c.QUERY_ADMISSION_TRIES - 1
                req = c.QueryExecute(sql=sql, source=source, stream_id=self.stream_id, inbox=inbox, window=self._window, caller=caller, connection=connection, wait=last)
                try:
                    await request(self._nc, self._subjects.query_execute, req, timeout=timeout + (c.QUERY_QUEUE_WAIT_MAX_S if last else 0), reply=c.QueryAccepted)
                    return
                except ServiceError as exc:
                    if exc.code != BUSY or last:
                        raise
        except BaseException:
            await self.close()
            raise

    async def messages(self, alive: Callable[[], bool] = lambda: True) -> AsyncIterator[c.StreamMessage]:
        """Yield meta, rows, then end or error; acknowledges each rows message once the caller is done with it.

        `alive` is asked at every message, heartbeats included: once it says False (the HTTP
        client went away while the database was still working) ConnectionResetError is raised.
        """
        assert self._sub is not None, "start() first"
        pending_ack: int | None = None
        while True:
            if pending_ack is not None:
                await self._control(c.Ack(pending_ack))
                self._acked, pending_ack = pending_ack, None
            try:
                msg = await self._sub.next_msg(timeout=self._idle_timeout_s)
            except TimeoutError:
                if not self._nc.is_connected:
                    raise ServiceError(UNAVAILABLE, "the message bus is reconnecting; run the query again") from None
                raise ServiceError(UNAVAILABLE, f"the query service stopped answering for {self._idle_timeout_s:g}s") from None
            except Exception as exc:  # connection closed or subscription gone
                raise ServiceError(UNAVAILABLE, f"the query stream broke: {type(exc).__name__}") from None
            if not alive():
                raise ConnectionResetError("the client went away")
            try:
                message = _STREAM_DECODER.decode(msg.data)
            except msgspec.DecodeError as exc:  # ValidationError included
                raise ServiceError(INTERNAL, f"unexpected stream message: {exc}") from None
            # NATS delivers at most once: across a reconnect messages can be lost, never reordered.
            # So every loss is caught here rather than shown to the user as a complete result.
            match message:
                case c.StreamHeartbeat(seq=seq):
                    if seq >= self._next_seq:  # rows were sent that never came
                        raise _lost()
                    if self._acked:  # the last ack may have been lost the same way; acks are cumulative
                        await self._control(c.Ack(self._acked))
                case c.StreamRows(seq=seq, count=count):
                    if not self._meta_seen or seq != self._next_seq:
                        raise _lost()
                    self._next_seq += 1
                    self._rows_seen += count
                    yield message
                    pending_ack = seq
                case c.StreamMeta():
                    self._meta_seen = True
                    yield message
                case c.StreamEnd(row_count=row_count):
                    if not self._meta_seen or row_count != self._rows_seen:
                        raise _lost()
                    self._finished = True
                    yield message
                    return
                case c.StreamError():
                    self._finished = True
                    yield message
                    return

    async def _control(self, message: c.ControlMessage) -> None:
        if self._nc.is_connected:
            await self._nc.publish(self._subjects.query_control(self.stream_id), encode_message(message))

    async def close(self) -> None:
        """Release the inbox; if the stream did not finish, tell the producer to stop."""
        if not self._finished:
            try:
                await self._control(c.Cancel())
            except Exception:
                pass
        if self._sub is not None:
            try:
                await self._sub.unsubscribe()
            except Exception:
                pass
            self._sub = None
