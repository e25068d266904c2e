"""Stored history in a chat turn: what the model is given of it, and what the turn adds to it.

The AI SDK's persistence pattern: the server loads the conversation (trusted: summaries only,
as the session service stores them), adds the new user message, and when the turn ends
appends the user message and the assistant message as the client built it. One load and one
append per turn, each one Redis command in the session service.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import msgspec
import structlog

from services.gateway.chat import prompt
from services.gateway.chat.chat_request import ChatRequest, Part, UIMessage
from services.gateway.clients import HistoryClient
from shared.contracts import CONVERSATION_ID_PATTERN, ConversationLoaded
from shared.errors import BAD_REQUEST, ServiceError
from shared.limits import check_message_size, conversation_full, has_room

log = structlog.get_logger(__name__)

POSTED_HISTORY_MAX_BYTES = 512 * 1024
"""A full `messages` post starting a conversation is stored back to this many bytes (newest first)."""
LOAD_MAX_BYTES = 768 * 1024
KEPT_TOOLS = tuple(tool["function"]["name"] for tool in prompt.TOOLS)
"""Every tool the model can call: a later turn's model sees each call it made, and what it got back."""
_ID = re.compile(CONVERSATION_ID_PATTERN)


@dataclass
class TurnHistory:
    """The history of one turn: what the model gets, and what is appended before the assistant message."""

    uid: str
    conversation_id: str
    messages: list[UIMessage]
    """The conversation for the model, ending with the new user message (older turns are cut by fit_history)."""
    to_store: list[dict[str, Any]] = field(default_factory=list)
    replace_last_of: int | None = None
    max_message_bytes: int = 0
    partial: bool = False
    stored: int = 0


def _size(message: dict[str, Any]) -> int:
    return len(msgspec.msgpack.encode(message))


def stored_user(message: UIMessage) -> dict[str, Any]:
    """A user message as history keeps it: its text parts."""
    stored: dict[str, Any] = {"id": message.id, "role": "user", "parts": [{"type": "text", "text": p.text} for p in message.parts if p.type == "text" and p.text is not None]}
    if message.metadata is not None:
        stored["metadata"] = message.metadata
    return stored


def _stored_part(part: Part) -> dict[str, Any] | None:
    if part.type == "step-start":
        return {"type": "step-start"}
    if part.type in ("text", "reasoning") and part.text is not None:
        kept: dict[str, Any] = {"type": part.type, "text": part.text}
        if part.state in ("streaming", "done"):
            kept["state"] = part.state
        return kept
    name = part.type[len("tool-") :] if part.type.startswith("tool-") else None
    if name not in KEPT_TOOLS or not part.toolCallId or part.state not in ("input-streaming", "input-available", "output-available", "output-error"):
        return None
    kept = {"type": part.type, "toolCallId": part.toolCallId, "state": part.state}
    for key in ("input", "rawInput", "errorText"):
        if getattr(part, key) is not None:
            kept[key] = getattr(part, key)
    if part.state == "output-available":
        if name == prompt.EXECUTE_QUERY:
            kept["output"] = prompt.query_summary(part.output)
        elif name in (prompt.DESCRIBE_SCHEMA, prompt.SEARCH_SCHEMA):
            kept["output"] = prompt.schema_summary(part.output)
        else:  # a chart the page draws again on reload, recent queries: kept as shown (chat_request cuts what the model sees)
            kept["output"] = part.output
        if isinstance(kept["output"], dict) and "error" in kept["output"]:
            return None
    return kept


def stored_posted(message: UIMessage) -> dict[str, Any] | None:
    """A posted (untrusted) message as history may keep it: summaries only, no `data-*` or other parts."""
    if message.role == "user":
        return stored_user(message)
    if message.role != "assistant":
        return None
    stored: dict[str, Any] = {"id": message.id, "role": "assistant", "parts": [p for p in map(_stored_part, message.parts) if p is not None]}
    if message.metadata is not None:
        stored["metadata"] = message.metadata
    return stored


