"""The body useChat posts (typed), and its UIMessages rebuilt into the model's conversation.

Kept: user text, assistant text, tool calls with their final outputs, cut back to what the
model may see (prompt.query_summary / prompt.schema_summary). Dropped: `data-*` parts,
reasoning, files, sources, and any system message a client posts. The history is kept
under LLM_HISTORY_MAX_CHARS by dropping the oldest turns, never the newest user message.
"""

from __future__ import annotations

from typing import Any, Literal

import msgspec
import orjson

from services.gateway.chat import prompt

MAX_ID_CHARS = 256
OTHER_TOOL_MAX_CHARS = 2000


class Part(msgspec.Struct, kw_only=True):
    """One part of a UIMessage; only the fields the conversion reads are typed, the rest is ignored."""

    type: str
    text: str | None = None
    toolCallId: str | None = None
    toolName: str | None = None
    state: str | None = None
    input: Any = None
    rawInput: Any = None
    output: Any = None
    errorText: str | None = None


class UIMessage(msgspec.Struct, kw_only=True):
    id: str
    role: Literal["system", "user", "assistant"]
    parts: list[Part]
    metadata: Any = None


class ChatRequest(msgspec.Struct, kw_only=True):
    """POST /api/chat: what useChat's DefaultChatTransport sends, plus an optional `source`.

    With stored history, a client may send only the new message (`message`), as useChat
    does with `prepareSendMessagesRequest`; the full `messages` form keeps working.
    """

    id: str
    messages: list[UIMessage] = []
    message: UIMessage | None = None
    trigger: Literal["submit-message", "regenerate-message"] = "submit-message"
    messageId: str | None = None
    source: str | None = None


_decoder = msgspec.json.Decoder(ChatRequest)


class BodyError(ValueError):
    """Raised when the posted body is not a chat request; the message names the field."""


def parse_request(body: bytes) -> ChatRequest:
    """Decode and check the body; BodyError names what is wrong."""
    if not body:
        raise BodyError("the request body must be a JSON object")
    try:
        req = _decoder.decode(body)
    except msgspec.ValidationError as exc:
        raise BodyError(f"invalid chat request: {_field_path(str(exc))}") from None
    except msgspec.DecodeError as exc:
        raise BodyError(f"the request body is not valid JSON: {exc}") from None
    if not req.id or len(req.id) > MAX_ID_CHARS:
        raise BodyError(f"'id' must be a chat id of 1-{MAX_ID_CHARS} characters")
    if req.source is not None and (not req.source or len(req.source) > 128):
        raise BodyError("'source' must be a source name of 1-128 characters")
    if req.message is not None:
        if req.message.role != "user":
            raise BodyError("'message' must be a user message")
    elif req.trigger == "submit-message" and not any(m.role == "user" for m in req.messages):
        raise BodyError("'messages' must hold at least one user message (or send the new one as 'message')")
    return req


def _field_path(message: str) -> str:
    # msgspec says "Expected `str`, got `int` - at `$.messages[0].role`"; name the field the way a reader writes it.
    return message.replace("`$.", "`").replace("- at `$`", "").strip()


def user_text(message: UIMessage) -> str:
    return "\n".join(p.text for p in message.parts if p.type == "text" and p.text)


def _tool_name(part: Part) -> str | None:
    if part.type == "dynamic-tool":
        return part.toolName
    if part.type.startswith("tool-"):
        return part.type[len("tool-") :]
    return None


def _tool_result(name: str, part: Part) -> Any:
    """What the model sees of a posted tool part's result."""
    if part.state == "output-error":
        return {"error": part.errorText or "the tool failed"}
    if part.state != "output-available":
        return {"error": "the tool call did not finish"}
    if name == prompt.EXECUTE_QUERY:
        return prompt.query_summary(part.output)
    if name == prompt.DESCRIBE_SCHEMA:
        return prompt.schema_summary(part.output)
    if name == prompt.SEARCH_SCHEMA and isinstance(part.output, dict):
        return part.output  # already within LLM_SCHEMA_SEARCH_MAX_CHARS
    if name == prompt.SHOW_CHART:
        return prompt.chart_summary(part.output)
    text = orjson.dumps(part.output, default=str).decode()
    return part.output if len(text) <= OTHER_TOOL_MAX_CHARS else {"note": "output cut", "start": text[:OTHER_TOOL_MAX_CHARS]}


def _assistant_messages(message: UIMessage) -> list[dict[str, Any]]:
    """One assistant message per step (text and tool calls), each followed by its tool results."""
    out: list[dict[str, Any]] = []
    text: list[str] = []
    calls: list[dict[str, Any]] = []
    results: list[dict[str, Any]] = []

    def flush() -> None:
        if not text and not calls:
            return
        entry: dict[str, Any] = {"role": "assistant", "content": "".join(text) or None}
        if calls:
            entry["tool_calls"] = list(calls)
        out.append(entry)
        out.extend(results)
        text.clear()
        calls.clear()
        results.clear()

    for part in message.parts:
        if part.type == "step-start":
            flush()
        elif part.type == "text" and part.text:
            if calls:  # text after a tool call belongs to the next step
                flush()
            text.append(part.text)
        elif (name := _tool_name(part)) is not None and part.toolCallId:
            args = part.input if part.input is not None else part.rawInput
            arguments = args if isinstance(args, str) else orjson.dumps(args if args is not None else {}, default=str).decode()
            calls.append({"id": part.toolCallId, "type": "function", "function": {"name": name, "arguments": arguments}})
            results.append(prompt.tool_message(part.toolCallId, _tool_result(name, part)))
    flush()
    return out


def to_model_messages(messages: list[UIMessage]) -> list[list[dict[str, Any]]]:
    """The conversation as turns (each starting at a user message) of model messages."""
    turns: list[list[dict[str, Any]]] = []
    for message in messages:
        if message.role == "user":
            turns.append([{"role": "user", "content": user_text(message)}])
        elif message.role == "assistant":
            converted = _assistant_messages(message)
            if not turns:  # an assistant greeting before any question: keep it in the first turn
                turns.append([])
            turns[-1].extend(converted)
    return turns


def _size(messages: list[dict[str, Any]]) -> int:
    return len(orjson.dumps(messages))


def fit_history(turns: list[list[dict[str, Any]]], max_chars: int) -> tuple[list[dict[str, Any]], int]:
    """Drop the oldest turns until the rest fits in `max_chars`; the newest turn always stays. Returns (messages, dropped)."""
    dropped = 0
    while len(turns) - dropped > 1 and sum(_size(t) for t in turns[dropped:]) > max_chars:
        dropped += 1
    kept = turns[dropped:]
    # The newest turn alone may still be too long when it holds earlier steps: keep its user message then.
    if len(kept) == 1 and _size(kept[0]) > max_chars and kept[0] and kept[0][0].get("role") == "user":
        kept = [[kept[0][0]]]
    return [m for turn in kept for m in turn], dropped
