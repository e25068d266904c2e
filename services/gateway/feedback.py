"""POST /api/feedback: a person's thumbs-up or thumbs-down on an answer, and the verified example a thumbs-up proposes.

    POST /api/feedback {conversation_id, message_id, rating: "up" | "down", note?}
      -> {"ok": true, "example": {"id", "status"} | null, "note"?}

Only the owner of the conversation can rate it (another user's conversation is not found).
A thumbs-down is logged and saves nothing. A thumbs-up on an answer whose `execute_query`
succeeded proposes an example (the question, that SQL, the source, the author, the model,
the time) to the session service; with EXAMPLES_REQUIRE_APPROVAL it waits for an admin.
Nothing else ever creates an example. The answer's source must be one the caller may use
now (ACCESS_POLICY, services/gateway/access.py); else the reply is 404 `unknown_source` and
nothing is proposed.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec
import structlog
from aiohttp import web

from services.gateway import keys
from services.gateway.access import source_grant
from services.gateway.auth.identity import identity
from services.gateway.conversations import GET_MAX_BYTES
from shared.access import DEFAULT_SOURCE
from shared.contracts import (
    CONVERSATION_ID_PATTERN,
    EXAMPLE_NOTE_MAX_CHARS,
    EXAMPLE_QUESTION_MAX_CHARS,
    EXAMPLE_SQL_MAX_CHARS,
    ExamplePropose,
    ExecuteQueryPart,
    StoredMessage,
    TextPart,
)
from shared.errors import BAD_REQUEST, NOT_FOUND, UNAVAILABLE, ServiceError

log = structlog.get_logger(__name__)


class Feedback(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    conversation_id: Annotated[str, msgspec.Meta(pattern=CONVERSATION_ID_PATTERN)]
    message_id: Annotated[str, msgspec.Meta(min_length=1, max_length=256)]
    rating: Literal["up", "down"]
    note: Annotated[str, msgspec.Meta(max_length=EXAMPLE_NOTE_MAX_CHARS)] | None = None


_decoder = msgspec.json.Decoder(Feedback)


def parse(body: bytes) -> Feedback:
    try:
        return _decoder.decode(body)
    except (msgspec.ValidationError, msgspec.DecodeError) as exc:
        raise ServiceError(BAD_REQUEST, f"invalid feedback: {exc}; send {{conversation_id, message_id, rating: 'up' or 'down', note?}}") from None


def answered(messages: list[StoredMessage], message_id: str) -> tuple[str, ExecuteQueryPart, StoredMessage] | None:
    """The question before the assistant message `message_id`, and that message's last execute_query that succeeded."""
    for i, message in enumerate(messages):
        if message.id != message_id or message.role != "assistant":
            continue
        queries = [p for p in message.parts if isinstance(p, ExecuteQueryPart) and p.state == "output-available" and isinstance(p.input, dict) and isinstance(p.input.get("sql"), str)]
        question = next((m for m in reversed(messages[:i]) if m.role == "user"), None)
        if not queries or question is None:
            return None
        text = " ".join(p.text for p in question.parts if isinstance(p, TextPart)).strip()
        return (text[:EXAMPLE_QUESTION_MAX_CHARS], queries[-1], message) if text else None
    raise ServiceError(NOT_FOUND, "no such answer in this conversation")


def proposal(uid: str, rated: Feedback, question: str, query: ExecuteQueryPart, message: StoredMessage, approved: bool) -> ExamplePropose:
    metadata: dict[str, Any] = message.metadata if isinstance(message.metadata, dict) else {}
    source = query.input.get("source") or metadata.get("source") or DEFAULT_SOURCE
    columns = [c.get("name") if isinstance(c, dict) else str(c) for c in (query.output.columns if query.output else [])]
    return ExamplePropose(
        source=str(source),
        question=question,
        sql=query.input["sql"],
        author=uid,
        approved=approved,
        columns=[str(c) for c in columns],
        model=str(metadata["model"]) if metadata.get("model") else None,
        conversation_id=rated.conversation_id,
        message_id=rated.message_id,
        note=rated.note,
    )


async def post_feedback(http_request: web.Request) -> web.Response:
    """Authenticate, parse, find the rated answer in the caller's own conversation, then propose (thumbs-up) or only log."""
    who = await identity(http_request)
    uid = who.uid
    rated = parse(await http_request.read())
    app = http_request.app
    loaded = await app[keys.HISTORY].load(uid, rated.conversation_id, max_bytes=GET_MAX_BYTES, min_messages=2)
    if not loaded.exists:
        if loaded.partial:
            raise ServiceError(UNAVAILABLE, "conversation history is unavailable while Redis is down; try again shortly")
        raise ServiceError(NOT_FOUND, "no such conversation")
    found = answered(loaded.messages, rated.message_id)
    log.info("feedback", rating=rated.rating, conversation_id=rated.conversation_id, message_id=rated.message_id, note=bool(rated.note), learnable=found is not None)
    if rated.rating == "down":
        return web.json_response({"ok": True, "example": None})
    if found is None:
        return web.json_response({"ok": True, "example": None, "note": "no query of this answer succeeded: there is nothing to learn from it"})
    config = app[keys.CONFIG]
    propose = proposal(uid, rated, *found, approved=not config.examples_require_approval)
    # Only a source this user may use now is taught (ACCESS_POLICY may have changed since the answer): else 404, as anywhere
    source_grant(config, who.session, propose.source)
    if len(propose.sql) > EXAMPLE_SQL_MAX_CHARS:
        return web.json_response({"ok": True, "example": None, "note": f"the query is longer than {EXAMPLE_SQL_MAX_CHARS} characters: too long to teach"})
    example = await app[keys.EXAMPLES].propose(propose)
    return web.json_response({"ok": True, "example": {"id": example.id, "status": example.status}})
