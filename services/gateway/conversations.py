"""Conversation history over HTTP: list, read, rename and delete a user's conversations, and start one.

    GET    /api/conversations?limit=&cursor=   newest first: {conversations: [{id, title, updated_at}], next_cursor}
    GET    /api/conversations/<id>             {id, title, updated_at, messages (useChat's initial messages), omitted}
    PATCH  /api/conversations/<id>             {title} -> {id, title, updated_at}
    DELETE /api/conversations/<id>             {deleted: true}
    POST   /api/conversations                  {conversation_id, id, title, updated_at}

The session service keeps the history (`session.conversation.*`). Every call is keyed by the
caller's user id, from the session cookie or a bearer token alike, so another user's
conversation id is simply not found: 404, never 403.
"""

from __future__ import annotations

import re
import uuid
from datetime import UTC, datetime
from typing import Any

import msgspec
from aiohttp import web

from services.gateway import keys
from services.gateway.auth.identity import caller_uid, identity
from services.gateway.handlers import json_object
from shared.contracts import (
    CONVERSATION_ID_PATTERN,
    TITLE_MAX_CHARS,
    ConversationInfo,
)
from shared.errors import BAD_REQUEST, NOT_FOUND, UNAUTHORIZED, UNAVAILABLE, ServiceError

GET_MAX_BYTES = 768 * 1024
"""A reload returns the newest messages within this many bytes (a NATS message holds 1 MiB by default)."""
_ID = re.compile(CONVERSATION_ID_PATTERN)


def iso(ms: int | None) -> str | None:
    """Milliseconds since the epoch as ISO 8601 UTC (what `new Date()` reads)."""
    if ms is None:
        return None
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def info(item: ConversationInfo) -> dict[str, Any]:
    return {"id": item.id, "title": item.title, "updated_at": iso(item.updated_at)}


def _conversation_id(request: web.Request) -> str:
    cid = request.match_info["id"]
    if not _ID.match(cid):
        raise ServiceError(NOT_FOUND, "no such conversation")  # such an id is never stored
    return cid


async def list_conversations(request: web.Request) -> web.Response:
    uid = await caller_uid(request)
    raw_limit = request.query.get("limit", "20")
    if not raw_limit.isdigit() or not 1 <= int(raw_limit) <= 100:
        raise ServiceError(BAD_REQUEST, "'limit' must be a whole number from 1 to 100")
    cursor = request.query.get("cursor") or None
    try:
        page = await request.app[keys.HISTORY].list(uid, limit=int(raw_limit), cursor=cursor)
    except ServiceError as exc:
        if exc.code == BAD_REQUEST:
            raise ServiceError(BAD_REQUEST, "'cursor' is not a cursor this API returned") from None
        raise
    return web.json_response({"conversations": [info(c) for c in page.conversations], "next_cursor": page.next_cursor})


async def get_conversation(request: web.Request) -> web.Response:
    uid = await caller_uid(request)
    cid = _conversation_id(request)
    loaded = await request.app[keys.HISTORY].load(uid, cid, max_bytes=GET_MAX_BYTES, min_messages=1)
    if not loaded.exists:
        if loaded.partial:
            raise ServiceError(UNAVAILABLE, "conversation history is unavailable while Redis is down; try again shortly")
        raise ServiceError(NOT_FOUND, "no such conversation")
    return web.json_response(
        {
            "id": cid,
            "title": loaded.title,
            "updated_at": iso(loaded.updated_at),
            "messages": msgspec.to_builtins(loaded.messages),
            "omitted": loaded.total - len(loaded.messages),
        }
    )


async def patch_conversation(request: web.Request) -> web.Response:
    uid = await caller_uid(request)
    cid = _conversation_id(request)
    body = await json_object(request)
    title = body.get("title")
    if not isinstance(title, str) or not title.strip():
        raise ServiceError(BAD_REQUEST, "'title' must be a non-empty string")
    if len(title) > TITLE_MAX_CHARS:
        raise ServiceError(BAD_REQUEST, f"'title' is longer than {TITLE_MAX_CHARS} characters")
    return web.json_response(info(await request.app[keys.HISTORY].patch(uid, cid, title)))


async def delete_conversation(request: web.Request) -> web.Response:
    uid = await caller_uid(request)
    await request.app[keys.HISTORY].delete(uid, _conversation_id(request))
    return web.json_response({"deleted": True})


async def create_conversation(request: web.Request) -> web.Response:
    """Start a new conversation: its index entry, and (for a cookie session) the session's `conversation_id`."""
    who = await identity(request)
    uid, sid = who.uid, who.sid
    conversation_id = str(uuid.uuid4())
    created = await request.app[keys.HISTORY].create(uid, conversation_id)
    if sid is not None:  # one atomic field patch, so concurrent requests lose nothing; a bearer client keeps the id itself
        if await request.app[keys.SESSIONS].patch(sid, {"conversation_id": conversation_id}) is None:
            raise ServiceError(UNAUTHORIZED, "not logged in")
    return web.json_response({"conversation_id": conversation_id, **info(created)})
