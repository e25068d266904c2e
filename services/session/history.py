"""Conversation history (`session.conversation.*`): Redis while it answers, the sessions' fallback while it does not.

History goes through the outage router (services/session/outage.py) like sessions: the
same modes, the same shared JetStream KV fallback, the same probe and write-back loop. While
Redis is down, a conversation's changes are kept as one fallback entry (key
`conv.<base64url uid>.<id>`, never a sid) that only grows: the messages appended during the
outage, a new title, or a deletion. Write-back pushes those messages after whatever Redis
holds, so nothing stored before the outage has to be known to keep what was said during it.
See docs/history.md, "Outages".
"""

from __future__ import annotations

import base64
import re
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import msgpack
import msgspec
import structlog
from nats.aio.msg import Msg

from services.session.history_redis import ConversationFull, HistoryRedis, Stored
from services.session.outage import OutageRouter
from services.session.redis_store import CorruptSession, RedisUnavailable
from shared.codec import encode
from shared.contracts import (
    TITLE_MAX_CHARS,
    ConversationAppend,
    ConversationAppended,
    ConversationDeleted,
    ConversationInfo,
    ConversationList,
    ConversationLoad,
    ConversationLoaded,
    ConversationPage,
    ConversationPatch,
    ConversationRef,
    StoredMessage,
    TextPart,
)
from shared.errors import BAD_REQUEST, NOT_FOUND, UNAVAILABLE, ServiceError
from shared.limits import check_message_size, conversation_full, has_room

log = structlog.get_logger(__name__)

FALLBACK_PREFIX = "conv."
_CURSOR = re.compile(r"^(\d{1,16})~([A-Za-z0-9_-]{1,128})$")
_SPACE = re.compile(r"\s+")


def fallback_key(uid: str, conversation_id: str) -> str:
    """A JetStream KV key for a conversation: the uid may hold any character, so it is base64url-encoded."""
    return f"{FALLBACK_PREFIX}{base64.urlsafe_b64encode(uid.encode()).decode().rstrip('=')}.{conversation_id}"


def parse_fallback_key(key: str) -> tuple[str, str]:
    encoded, _, conversation_id = key[len(FALLBACK_PREFIX) :].rpartition(".")
    return base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4)).decode(), conversation_id


def initial_title(messages: list[StoredMessage]) -> str:
    """The first user message's text, on one line, cut to 80 characters; '' when there is none."""
    for message in messages:
        if message.role == "user":
            text = " ".join(p.text for p in message.parts if isinstance(p, TextPart))
            return _SPACE.sub(" ", text).strip()[:TITLE_MAX_CHARS]
    return ""


def clean_title(title: str) -> str:
    return _SPACE.sub(" ", title).strip()[:TITLE_MAX_CHARS]


def encode_cursor(updated_at: int, conversation_id: str) -> str:
    return f"{updated_at}~{conversation_id}"


def decode_cursor(cursor: str) -> tuple[int, str]:
    match = _CURSOR.match(cursor)
    if match is None:
        raise ServiceError(BAD_REQUEST, "invalid ConversationList: `cursor` is not a cursor this service returned - at `$.cursor`")
    return int(match.group(1)), match.group(2)


@dataclass(frozen=True)
class HistoryLimits:
    lifetime_s: int
    max_messages: int
    max_message_bytes: int


@dataclass
class OutageEntry:
    """What happened to one conversation while Redis was down; it only grows, except when `replaces`."""

    uid: str
    id: str
    epoch: str = field(default_factory=lambda: uuid.uuid4().hex)
    replaces: bool = False
    """True when this entry is the whole conversation (it was deleted during the outage, or there is no Redis)."""
    deleted: bool = False
    messages: list[bytes] = field(default_factory=list)
    title_mode: str = ""
    """'set' (renamed), 'initial' (a first user message's text, kept only if there is no title) or ''."""
    title: str = ""
    updated_at: int = field(default_factory=lambda: int(time.time() * 1000))

    def encode(self) -> bytes:
        return encode(
            {
                "uid": self.uid,
                "id": self.id,
                "epoch": self.epoch,
                "replaces": self.replaces,
                "deleted": self.deleted,
                "messages": self.messages,
                "title_mode": self.title_mode,
                "title": self.title,
                "updated_at": self.updated_at,
            }
        )

    @classmethod
    def decode(cls, raw: bytes) -> OutageEntry:
        value = msgpack.unpackb(raw, raw=False)
        return cls(
            uid=value["uid"],
            id=value["id"],
            epoch=value["epoch"],
            replaces=bool(value["replaces"]),
            deleted=bool(value["deleted"]),
            messages=list(value["messages"]),
            title_mode=value["title_mode"],
            title=value["title"],
            updated_at=int(value["updated_at"]),
        )


