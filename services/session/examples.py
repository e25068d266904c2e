"""Verified examples in Redis (`session.examples.*`): questions with the SQL that answered them, per source.

A person's thumbs-up on an answer proposes one (the gateway's POST /api/feedback); with
EXAMPLES_REQUIRE_APPROVAL it waits, `pending`, for an admin's approval. Nothing else ever
writes one. Keys:

* `examples:{examples}:source:<source>`: a hash of example id to the MessagePack Example;
* `examples:{examples}:sources`: the set of sources that have examples.

They share one hash tag (services/session/keys.py), so the MULTI that writes an example and
its source runs on one Redis Cluster node.

An example's id is a hash of its source, question and SQL, so a second thumbs-up on the
same answer does not make a second example. Examples do not expire. Every operation goes
through the OutageRouter (services/session/outage.py), as history does: a Redis failure it
meets moves the session service to the fallback, and while Redis is down examples are
unavailable at once (they are not kept in the fallback; a chat turn goes on without them,
and a thumbs-up is answered 503, to try again).
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec
import redis.exceptions as rex
import structlog
from nats.aio.msg import Msg
from redis.asyncio import Redis

from services.session.keys import EXAMPLES_SOURCES_KEY as SOURCES_KEY
from services.session.keys import examples_key as source_key
from services.session.outage import OutageRouter
from services.session.redis_store import RedisUnavailable, classify, close_client
from shared.contracts import (
    Example,
    ExampleFlag,
    ExampleList,
    ExamplePropose,
    ExampleRef,
    ExampleReply,
    ExampleSimilar,
    ExamplesReply,
    Ok,
)
from shared.errors import BAD_REQUEST, NOT_FOUND, UNAVAILABLE, ServiceError
from shared.words import similarity

log = structlog.get_logger(__name__)

MAX_PER_SOURCE = 500
"""Examples kept per source at most; a proposal past it is refused."""
MIN_SIMILARITY = 0.4
"""An example is offered for a question only when they share at least this much (shared.words.similarity)."""

_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(Example)


def example_id(source: str, question: str, sql: str) -> str:
    normal = "\0".join([source, " ".join(question.split()).casefold(), " ".join(sql.split())])
    return hashlib.sha256(normal.encode()).hexdigest()[:16]


def rank(examples: list[Example], question: str, limit: int) -> list[Example]:
    """The approved, unflagged examples most like `question`, best first, at least MIN_SIMILARITY alike."""
    scored = [(similarity(question, e.question), e) for e in examples if e.status == "approved" and e.flag is None]
    scored = [(s, e) for s, e in scored if s >= MIN_SIMILARITY]
    scored.sort(key=lambda item: (-item[0], -item[1].created_at, item[1].id))
    return [e for _, e in scored[:limit]]


DOWN = "verified examples are unavailable while Redis is down; try again shortly"


class ExampleStore:
    """The examples of every source, in Redis (None: no Redis is configured, and examples are unavailable).

    Each operation is one `router.call`: on Redis while it serves; during an outage (the
    router's mode) the fallback side fails at once rather than wait for Redis, so a chat turn
    goes on without examples at no cost.
    """

    def __init__(self, client: Redis | None, router: OutageRouter) -> None:
        self._client = client
        self._router = router

    def _redis(self) -> Redis:
        assert self._client is not None  # _call checked it
        return self._client

    async def _call[R](self, operation: Callable[[], Awaitable[R]]) -> R:
        """Run `operation` (its Redis calls) through the outage router; a Redis outage it meets is reported to it."""
        if self._client is None:
            raise ServiceError(UNAVAILABLE, "verified examples need Redis (REDIS_URL); none is configured")

        async def on_redis() -> R:
            try:
                return await operation()
            except (rex.RedisError, OSError, TimeoutError) as exc:
                mapped = classify(exc)
                if isinstance(mapped, RedisUnavailable):
                    raise mapped from exc  # the router moves every store to the fallback until Redis is back
                raise ServiceError(UNAVAILABLE, f"verified examples: Redis refused the call ({type(exc).__name__})") from None

        async def on_fallback() -> R:
            raise ServiceError(UNAVAILABLE, DOWN)

        return await self._router.call(on_redis, on_fallback)

    async def close(self) -> None:
        if self._client is not None:
            await close_client(self._client)

    async def _get(self, source: str, eid: str) -> Example | None:
        raw = await self._redis().hget(source_key(source), eid)
        return None if raw is None else _decoder.decode(raw)

    async def _put(self, example: Example) -> None:
        pipe = self._redis().pipeline(transaction=True)
        pipe.hset(source_key(example.source), example.id, _encoder.encode(example))
        pipe.sadd(SOURCES_KEY, example.source)
        await pipe.execute()

    async def propose(self, req: ExamplePropose) -> Example:
        return await self._call(lambda: self._propose(req))

    async def _propose(self, req: ExamplePropose) -> Example:
        eid = example_id(req.source, req.question, req.sql)
        existing = await self._get(req.source, eid)
        if existing is not None:
            if req.approved and existing.status == "pending":
                existing = msgspec.structs.replace(existing, status="approved")
                await self._put(existing)
            return existing
        if await self._redis().hlen(source_key(req.source)) >= MAX_PER_SOURCE:
            raise ServiceError(BAD_REQUEST, f"source {req.source!r} already has {MAX_PER_SOURCE} examples; delete some first")
        example = Example(
            id=eid,
            source=req.source,
            question=req.question,
            sql=req.sql,
            author=req.author,
            status="approved" if req.approved else "pending",
            created_at=int(time.time() * 1000),
            columns=req.columns,
            model=req.model,
            conversation_id=req.conversation_id,
            message_id=req.message_id,
            note=req.note,
        )
        await self._put(example)
        log.info("example_proposed", source=req.source, id=eid, status=example.status)
        return example

    async def list(self, req: ExampleList) -> list[Example]:
        return await self._call(lambda: self._list(req))

    async def _list(self, req: ExampleList) -> list[Example]:
        client = self._redis()
        sources = [req.source] if req.source is not None else sorted(s.decode() if isinstance(s, bytes) else s for s in await client.smembers(SOURCES_KEY))
        out = []
        for source in sources:
            for raw in (await client.hgetall(source_key(source))).values():
                example = _decoder.decode(raw)
                if req.status is None or example.status == req.status:
                    out.append(example)
        out.sort(key=lambda e: (e.source, e.created_at, e.id))
        return out

    async def approve(self, req: ExampleRef) -> Example:
        return await self._call(lambda: self._approve(req))

    async def _approve(self, req: ExampleRef) -> Example:
        example = await self._found(req.source, req.id)
        example = msgspec.structs.replace(example, status="approved", approved_by=req.by or example.approved_by, flag=None)
        await self._put(example)
        log.info("example_approved", source=req.source, id=req.id)
        return example

    async def flag(self, req: ExampleFlag) -> Example:
        return await self._call(lambda: self._flag(req))

    async def _flag(self, req: ExampleFlag) -> Example:
        example = msgspec.structs.replace(await self._found(req.source, req.id), flag=req.flag)
        await self._put(example)
        return example

    async def delete(self, req: ExampleRef) -> None:
        return await self._call(lambda: self._delete(req))

    async def _delete(self, req: ExampleRef) -> None:
        if not await self._redis().hdel(source_key(req.source), req.id):
            raise ServiceError(NOT_FOUND, f"no example {req.id} in source {req.source!r}")
        log.info("example_deleted", source=req.source, id=req.id)

    async def similar(self, req: ExampleSimilar) -> list[Example]:
        return await self._call(lambda: self._similar(req))

    async def _similar(self, req: ExampleSimilar) -> list[Example]:
        if req.limit == 0:
            return []
        raw = await self._redis().hgetall(source_key(req.source))
        return rank([_decoder.decode(v) for v in raw.values()], req.question, req.limit)

    async def _found(self, source: str, eid: str) -> Example:
        example = await self._get(source, eid)
        if example is None:
            raise ServiceError(NOT_FOUND, f"no example {eid} in source {source!r}")
        return example


class ExampleHandlers:
    """`session.examples.<op>` handlers (requests decoded and checked by shared.bus.Server)."""

    def __init__(self, store: ExampleStore) -> None:
        self._store = store

    def routes(self) -> dict[str, Any]:
        return {"propose": self.propose, "list": self.list, "approve": self.approve, "delete": self.delete, "similar": self.similar, "flag": self.flag}

    async def _guarded(self, op: str, call: Any) -> Any:
        """Run one operation (shared.bus.Server measures it as bus_request_seconds); a Redis error that is no outage is `unavailable`."""
        try:
            return await call()
        except (rex.RedisError, OSError, TimeoutError):
            raise ServiceError(UNAVAILABLE, "verified examples are unavailable while Redis does not answer; try again shortly") from None

    async def propose(self, req: ExamplePropose, _msg: Msg) -> ExampleReply:
        return await self._guarded("propose", lambda: self._wrap(self._store.propose(req)))

    async def approve(self, req: ExampleRef, _msg: Msg) -> ExampleReply:
        return await self._guarded("approve", lambda: self._wrap(self._store.approve(req)))

    async def flag(self, req: ExampleFlag, _msg: Msg) -> ExampleReply:
        return await self._guarded("flag", lambda: self._wrap(self._store.flag(req)))

    async def delete(self, req: ExampleRef, _msg: Msg) -> Ok:
        async def call() -> Ok:
            await self._store.delete(req)
            return Ok()

        return await self._guarded("delete", call)

    async def list(self, req: ExampleList, _msg: Msg) -> ExamplesReply:
        async def call() -> ExamplesReply:
            return ExamplesReply(await self._store.list(req))

        return await self._guarded("list", call)

    async def similar(self, req: ExampleSimilar, _msg: Msg) -> ExamplesReply:
        async def call() -> ExamplesReply:
            return ExamplesReply(await self._store.similar(req))

        return await self._guarded("similar", call)

    @staticmethod
    async def _wrap(pending: Any) -> ExampleReply:
        return ExampleReply(await pending)
