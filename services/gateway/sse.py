"""The AI SDK UI message stream (protocol v1) for one `execute_query` tool call, as Server-Sent Events."""

from __future__ import annotations

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


class ToolStream:
    """Writes the parts of one tool call; every write waits for the client (TCP backpressure)."""

    def __init__(self, response: web.StreamResponse, message_id: str, tool_call_id: str) -> None:
        self._response = response
        self.message_id = message_id
        self.tool_call_id = tool_call_id
        # Everything of a rows part but the offset and the rows, which the query service pre-encodes.
        self._rows_head = b'data: {"type":"data-query-rows","transient":true,"data":{"toolCallId":' + orjson.dumps(tool_call_id) + b',"offset":'

    async def write(self, part: dict[str, Any]) -> None:
        await self._response.write(event(part))

    async def begin(self, sql: str) -> None:
        await self._response.write(
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
        await self._response.write(b"".join((self._rows_head, str(offset).encode(), b',"rows":', rows_json, b"}}\n\n")))

    async def error(self, message: str) -> None:
        await self.write({"type": "tool-output-error", "toolCallId": self.tool_call_id, "errorText": message})

    async def end(self) -> None:
        await self._response.write(event({"type": "finish-step"}) + event({"type": "finish"}) + DONE)
