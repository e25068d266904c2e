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
from nats.aio.client import Client as NATS

from services.gateway import keys
from services.gateway.auth.identity import caller_uid, identity
from services.gateway.handlers import json_object
from shared.bus import request
from shared.contracts import (
    CONVERSATION_ID_PATTERN,
    TITLE_MAX_CHARS,
    ConversationAppended,
    ConversationInfo,
    ConversationLoaded,
    ConversationPage,
    Subjects,
    convert_payload,
)
from shared.errors import BAD_REQUEST, INTERNAL, NOT_FOUND, UNAUTHORIZED, UNAVAILABLE, ServiceError

GET_MAX_BYTES = 768 * 1024
"""A reload returns the newest messages within this many bytes (a NATS message holds 1 MiB by default)."""
_ID = re.compile(CONVERSATION_ID_PATTERN)


class HistoryClient:
    """The gateway's client of `session.conversation.*`, one NATS request per call."""

    def __init__(self, nc: NATS, subjects: Subjects, timeout: float) -> None:
        self._nc = nc
        self._subjects = subjects
        self._timeout = timeout

    async def _call[S: msgspec.Struct](self, op: str, payload: dict[str, Any], kind: type[S]) -> S:
        reply = await request(self._nc, self._subjects.session_conversation(op), payload, timeout=self._timeout)
        try:
            return convert_payload(reply, kind)
        except ServiceError as exc:  # the session service answered something else: its bug, not the caller's
            raise ServiceError(INTERNAL, f"malformed session.conversation.{op} reply: {exc.message}") from None

    async def load(self, uid: str, conversation_id: str, *, max_bytes: int, min_messages: int = 2) -> ConversationLoaded:
        payload = {"uid": uid, "id": conversation_id, "max_bytes": max_bytes, "min_messages": min_messages}
        return await self._call("load", payload, ConversationLoaded)

    async def append(self, uid: str, conversation_id: str, messages: list[dict[str, Any]], replace_last_of: int | None = None) -> ConversationAppended:
        payload = {"uid": uid, "id": conversation_id, "messages": messages, "replace_last_of": replace_last_of}
        return await self._call("append", payload, ConversationAppended)

    async def list(self, uid: str, *, limit: int, cursor: str | None) -> ConversationPage:
        return await self._call("list", {"uid": uid, "limit": limit, "cursor": cursor}, ConversationPage)

    async def create(self, uid: str, conversation_id: str) -> ConversationInfo:
        return await self._call("create", {"uid": uid, "id": conversation_id}, ConversationInfo)

    async def patch(self, uid: str, conversation_id: str, title: str) -> ConversationInfo:
        return await self._call("patch", {"uid": uid, "id": conversation_id, "title": title}, ConversationInfo)

    async def delete(self, uid: str, conversation_id: str) -> None:
        await request(self._nc, self._subjects.session_conversation("delete"), {"uid": uid, "id": conversation_id}, timeout=self._timeout)


HISTORY = web.AppKey("history", HistoryClient)


async def history_client(app: web.Application) -> Any:
    """Cleanup context: the client, once NATS is connected (the app's nats cleanup context runs first)."""
    app[HISTORY] = HistoryClient(app[keys.NATS_CLIENT], app[keys.SUBJECTS], app[keys.CONFIG].session_timeout_s)
    yield


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
        page = await request.app[HISTORY].list(uid, limit=int(raw_limit), cursor=cursor)
    except ServiceError as exc:
        if exc.code == BAD_REQUEST:
            raise ServiceError(BAD_REQUEST, "'cursor' is not a cursor this API returned") from None
        raise
    return web.json_response({"conversations": [info(c) for c in page.conversations], "next_cursor": page.next_cursor})


async def get_conversation(request: web.Request) -> web.Response:
    uid = await caller_uid(request)
    cid = _conversation_id(request)
    loaded = await request.app[HISTORY].load(uid, cid, max_bytes=GET_MAX_BYTES, min_messages=1)
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
    return web.json_response(info(await request.app[HISTORY].patch(uid, cid, title)))


async def delete_conversation(request: web.Request) -> web.Response:
    uid = await caller_uid(request)
    await request.app[HISTORY].delete(uid, _conversation_id(request))
    return web.json_response({"deleted": True})


async def create_conversation(request: web.Request) -> web.Response:
    """Start a new conversation: its index entry, and (for a cookie session) the session's `conversation_id`."""
    who = await identity(request)
    uid, sid = who.uid, who.sid
    conversation_id = str(uuid.uuid4())
    created = await request.app[HISTORY].create(uid, conversation_id)
    if sid is not None:  # one atomic field patch, so concurrent requests lose nothing; a bearer client keeps the id itself
        if await request.app[keys.SESSIONS].patch(sid, {"conversation_id": conversation_id}) is None:
            raise ServiceError(UNAUTHORIZED, "not logged in")
    return web.json_response({"conversation_id": conversation_id, **info(created)})
