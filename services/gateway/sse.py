"""The AI SDK UI message stream (protocol v1) for one `execute_query` tool call, as Server-Sent Events."""

from __future__ import annotations

import array
import asyncio
import fcntl
import termios
from typing import Any

import orjson
from aiohttp import web

HEADERS = {
    "Content-Type": "text/event-stream",
    "Cache-Control": "no-cache, no-transform",
    "Connection": "keep-alive",
    "X-Accel-Buffering": "no",
    "x-vercel-ai-ui-message-stream": "v1",
}
DONE = b"data: [DONE]\n\n"
TOOL_NAME = "execute_query"


def event(part: dict[str, Any]) -> bytes:
    return b"data: " + orjson.dumps(part) + b"\n\n"


class ClientStalled(ConnectionResetError):
    """Raised by a stream write when the client accepted no bytes for CLIENT_WRITE_TIMEOUT_S; the connection is aborted."""

    outcome = "client_stalled"


def client_outcome(exc: ConnectionError) -> str:
    """The outcome a stream that lost its client logs: client_stalled or client_gone."""
    return exc.outcome if isinstance(exc, ClientStalled) else "client_gone"


def _unsent_in_kernel(fd: int) -> int:
    """Bytes in the socket's kernel send queue (not yet acknowledged by the client), or 0 where that cannot be read."""
    if fd < 0 or not hasattr(termios, "TIOCOUTQ"):
        return 0
    out = array.array("i", [0])
    try:
        fcntl.ioctl(fd, termios.TIOCOUTQ, out, True)
    except OSError:
        return 0
    return out[0]


class _ProgressWatch:
    """Pushes a write's deadline back whenever the client took bytes since the last look.

    aiohttp's `StreamResponse.write` hands the bytes to the transport and then waits in
    `drain()` until the transport's buffer is below its low-water mark; a big write (a
    768 KiB rows chunk) to a slow but steady reader can wait there far longer than the
    timeout. While it waits nothing else writes to the connection, so fewer bytes pending
    means the client accepted some. Pending is the transport's buffer plus the kernel's send
    queue (TIOCOUTQ, where the platform has it): the kernel only takes more from the
    transport once a third of its send buffer (up to megabytes) is free, so the transport's
    buffer alone stands still for a long time under a slow reader. The watch looks every
    `timeout / CHECKS` seconds and, on progress, moves the deadline to a full timeout from
    then: only a client that accepted no bytes for the whole timeout is given up.
    """

    CHECKS = 10

    def __init__(self, transport: asyncio.Transport | None, deadline: asyncio.Timeout, timeout_s: float) -> None:
        self._transport = transport
        self._deadline = deadline
        self._timeout_s = timeout_s
        self._loop = asyncio.get_running_loop()
        sock = transport.get_extra_info("socket") if transport is not None else None
        self._fd = sock.fileno() if sock is not None else -1
        self._last = -1
        # Runs once the write is waiting (after its bytes reached the transport), or never if it does not wait.
        self._handle: asyncio.Handle | None = self._loop.call_soon(self._check) if transport is not None else None

    def _check(self) -> None:
        assert self._transport is not None
        if self._deadline.expired() or self._transport.is_closing():
            self._handle = None
            return
        size = self._transport.get_write_buffer_size() + _unsent_in_kernel(self._fd)
        if size < self._last:
            self._deadline.reschedule(self._loop.time() + self._timeout_s)
        self._last = size
        self._handle = self._loop.call_later(self._timeout_s / self.CHECKS, self._check)

    def stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None


class ToolStream:
    """Writes the parts of one tool call; every write waits for the client (TCP backpressure).

    Given the request and `write_timeout_s` (the gateway's CLIENT_WRITE_TIMEOUT_S), a write
    during which the client accepts no bytes for that long aborts the connection and raises ClientStalled, so a client
    that stops reading cannot hold a stream, and the query behind it, forever; a client
    that reads slowly but steadily is never cut off (see _ProgressWatch).
    """

    def __init__(self, response: web.StreamResponse, message_id: str, tool_call_id: str, *, request: web.Request | None = None, write_timeout_s: float | None = None) -> None:
        self._response = response
        self._request = request
        self._write_timeout_s = write_timeout_s if request is not None else None
        self.message_id = message_id
        self.tool_call_id = tool_call_id
        # Everything of a rows part but the offset and the rows, which the query service pre-encodes.
        self._rows_head = b'data: {"type":"data-query-rows","transient":true,"data":{"toolCallId":' + orjson.dumps(tool_call_id) + b',"offset":'

    async def _send(self, data: bytes) -> None:
        if self._write_timeout_s is None:
            await self._response.write(data)
            return
        transport = self._request.transport if self._request is not None else None
        try:
            async with asyncio.timeout(self._write_timeout_s) as deadline:
                watch = _ProgressWatch(transport, deadline, self._write_timeout_s)
                try:
                    await self._response.write(data)
                finally:
                    watch.stop()
        except TimeoutError:
            if transport is not None:
                transport.abort()  # drop what is buffered: the client is not reading it
            raise ClientStalled(f"the client accepted no bytes for {self._write_timeout_s:g}s") from None

    async def send(self, data: bytes) -> None:
        """Write ready-made SSE bytes under the same timeout (the chat stream writes parts of its own)."""
        await self._send(data)

    async def write(self, part: dict[str, Any]) -> None:
        await self._send(event(part))

    async def begin(self, sql: str) -> None:
        await self._send(
            event({"type": "start", "messageId": self.message_id})
            + event({"type": "start-step"})
            + event({"type": "tool-input-available", "toolCallId": self.tool_call_id, "toolName": TOOL_NAME, "input": {"sql": sql}})
        )

    async def output(self, output: dict[str, Any], *, preliminary: bool) -> None:
        part: dict[str, Any] = {"type": "tool-output-available", "toolCallId": self.tool_call_id, "output": output}
        if preliminary:
            part["preliminary"] = True
        await self.write(part)

    async def rows(self, offset: int, rows_json: bytes) -> None:
        await self._send(b"".join((self._rows_head, str(offset).encode(), b',"rows":', rows_json, b"}}\n\n")))

    async def error(self, message: str) -> None:
        await self.write({"type": "tool-output-error", "toolCallId": self.tool_call_id, "errorText": message})

    async def end(self) -> None:
        await self._send(event({"type": "finish-step"}) + event({"type": "finish"}) + DONE)