def _decode_messages(raw: list[bytes], where: str) -> list[Any]:
    messages = []
    for item in raw:
        try:
            messages.append(msgpack.unpackb(item, raw=False))
        except Exception as exc:  # msgpack raises several types; one bad message must not hide the others
            log.warning("conversation_message_corrupt", store=where, error=type(exc).__name__, bytes=len(item))
    return messages


def _newest(raw: list[bytes], max_bytes: int, keep: int) -> list[bytes]:
    """The newest messages within max_bytes (0: all), and at least the newest `keep` of them."""
    if not max_bytes:
        return raw
    out: list[bytes] = []
    size = 0
    for item in reversed(raw):
        if len(out) >= keep and size + len(item) > max_bytes:
            break
        size += len(item)
        out.append(item)
    return out[::-1]


class HistoryStore:
    """The conversation operations, each through the outage router: on Redis, or on the fallback's outage entries."""

    def __init__(self, redis: HistoryRedis | None, router: OutageRouter, limits: HistoryLimits) -> None:
        self._redis = redis
        self._router = router
        self.limits = limits
        router.add_writer(FALLBACK_PREFIX, self._write_back)

    async def close(self) -> None:
        if self._redis is not None:
            await self._redis.close()

    async def _call[R](self, on_redis: Callable[[HistoryRedis], Awaitable[R]], on_fallback: Callable[[], Awaitable[R]], key: str | None) -> R:
        """One operation through the router; `key` is the conversation's fallback entry, written back first while recovering."""

        async def redis_side() -> R:
            assert self._redis is not None
            try:
                return await on_redis(self._redis)
            except CorruptSession as exc:  # another Redis type under a history key
                log.error("conversation_corrupt", error=str(exc))
                raise ServiceError(UNAVAILABLE, "this conversation's stored data is unreadable (another Redis type under its key)") from None

        return await self._router.call(redis_side, on_fallback, key)

    async def _entry(self, key: str) -> OutageEntry | None:
        found = await self._router.fallback.get(key, touch=False)
        if found is None or found.value is None:
            return None
        try:
            return OutageEntry.decode(found.value)
        except Exception as exc:  # not ours to serve; logged and treated as no entry
            log.warning("conversation_entry_corrupt", error=type(exc).__name__)
            return None

    async def _change(self, uid: str, conversation_id: str, change: Callable[[OutageEntry], None]) -> OutageEntry:
        """Apply `change(entry)` to the conversation's fallback entry (created when missing) and store it.

        An existing entry is changed by compare-and-set, so replicas appending at once lose nothing.
        """
        key = fallback_key(uid, conversation_id)
        changed: list[OutageEntry] = []

        def apply(raw: bytes) -> bytes:
            try:
                entry = OutageEntry.decode(raw)
            except Exception:  # unreadable: start the entry afresh rather than fail every call
                entry = OutageEntry(uid, conversation_id, replaces=self._redis is None)
            change(entry)
            entry.updated_at = int(time.time() * 1000)
            changed[:] = [entry]
            return entry.encode()

        fallback = self._router.fallback
        async with self._router.lock(key):
            if await fallback.update(key, apply) is None:
                entry = OutageEntry(uid, conversation_id, replaces=self._redis is None)
                change(entry)
                changed[:] = [entry]
                await fallback.put(key, entry.encode())
        self._router.changed()
        return changed[0]

    # --- operations -----------------------------------------------------------------------

    async def load(self, req: ConversationLoad, *, recheck: bool = True) -> ConversationLoaded:
        key = fallback_key(req.uid, req.id)

        async def on_redis(redis: HistoryRedis) -> ConversationLoaded:
            stored = await redis.load(req.uid, req.id, max_bytes=req.max_bytes, min_messages=req.min_messages)
            return self._loaded(stored, [], partial=False, max_bytes=req.max_bytes, keep=req.min_messages)

        async def on_fallback() -> ConversationLoaded:
            entry = await self._entry(key)
            before: Stored | None = None
            known = False
            if (entry is None or not entry.replaces) and self._router.redis_readable and self._redis is not None:
                try:
                    before = await self._redis.load(req.uid, req.id, max_bytes=req.max_bytes, min_messages=req.min_messages, slide=False)
                    known = True
                except RedisUnavailable:
                    pass
            if entry is None:
                if not known and recheck and await self._router.redis_is_back():
                    return await self.load(req, recheck=False)
                return self._loaded(before, [], partial=not known, max_bytes=req.max_bytes, keep=req.min_messages)
            if entry.deleted:
                return self._loaded(None, [], partial=False, max_bytes=req.max_bytes, keep=req.min_messages)
            if entry.replaces:
                before, known = None, True
            loaded = self._loaded(before, entry.messages, partial=not known, max_bytes=req.max_bytes, keep=req.min_messages)
            loaded.exists = True
            if entry.title_mode == "set" or (entry.title_mode == "initial" and not loaded.title):
                loaded.title = entry.title
            loaded.updated_at = entry.updated_at
            return loaded

        return await self._call(on_redis, on_fallback, key)

    def _loaded(self, stored: Stored | None, outage: list[bytes], *, partial: bool, max_bytes: int, keep: int) -> ConversationLoaded:
        raw = _newest([*(stored.messages if stored else []), *outage], max_bytes, keep)
        return ConversationLoaded(
            exists=stored is not None,
            messages=_decode_messages(raw, "redis" if not outage else "fallback"),  # the stored maps, sent on as they are
            total=(stored.total if stored else 0) + len(outage),
            title=stored.title if stored else None,
            updated_at=stored.updated_at if stored else None,
            max_messages=self.limits.max_messages,
            max_message_bytes=self.limits.max_message_bytes,
            partial=partial,
        )

    def _encode_messages(self, messages: list[StoredMessage]) -> list[bytes]:
        encoded = [msgspec.msgpack.encode(m) for m in messages]
        for i, (message, raw) in enumerate(zip(messages, encoded, strict=True)):
            check_message_size(f"message {i} ({message.role}, id {message.id})", len(raw), self.limits.max_message_bytes)
        return encoded

    def _full(self, held: int) -> ServiceError:
        return conversation_full(held, self.limits.max_messages)

    async def append(self, req: ConversationAppend) -> ConversationAppended:
        encoded = self._encode_messages(req.messages)
        title = initial_title(req.messages)

        async def on_redis(redis: HistoryRedis) -> ConversationAppended:
            try:
                total, updated_at = await redis.append(req.uid, req.id, encoded, max_messages=self.limits.max_messages, replace_last_of=req.replace_last_of, title=title)
            except ConversationFull as exc:
                raise self._full(exc.held) from None
            return ConversationAppended(total=total, updated_at=updated_at)

        def change(entry: OutageEntry) -> None:
            if req.replace_last_of is not None and entry.replaces and len(entry.messages) == req.replace_last_of:
                # Regenerate: the entry holds the whole conversation, so it can replace its last message.
                # A new epoch makes a write-back replace the list again rather than count on what it pushed.
                entry.messages.pop()
                entry.epoch = uuid.uuid4().hex
            if not has_room(len(entry.messages), len(encoded), self.limits.max_messages):
                raise self._full(len(entry.messages))
            entry.deleted = False
            entry.messages.extend(encoded)
            if not entry.title_mode and title:
                entry.title_mode, entry.title = "initial", title

        async def on_fallback() -> ConversationAppended:
            entry = await self._change(req.uid, req.id, change)
            log.info("conversation_append_fallback", store=self._router.fallback.name, messages=len(encoded), outage_messages=len(entry.messages))
            return ConversationAppended(total=len(entry.messages), updated_at=entry.updated_at, fallback=True)

        return await self._call(on_redis, on_fallback, fallback_key(req.uid, req.id))

    async def list(self, req: ConversationList) -> ConversationPage:
        after = decode_cursor(req.cursor) if req.cursor else None

        async def on_redis(redis: HistoryRedis) -> ConversationPage:
            items, more = await redis.list(req.uid, limit=req.limit, after=after)
            conversations = [ConversationInfo(id=cid, title=title, updated_at=updated) for cid, updated, title in items]
            cursor = encode_cursor(items[-1][1], items[-1][0]) if more and items else None
            return ConversationPage(conversations=conversations, next_cursor=cursor)

        async def on_fallback() -> ConversationPage:
            raise ServiceError(UNAVAILABLE, "the list of conversations is unavailable while Redis is down; chats go on and are written back")

        return await self._call(on_redis, on_fallback, None)

    async def create(self, req: ConversationRef) -> ConversationInfo:
        async def on_redis(redis: HistoryRedis) -> ConversationInfo:
            updated_at, title = await redis.create(req.uid, req.id)
            return ConversationInfo(id=req.id, updated_at=updated_at, title=title)

        async def on_fallback() -> ConversationInfo:
            entry = await self._change(req.uid, req.id, lambda entry: None)
            return ConversationInfo(id=req.id, updated_at=entry.updated_at, title=entry.title or None)

        return await self._call(on_redis, on_fallback, fallback_key(req.uid, req.id))

    async def patch(self, req: ConversationPatch) -> ConversationInfo:
        title = clean_title(req.title)

        async def on_redis(redis: HistoryRedis) -> ConversationInfo:
            existed, updated_at = await redis.patch(req.uid, req.id, title)
            if not existed:
                raise ServiceError(NOT_FOUND, "no such conversation")
            return ConversationInfo(id=req.id, title=title, updated_at=updated_at)

        async def on_fallback() -> ConversationInfo:
            loaded = await self.load(ConversationLoad(uid=req.uid, id=req.id, max_bytes=1, min_messages=0))
            if loaded.partial and not loaded.exists:
                raise ServiceError(UNAVAILABLE, "Redis is down and this replica cannot tell whether the conversation exists; try again shortly")
            if not loaded.exists:
                raise ServiceError(NOT_FOUND, "no such conversation")

            def change(entry: OutageEntry) -> None:
                entry.title_mode, entry.title = "set", title

            entry = await self._change(req.uid, req.id, change)
            return ConversationInfo(id=req.id, title=title, updated_at=entry.updated_at)

        return await self._call(on_redis, on_fallback, fallback_key(req.uid, req.id))

    async def delete(self, req: ConversationRef) -> bool:
        async def on_redis(redis: HistoryRedis) -> bool:
            return await redis.delete(req.uid, req.id)

        def change(entry: OutageEntry) -> None:
            # Recorded even when unknown here: the conversation may exist in Redis and must go there too.
            entry.replaces, entry.deleted, entry.messages = True, True, []
            entry.title_mode, entry.title = "", ""
            entry.epoch = uuid.uuid4().hex

        async def on_fallback() -> bool:
            await self._change(req.uid, req.id, change)
            return True

        return await self._call(on_redis, on_fallback, fallback_key(req.uid, req.id))

    # --- write-back -----------------------------------------------------------------------

    async def _write_back(self, key: str, value: bytes | None, version: int) -> bool:
        """Called by the outage router's write-back for every `conv.` entry."""
        if value is None or self._redis is None:
            return True
        try:
            entry = OutageEntry.decode(value)
        except Exception as exc:
            log.error("conversation_entry_dropped", key_kind="conversation", error=type(exc).__name__)
            return True
        return await self._redis.write_back(
            entry.uid,
            entry.id,
            version=version,
            epoch=entry.epoch,
            replaces=entry.replaces,
            deleted=entry.deleted,
            title_mode=entry.title_mode,
            title=entry.title,
            messages=entry.messages,
        )


class HistoryHandlers:
    """`session.conversation.<op>`: the typed request (decoded and measured by shared.bus.Server) goes to the store; the reply is the store's Struct."""

    def __init__(self, store: HistoryStore) -> None:
        self._store = store

    def routes(self) -> dict[str, Any]:
        return {"load": self.load, "append": self.append, "list": self.list, "create": self.create, "patch": self.patch, "delete": self.delete}

    async def load(self, req: ConversationLoad, _msg: Msg) -> ConversationLoaded:
        return await self._store.load(req)

    async def append(self, req: ConversationAppend, _msg: Msg) -> ConversationAppended:
        return await self._store.append(req)

    async def list(self, req: ConversationList, _msg: Msg) -> ConversationPage:
        return await self._store.list(req)

    async def create(self, req: ConversationRef, _msg: Msg) -> ConversationInfo:
        return await self._store.create(req)

    async def patch(self, req: ConversationPatch, _msg: Msg) -> ConversationInfo:
        return await self._store.patch(req)

    async def delete(self, req: ConversationRef, _msg: Msg) -> ConversationDeleted:
        if not await self._store.delete(req):
            raise ServiceError(NOT_FOUND, "no such conversation")
        return ConversationDeleted()