def fit_message(message: dict[str, Any], max_bytes: int) -> dict[str, Any]:
    """The assistant message, its describe_schema outputs cut to what the model saw when it is too large to store."""
    if not max_bytes or _size(message) <= max_bytes:
        return message
    parts = []
    for part in message["parts"]:
        if part.get("type") == f"tool-{prompt.DESCRIBE_SCHEMA}" and "output" in part:
            part = {**part, "output": prompt.schema_summary(part["output"])}
        parts.append(part)
    return {**message, "parts": parts}


def _ui(messages: list[Any]) -> list[UIMessage]:
    return msgspec.convert(msgspec.to_builtins(messages), list[UIMessage])


async def prepare(client: HistoryClient, uid: str, body: ChatRequest, history_max_chars: int) -> TurnHistory:
    """Load the stored conversation and decide what the model gets and what the turn stores."""
    if not _ID.match(body.id):
        raise ServiceError(BAD_REQUEST, "'id' must be a chat id of 1-128 letters, digits, '-' or '_'")
    loaded: ConversationLoaded = await client.load(uid, body.id, max_bytes=min(LOAD_MAX_BYTES, 2 * history_max_chars), min_messages=2)
    stored = _ui(loaded.messages)
    turn = TurnHistory(uid, body.id, [], max_message_bytes=loaded.max_message_bytes, partial=loaded.partial, stored=loaded.total)
    regenerate = body.trigger == "regenerate-message"
    if regenerate and stored and stored[-1].role == "assistant":
        stored.pop()
        turn.replace_last_of = loaded.total
    posted = [m for m in body.messages if m.role in ("user", "assistant")]
    new = body.message if body.message is not None else (posted[-1] if posted and posted[-1].role == "user" else None)
    prior = posted[:-1] if body.message is None and new is not None else ([] if body.message is not None else posted)
    if new is None:
        if not (regenerate and stored and stored[-1].role == "user"):
            raise ServiceError(BAD_REQUEST, "there is no user message to answer: send it as 'message'")
        new = stored.pop()  # regenerate the answer to the stored question
        already = True
    else:
        already = bool(stored) and stored[-1].role == "user" and stored[-1].id == new.id
        if already:
            stored.pop()
    if loaded.total and not loaded.partial:
        turn.messages = [*stored, new]
    else:
        turn.messages = [*(prior or stored), new]
        if not loaded.total and not loaded.partial:
            turn.to_store = _budgeted([m for m in map(stored_posted, prior) if m is not None])
    if not already:
        user = stored_user(new)
        check_message_size("the message", _size(user), turn.max_message_bytes)
        turn.to_store.append(user)
    held = loaded.total - (1 if turn.replace_last_of else 0)
    if not has_room(held, len(turn.to_store) + 1, loaded.max_messages):
        raise conversation_full(loaded.total, loaded.max_messages)
    return turn


def _budgeted(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    kept: list[dict[str, Any]] = []
    size = 0
    for message in reversed(messages):
        size += _size(message)
        if size > POSTED_HISTORY_MAX_BYTES:
            break
        kept.append(message)
    return kept[::-1]


async def save(client: HistoryClient, turn: TurnHistory, assistant: dict[str, Any] | None) -> str | None:
    """Append the turn; None when stored, else the reason, for an `error` part (the answer was shown, not kept)."""
    messages = [*turn.to_store]
    if assistant is not None:
        messages.append(fit_message(assistant, turn.max_message_bytes))
    if not messages:
        return None
    try:
        result = await client.append(turn.uid, turn.conversation_id, messages, turn.replace_last_of)
    except ServiceError as exc:
        log.warning("history_not_saved", code=exc.code, error=exc.message, conversation=turn.conversation_id)
        return f"this answer could not be saved in the conversation's history: {exc.message}"
    turn.stored = result.total
    return None
