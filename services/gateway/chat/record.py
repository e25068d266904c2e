"""The assistant message of a turn, built from the parts streamed to the client as the AI SDK's client builds it.

`RecordingUIStream` is the turn's UIStream that also feeds every part it wrote (and every
tool output or error written through its ToolStreams) to a `MessageBuilder`, which applies
them as `processUIMessageStream` (npm `ai`) does. What history stores is therefore the
message useChat showed: the same id, parts, states and metadata. Rows (`data-query-rows`,
transient) never reach it, and neither does any other `data-*` part.
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from aiohttp import web

from services.gateway.chat.ui import UIStream
from services.gateway.sse import ToolStream


class MessageBuilder:
    """Applies UI message stream parts to one assistant UIMessage (JSON form: unset fields are absent)."""

    def __init__(self) -> None:
        self.id: str | None = None
        self.parts: list[dict[str, Any]] = []
        self.metadata: dict[str, Any] | None = None
        self._text: dict[str, dict[str, Any]] = {}
        self._reasoning: dict[str, dict[str, Any]] = {}
        self._raw_input: dict[str, str] = {}

    @property
    def started(self) -> bool:
        return self.id is not None

    def message(self) -> dict[str, Any]:
        message: dict[str, Any] = {"id": self.id, "role": "assistant", "parts": self.parts}
        if self.metadata is not None:
            message["metadata"] = self.metadata
        return message

    def _step_tools(self) -> list[dict[str, Any]]:
        step: list[dict[str, Any]] = []
        for part in reversed(self.parts):
            if part["type"] == "step-start":
                break
            step.append(part)
        return [p for p in step if p["type"].startswith("tool-")]

    def _tool(self, call_id: str) -> dict[str, Any] | None:
        for part in self._step_tools():
            if part["toolCallId"] == call_id:
                return part
        for part in reversed(self.parts):
            if part["type"].startswith("tool-") and part.get("toolCallId") == call_id:
                return part
        return None

    def _update_tool(self, call_id: str, name: str, state: str, **fields: Any) -> None:
        part = next((p for p in self._step_tools() if p["toolCallId"] == call_id), None)
        if part is None:
            part = {"type": f"tool-{name}", "toolCallId": call_id}
            self.parts.append(part)
        part["type"] = f"tool-{name}"
        part["state"] = state
        for key in ("input", "output", "errorText", "rawInput", "preliminary"):
            part.pop(key, None)
        part.update({k: v for k, v in fields.items() if v is not None})

    def _merge_metadata(self, metadata: Any) -> None:
        if isinstance(metadata, dict):
            self.metadata = {**(self.metadata or {}), **metadata}

    def apply(self, part: dict[str, Any]) -> None:
        kind = part.get("type", "")
        match kind:
            case "start":
                self.id = part.get("messageId") or self.id
                self._merge_metadata(part.get("messageMetadata"))
            case "finish":
                self._merge_metadata(part.get("messageMetadata"))
            case "start-step":
                self.parts.append({"type": "step-start"})
            case "finish-step":
                self._text.clear()
                self._reasoning.clear()
            case "text-start":
                self._text[part["id"]] = {"type": "text", "text": "", "state": "streaming"}
                self.parts.append(self._text[part["id"]])
            case "text-delta":
                self._text[part["id"]]["text"] += part["delta"]
            case "text-end":
                self._text.pop(part["id"])["state"] = "done"
            case "reasoning-start":
                self._reasoning[part["id"]] = {"type": "reasoning", "id": part["id"], "text": "", "state": "streaming"}
                self.parts.append(self._reasoning[part["id"]])
            case "reasoning-delta":
                self._reasoning[part["id"]]["text"] += part["delta"]
            case "reasoning-end":
                self._reasoning.pop(part["id"])["state"] = "done"
            case "tool-input-start":
                self._raw_input[part["toolCallId"]] = ""
                self._update_tool(part["toolCallId"], part["toolName"], "input-streaming")
            case "tool-input-delta":
                call_id = part["toolCallId"]
                self._raw_input[call_id] = self._raw_input.get(call_id, "") + part["inputTextDelta"]
                tool = self._tool(call_id)
                if tool is not None:
                    partial = None
                    with contextlib.suppress(orjson.JSONDecodeError):
                        partial = orjson.loads(self._raw_input[call_id])
                    self._update_tool(call_id, tool["type"][len("tool-") :], "input-streaming", input=partial, rawInput=self._raw_input[call_id])
            case "tool-input-available":
                self._update_tool(part["toolCallId"], part["toolName"], "input-available", input=part.get("input"))
            case "tool-input-error":
                self._update_tool(part["toolCallId"], part["toolName"], "output-error", rawInput=part.get("input"), errorText=part.get("errorText"))
            case "tool-output-available":
                tool = self._tool(part["toolCallId"])
                if tool is not None:
                    tool["state"] = "output-available"
                    tool["output"] = part.get("output")
                    for key in ("errorText", "rawInput", "preliminary"):
                        tool.pop(key, None)
                    if part.get("preliminary") is not None:
                        tool["preliminary"] = part["preliminary"]
            case "tool-output-error":
                tool = self._tool(part["toolCallId"])
                if tool is not None:
                    tool["state"] = "output-error"
                    tool["errorText"] = part.get("errorText")
                    tool.pop("output", None)
                    tool.pop("preliminary", None)
            case _:
                pass  # error parts are no message parts; data-* parts are never kept in history


class RecordingToolStream(ToolStream):
    def __init__(self, response: web.StreamResponse, message_id: str, call_id: str, request: web.Request, write_timeout_s: float, builder: MessageBuilder) -> None:
        super().__init__(response, message_id, call_id, request=request, write_timeout_s=write_timeout_s)
        self._builder = builder

    async def write(self, part: dict[str, Any]) -> None:
        await super().write(part)
        self._builder.apply(part)


class RecordingUIStream(UIStream):
    """A UIStream that records the message it streams, and saves it (`on_finish`) before the `finish` part goes out.

    Saving before `finish` means a client that has read the whole turn finds it stored.
    """

    def __init__(self, response: web.StreamResponse, message_id: str, request: web.Request, write_timeout_s: float, on_finish: Callable[[dict[str, Any]], Awaitable[str | None]]) -> None:
        super().__init__(response, message_id, request, write_timeout_s)
        self.builder = MessageBuilder()
        self._on_finish = on_finish
        self.saved = False

    async def write(self, *parts: dict[str, Any]) -> None:
        await super().write(*parts)
        for part in parts:
            self.builder.apply(part)

    def tool(self, call_id: str) -> ToolStream:
        return RecordingToolStream(self._response, self.message_id, call_id, self._request, self._write_timeout_s, self.builder)

    async def finish(self, metadata: dict[str, Any]) -> None:
        await self.finish_step()
        self.builder.apply({"type": "finish", "messageMetadata": metadata})
        self.saved = True
        problem = await self._on_finish(self.builder.message())
        if problem is not None:
            await self.error(problem)
        await super().finish(metadata)
