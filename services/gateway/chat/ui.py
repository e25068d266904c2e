"""Writes one assistant message as an AI SDK UI message stream (protocol v1), part by part.

The part shapes are those of the AI SDK's `uiMessageChunkSchema` (strict objects: no extra
keys). Text and reasoning parts get ids of their own and are always closed before a step
ends. `execute_query` outputs and rows go through sse.ToolStream, as on POST /api/query.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from services.gateway.sse import DONE, ToolStream, event


class UIStream:
    """The parts of one assistant message; every write waits for the client (TCP backpressure), at most CLIENT_WRITE_TIMEOUT_S."""

    def __init__(self, response: web.StreamResponse, message_id: str, request: web.Request, write_timeout_s: float) -> None:
        self._response = response
        self._request = request
        self._write_timeout_s = write_timeout_s
        self.message_id = message_id
        # Every write goes through a ToolStream: the same CLIENT_WRITE_TIMEOUT_S as /api/query.
        self._out = ToolStream(response, message_id, "", request=request, write_timeout_s=write_timeout_s)
        self._open: dict[str, str] = {}  # "text" / "reasoning" -> id of the part being streamed
        self._parts = 0
        self.step_open = False

    async def write(self, *parts: dict[str, Any]) -> None:
        await self._out.send(b"".join(event(p) for p in parts))

    def _new_id(self, kind: str) -> str:
        self._parts += 1
        return f"{kind}_{self._parts}"

    async def start(self) -> None:
        await self.write({"type": "start", "messageId": self.message_id})

    async def start_step(self) -> None:
        self.step_open = True
        await self.write({"type": "start-step"})

    async def finish_step(self) -> None:
        await self.close_open()
        if self.step_open:
            self.step_open = False
            await self.write({"type": "finish-step"})

    async def _delta(self, kind: str, delta: str) -> None:
        other = "reasoning" if kind == "text" else "text"
        parts: list[dict[str, Any]] = []
        if other in self._open:
            parts.append({"type": f"{other}-end", "id": self._open.pop(other)})
        if kind not in self._open:
            self._open[kind] = self._new_id(kind)
            parts.append({"type": f"{kind}-start", "id": self._open[kind]})
        parts.append({"type": f"{kind}-delta", "id": self._open[kind], "delta": delta})
        await self.write(*parts)

    async def text(self, delta: str) -> None:
        await self._delta("text", delta)

    async def reasoning(self, delta: str) -> None:
        await self._delta("reasoning", delta)

    async def close_open(self) -> None:
        parts = [{"type": f"{kind}-end", "id": part_id} for kind, part_id in self._open.items()]
        self._open.clear()
        if parts:
            await self.write(*parts)

    async def tool_input_start(self, call_id: str, name: str) -> None:
        await self.close_open()
        await self.write({"type": "tool-input-start", "toolCallId": call_id, "toolName": name})

    async def tool_input_delta(self, call_id: str, delta: str) -> None:
        await self.write({"type": "tool-input-delta", "toolCallId": call_id, "inputTextDelta": delta})

    async def tool_input_available(self, call_id: str, name: str, tool_input: Any) -> None:
        await self.write({"type": "tool-input-available", "toolCallId": call_id, "toolName": name, "input": tool_input})

    async def tool_input_error(self, call_id: str, name: str, raw: str, message: str) -> None:
        await self.write({"type": "tool-input-error", "toolCallId": call_id, "toolName": name, "input": raw, "errorText": message})

    def tool(self, call_id: str) -> ToolStream:
        """Outputs, rows and errors of one tool call, written exactly as POST /api/query writes them."""
        return ToolStream(self._response, self.message_id, call_id, request=self._request, write_timeout_s=self._write_timeout_s)

    async def error(self, message: str) -> None:
        await self.close_open()
        await self.write({"type": "error", "errorText": message})

    async def finish(self, metadata: dict[str, Any]) -> None:
        await self.finish_step()
        await self._out.send(event({"type": "finish", "messageMetadata": metadata}) + DONE)
