"""Byte limits on what a database sends, checked on the socket before the driver buffers any of it.

asyncpg reads a whole DataRow message into memory before decoding it, asyncmy a whole
packet (and, with no backpressure at all, as much of a streamed result as the server
sends). So a 300 MB cell would be in memory before any check on decoded values could run.
A WireGuard sits between the transport and the driver's protocol: it reads each message
header as it arrives and, when a row, a cell or one fetch is over its limit, records a
clear error and aborts the connection before the body is read. For MySQL it also pauses
the socket while the driver holds more than a few rows it has not parsed yet.
"""

from __future__ import annotations

import asyncio
import struct
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from shared.errors import QUERY_FAILED, ServiceError

# A fetch may bring at most this many rows' worth of QUERY_MAX_ROW_BYTES (the query service's
# first fetch asks for this many rows, so it can never go over).
FETCH_ROWS_AT_LIMIT = 16
# asyncmy buffers at most this much beyond one row before the socket is paused.
MYSQL_READ_AHEAD_BYTES = 256 * 1024

_PG_HEADER = struct.Struct(">BI")
_PG_DATA_ROW = ord("D")
# PortalSuspended, CommandComplete, EmptyQueryResponse, ErrorResponse, ReadyForQuery: a fetch ended.
_PG_FETCH_END = frozenset(b"sCIEZ")
_MYSQL_NULL = 0xFB
_MYSQL_LENGTH_BYTES = {0xFC: 2, 0xFD: 3, 0xFE: 8}


@dataclass(frozen=True)
class ByteLimits:
    """QUERY_MAX_CELL_BYTES and QUERY_MAX_ROW_BYTES, as the database encodes values on the wire."""

    max_cell_bytes: int = 512 * 1024
    max_row_bytes: int = 1024 * 1024

    @property
    def max_fetch_bytes(self) -> int:
        return FETCH_ROWS_AT_LIMIT * self.max_row_bytes


def row_error(size: int, limits: ByteLimits) -> ServiceError:
    return ServiceError(QUERY_FAILED, f"a row of the result is {size} bytes, more than the {limits.max_row_bytes}-byte limit per row (QUERY_MAX_ROW_BYTES); select fewer or shorter columns")


def cell_error(size: int, limits: ByteLimits) -> ServiceError:
    return ServiceError(
        QUERY_FAILED,
        f"a value in the result is {size} bytes, more than the {limits.max_cell_bytes}-byte limit per value (QUERY_MAX_CELL_BYTES); select a part of it (e.g. left(col, 1000)) or its length",
    )


def fetch_error(size: int, limits: ByteLimits) -> ServiceError:
    return ServiceError(
        QUERY_FAILED,
        f"the rows read in one step came to more than {size} bytes ({FETCH_ROWS_AT_LIMIT} x QUERY_MAX_ROW_BYTES): the rows grew much longer than the ones before them; select fewer or shorter columns",
    )


def message_error(kind: str, size: int, limits: ByteLimits) -> ServiceError:
    what = "an error message" if kind == "E" else f"a protocol message ({kind!r})"
    return ServiceError(QUERY_FAILED, f"the database answered with {what} of {size} bytes, more than the {limits.max_row_bytes}-byte limit (QUERY_MAX_ROW_BYTES)")


class _Fields:
    """Walks the values of one row as its bytes stream by, to find one over the cell limit."""

    def __init__(self, mysql: bool) -> None:
        self.mysql = mysql
        self.head = bytearray()
        self.need = 1 if mysql else 2  # MySQL: a length prefix byte; PostgreSQL: the int16 value count
        self.counted = mysql
        self.skip = 0

    def feed(self, data: Any, limit: int) -> int | None:
        """Consume `data` (part of the row); the size of a value over `limit`, if one starts here."""
        pos, end = 0, len(data)
        while pos < end:
            if self.skip:
                step = min(self.skip, end - pos)
                pos += step
                self.skip -= step
                continue
            step = min(self.need - len(self.head), end - pos)
            self.head += data[pos : pos + step]
            pos += step
            if len(self.head) < self.need:
                return None
            if self.mysql:
                size = self._mysql_length()
                if size is None:
                    continue
            else:
                size = int.from_bytes(self.head, "big", signed=True)
                self.head.clear()
                if not self.counted:
                    self.counted, self.need = True, 4
                    continue
            if size > limit:
                return size
            self.skip = max(size, 0)
        return None

    def _mysql_length(self) -> int | None:
        first = self.head[0]
        if len(self.head) == 1:
            if first == _MYSQL_NULL:
                self.head.clear()
                return 0
            extra = _MYSQL_LENGTH_BYTES.get(first)
            if extra is None:
                self.head.clear()
                return first
            self.need = 1 + extra
            return None
        size = int.from_bytes(self.head[1:], "little")
        self.head.clear()
        self.need = 1
        return size


