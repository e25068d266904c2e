"""Conversation history in Redis: each call is one EVALSHA of a script in services/session/lua/.

Keys, per user id:

* `conversation:{u:<uid>}:<id>`: a list of MessagePack UIMessages, oldest first;
* `conversations:{u:<uid>}`: a sorted set of conversation ids scored by last update (ms, Redis's clock);
* `conversation_titles:{u:<uid>}`: a hash of conversation id to title.

The `{u:<uid>}` hash tag puts them in one Redis Cluster slot (services/session/keys.py).
All three slide to CONVERSATION_LIFETIME on every read and write of the conversation.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import redis.exceptions as rex
from redis.asyncio import Redis

from services.session.keys import guard_key, index_key, list_key, titles_key
from services.session.limits import _CountedClient
from services.session.redis_store import WRITEBACK_GUARD_TTL_S, classify, close_client

LUA = Path(__file__).with_name("lua")
SENT_ONCE = frozenset({"append", "delete"})
"""Scripts never sent twice: a second run would append again, or answer that the conversation it just deleted was not there."""


@dataclass(frozen=True)
class Stored:
    """A conversation as Redis holds it: the newest messages (bytes, oldest first) of `total`."""

    total: int
    messages: list[bytes]
    title: str | None
    updated_at: int | None


class ConversationFull(Exception):
    """Raised when an append would pass CONVERSATION_MAX_MESSAGES; nothing was written."""

    def __init__(self, held: int) -> None:
        super().__init__(f"the conversation holds {held} messages")
        self.held = held


def _text(value: object) -> str | None:
    if value is None:
        return None
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


def _int(value: object) -> int | None:
    if value is None:
        return None
    return int(float(value.decode() if isinstance(value, bytes) else value))  # type: ignore[arg-type]


class HistoryRedis:
    """The conversation operations on Redis; Redis failures raise redis_store's RedisUnavailable family."""

    def __init__(self, client: Redis, *, lifetime_s: int) -> None:
        self._client = client
        self._counted = _CountedClient(client)
        self._once = _CountedClient(client, once=True)
        self._lifetime_ms = lifetime_s * 1000
        self._scripts = {path.stem.removeprefix("conversation_"): client.register_script(path.read_text()) for path in sorted(LUA.glob("conversation_*.lua"))}

    async def _call(self, name: str, keys: list[str], args: list[str | bytes | int]) -> object:
        try:
            client = self._once if name in SENT_ONCE else self._counted
            return await self._scripts[name](keys=keys, args=args, client=client)  # type: ignore[arg-type]
        except (rex.RedisError, OSError, TimeoutError) as exc:
            mapped = classify(exc)
            if mapped is not None:
                raise mapped from exc
            raise

    def _keys(self, uid: str, conversation_id: str) -> list[str]:
        return [list_key(uid, conversation_id), index_key(uid), titles_key(uid)]

    async def load(self, uid: str, conversation_id: str, *, max_bytes: int, min_messages: int, slide: bool = True) -> Stored | None:
        reply = await self._call("load", self._keys(uid, conversation_id), [conversation_id, max_bytes, min_messages, self._lifetime_ms if slide else 0])
        assert isinstance(reply, list)
        if reply[0] == 0:
            return None
        return Stored(total=int(reply[1]), messages=list(reply[4:]), title=_text(reply[3]), updated_at=_int(reply[2]))

    async def append(self, uid: str, conversation_id: str, messages: list[bytes], *, max_messages: int, replace_last_of: int | None, title: str) -> tuple[int, int]:
        """Push the messages; (messages held, updated at ms). Raises ConversationFull."""
        args: list[str | bytes | int] = [conversation_id, self._lifetime_ms, max_messages, replace_last_of or -1, title, *messages]
        reply = await self._call("append", self._keys(uid, conversation_id), args)
        assert isinstance(reply, list)
        if reply[0] == 0:
            raise ConversationFull(int(reply[1]))
        return int(reply[1]), int(reply[2])

    async def list(self, uid: str, *, limit: int, after: tuple[int, str] | None) -> tuple[list[tuple[str, int, str | None]], bool]:
        score, cid = (str(after[0]), after[1]) if after is not None else ("", "")
        args: list[str | bytes | int] = [limit, score, cid, self._lifetime_ms, list_key(uid, "")]
        reply = await self._call("list", [index_key(uid), titles_key(uid)], args)
        assert isinstance(reply, list)
        items = [(_text(reply[i]) or "", _int(reply[i + 1]) or 0, _text(reply[i + 2])) for i in range(1, len(reply), 3)]
        return items, reply[0] == 1

    async def create(self, uid: str, conversation_id: str) -> tuple[int, str | None]:
        reply = await self._call("create", [index_key(uid), titles_key(uid)], [conversation_id, self._lifetime_ms])
        assert isinstance(reply, list)
        return _int(reply[0]) or 0, _text(reply[1])

    async def patch(self, uid: str, conversation_id: str, title: str) -> tuple[bool, int | None]:
        """Set the title; (existed, updated at)."""
        reply = await self._call("patch", self._keys(uid, conversation_id), [conversation_id, title])
        assert isinstance(reply, list)
        return (True, _int(reply[0])) if reply else (False, None)

    async def delete(self, uid: str, conversation_id: str) -> bool:
        return bool(await self._call("delete", self._keys(uid, conversation_id), [conversation_id]))

    async def write_back(
        self,
        uid: str,
        conversation_id: str,
        *,
        version: int,
        epoch: str,
        replaces: bool,
        deleted: bool,
        title_mode: str,
        title: str,
        messages: list[bytes],
    ) -> bool:
        """Apply one conversation's outage entry; False when a newer version was already applied."""
        keys = [*self._keys(uid, conversation_id), guard_key(list_key(uid, conversation_id))]
        args: list[str | bytes | int] = [
            f"{version:020d}",
            epoch,
            self._lifetime_ms,
            WRITEBACK_GUARD_TTL_S,
            conversation_id,
            "1" if replaces else "0",
            "1" if deleted else "0",
            title_mode,
            title,
            *messages,
        ]
        return bool(await self._call("writeback", keys, args))

    async def close(self) -> None:
        await close_client(self._client)
