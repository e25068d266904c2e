"""The AI SDK UI message stream (protocol v1) for one `execute_query` tool call, as Server-Sent Events."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
from aiohttp import web

from services.gateway import keys

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


def client_outcome(exc: ConnectionResetError) -> str:
    """The outcome a stream that lost its client logs: client_stalled or client_gone."""
    return exc.outcome if isinstance(exc, ClientStalled) else "client_gone"


class ToolStream:
    """Writes the parts of one tool call; every write waits for the client (TCP backpressure).

    Given the request, a write that the client does not take within the gateway's
    CLIENT_WRITE_TIMEOUT_S aborts the connection and raises ClientStalled, so a client
    that stops reading cannot hold a stream, and the query behind it, forever.
    """

    def __init__(self, response: web.StreamResponse, message_id: str, tool_call_id: str, *, request: web.Request | None = None) -> None:
        self._response = response
        self._request = request
        self._write_timeout_s = request.app[keys.CONFIG].client_write_timeout_s if request is not None else None
        self.message_id = message_id
        self.tool_call_id = tool_call_id
        # Everything of a rows part but the offset and the rows, which the query service pre-encodes.
        self._rows_head = b'data: {"type":"data-query-rows","transient":true,"data":{"toolCallId":' + orjson.dumps(tool_call_id) + b',"offset":'

    async def _send(self, data: bytes) -> None:
        if self._write_timeout_s is None:
            await self._response.write(data)
            return
        try:
            async with asyncio.timeout(self._write_timeout_s):
                await self._response.write(data)
        except TimeoutError:
            transport = self._request.transport if self._request is not None else None
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