class WireGuard:
    """Forwards a connection's incoming bytes to the driver's protocol while they are within the limits."""

    def __init__(self, inner: Any, transport: asyncio.BaseTransport, limits: ByteLimits, *, mysql: bool) -> None:
        self.inner = inner
        self.transport = transport
        self.limits = limits
        self.mysql = mysql
        self.refusal: ServiceError | None = None
        self.fetch_bytes = 0
        self._head = bytearray()
        self._skip = 0
        self._fields: _Fields | None = None

    # -- the framing --------------------------------------------------------------------

    def _scan(self, data: Any) -> bool:
        """Follow message boundaries through `data`; False once a limit is broken (the connection is then aborted)."""
        pos, end = 0, len(data)
        header = 4 if self.mysql else 5
        while pos < end:
            if self._skip:
                step = min(self._skip, end - pos)
                if self._fields is not None:
                    size = self._fields.feed(data[pos : pos + step], self.limits.max_cell_bytes)
                    if size is not None:
                        return self._trip(cell_error(size, self.limits))
                pos += step
                self._skip -= step
                if not self._skip:
                    self._fields = None
                continue
            if self._head or end - pos < header:
                step = min(header - len(self._head), end - pos)
                self._head += data[pos : pos + step]
                pos += step
                if len(self._head) < header:
                    return True
                head, offset = self._head, 0
            else:
                head, offset = data, pos
                pos += header
            if self.mysql:
                kind, body = -1, head[offset] | (head[offset + 1] << 8) | (head[offset + 2] << 16)
            else:
                kind, length = _PG_HEADER.unpack_from(head, offset)
                body = length - 4
            self._head.clear()
            if not self._message(kind, body):
                return False
            self._skip = body
        return True

    def _message(self, kind: int, body: int) -> bool:
        if self.mysql or kind == _PG_DATA_ROW:
            limits = self.limits
            if body > limits.max_row_bytes:
                return self._trip(row_error(body, limits))
            self.fetch_bytes += body
            if self.fetch_bytes > limits.max_fetch_bytes:
                return self._trip(fetch_error(limits.max_fetch_bytes, limits))
            if body > limits.max_cell_bytes:
                self._fields = _Fields(self.mysql)
        else:
            if body > self.limits.max_row_bytes:  # e.g. an error message that quotes a huge value
                return self._trip(message_error(chr(kind), body, self.limits))
            if kind in _PG_FETCH_END:
                self.fetch_bytes = 0
        return True

    def _trip(self, error: ServiceError) -> bool:
        self.refusal = error
        self.transport.abort()
        return False

    def new_fetch(self) -> None:
        """For drivers with no end-of-fetch message (MySQL streams the whole result): start counting again."""
        self.fetch_bytes = 0

    # -- the rest of the protocol, forwarded ---------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:  # pragma: no cover - installed after connect
        self.inner.connection_made(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self.inner.connection_lost(exc)

    def eof_received(self) -> bool | None:
        return self.inner.eof_received()

    def pause_writing(self) -> None:
        self.inner.pause_writing()

    def resume_writing(self) -> None:
        self.inner.resume_writing()


class _StreamGuard(WireGuard, asyncio.Protocol):
    def data_received(self, data: bytes) -> None:
        if self.refusal is None and self._scan(data):
            self.inner.data_received(data)


class _BufferGuard(WireGuard, asyncio.BufferedProtocol):
    """For asyncmy's BufferedProtocol; pauses the socket while the driver has plenty left to parse."""

    def __init__(self, inner: Any, transport: asyncio.BaseTransport, limits: ByteLimits, *, mysql: bool) -> None:
        super().__init__(inner, transport, limits, mysql=mysql)
        self._view: memoryview | None = None
        self._paused = False
        self._high_water = limits.max_row_bytes + MYSQL_READ_AHEAD_BYTES
        wait_for_data: Callable[[int], Awaitable[None]] = inner.wait_for_data

        async def resume_then_wait(need: int) -> None:
            # The driver needs more bytes than it holds: let the socket deliver again.
            if self._paused:
                self._paused = False
                self.transport.resume_reading()
            await wait_for_data(need)

        inner.wait_for_data = resume_then_wait

    def get_buffer(self, sizehint: int) -> memoryview:
        self._view = self.inner.get_buffer(sizehint)
        return self._view

    def buffer_updated(self, nbytes: int) -> None:
        assert self._view is not None
        if self.refusal is not None or not self._scan(self._view[:nbytes]):
            return
        self.inner.buffer_updated(nbytes)
        if not self._paused and self.inner.length - self.inner.pos > self._high_water:
            self._paused = True
            self.transport.pause_reading()  # type: ignore[attr-defined]


def guard_of(transport: Any) -> WireGuard | None:
    protocol = transport.get_protocol() if transport is not None else None
    return protocol if isinstance(protocol, WireGuard) else None


def install(transport: Any, limits: ByteLimits, *, mysql: bool) -> WireGuard:
    """The transport's guard, put between it and the driver's protocol the first time."""
    guard = guard_of(transport)
    if guard is not None:
        return guard
    inner = transport.get_protocol()
    cls = _BufferGuard if isinstance(inner, asyncio.BufferedProtocol) else _StreamGuard
    guard = cls(inner, transport, limits, mysql=mysql)
    transport.set_protocol(guard)
    return guard


# Bytes of memory per byte of a fetch on the wire, for text-like data: the decoded values
# (about 1x), the JSON of the batch being built and the JSON of the batch being sent (about
# 1x each), with room to spare. See docs/query-values.md for where it can be higher.
AMPLIFICATION = 4


def memory_bound(*, max_concurrent: int, max_row_bytes: int, message_bytes: int, window: int) -> int:
    """Bytes one query service replica may add to its idle RSS while running queries (docs/query-values.md).

    Per query: `window` unacknowledged rows messages of at most `message_bytes` each, plus the
    read-ahead: one fetch of at most FETCH_ROWS_AT_LIMIT x QUERY_MAX_ROW_BYTES on the wire, held
    as values and JSON (AMPLIFICATION) while the previous fetch's JSON is being sent.
    """
    fetch_bytes = FETCH_ROWS_AT_LIMIT * max_row_bytes
    return max_concurrent * (window * message_bytes + AMPLIFICATION * fetch_bytes)
