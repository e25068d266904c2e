"""Users' database connections (`session.connection.*`): Redis while it answers, the sessions' fallback while it does not.

Redis holds one hash per user, `connections:{u:<uid>}` (the user's hash tag, as their history
has: services/session/keys.py), of record id -> MessagePack ConnectionRecord. The password inside is sealed by the query service; this service stores it
as an opaque blob and never holds the key. While Redis is down, a user's changes are kept as
one fallback entry (`cx.<base64url uid>`: record id -> record, or None for a deletion), and
written back once Redis answers again: every call goes through the session service's one
outage router (services/session/outage.py), as sessions and conversation history do.
"""

from __future__ import annotations

import base64
from collections.abc import Awaitable, Callable
from typing import Any

import msgpack
import msgspec
import redis.exceptions as rex
import structlog
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster

from services.session.keys import connections_key as hash_key
from services.session.outage import OutageRouter
from services.session.redis_store import CorruptSession, RedisUnavailable, classify, close_client
from shared.contracts import (
    ConnectionDelete,
    ConnectionDeleted,
    ConnectionFound,
    ConnectionGet,
    ConnectionList,
    ConnectionPut,
    ConnectionRecord,
    ConnectionRecords,
    ConnectionRef,
    ConnectionScan,
    Ok,
    Subjects,
)
from shared.errors import CONFLICT, NOT_FOUND, UNAVAILABLE, ServiceError

log = structlog.get_logger(__name__)

FALLBACK_PREFIX = "cx."
KEY_PREFIX = "connections:{u:"
_DECODER = msgspec.msgpack.Decoder(ConnectionRecord)
_ENCODER = msgspec.msgpack.Encoder()


def fallback_key(uid: str) -> str:
    """A JetStream KV key for one user's outage changes: the uid may hold any character, so it is base64url-encoded."""
    return f"{FALLBACK_PREFIX}{base64.urlsafe_b64encode(uid.encode()).decode().rstrip('=')}"


def parse_fallback_key(key: str) -> str:
    encoded = key[len(FALLBACK_PREFIX) :]
    return base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4)).decode()


def decode_records(raw: dict[Any, Any]) -> dict[str, ConnectionRecord]:
    records: dict[str, ConnectionRecord] = {}
    for key, value in raw.items():
        name = key.decode() if isinstance(key, bytes) else str(key)
        if value is None:
            continue
        try:
            records[name] = _DECODER.decode(value)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            log.warning("connection_record_corrupt", connection=name, error=type(exc).__name__)
    return records


def check_put(held: dict[str, ConnectionRecord], put: ConnectionPut) -> None:
    """Refuse a put that would take a name already used, pass the user's limit, or replace what is not there."""
    record = put.record
    current = held.get(record.id)
    if put.create and current is not None:
        raise ServiceError(CONFLICT, "a connection with this id already exists")
    if not put.create:
        if current is None:
            raise ServiceError(NOT_FOUND, "no such connection")
        if put.expect_sealed is not None and current.sealed != put.expect_sealed:
            raise ServiceError(CONFLICT, "this connection was changed meanwhile; try again")
    if any(other.name == record.name and other.id != record.id for other in held.values()):
        raise ServiceError(CONFLICT, f"you already have a connection named {record.name!r}")
    if put.create and len(held) >= put.max_per_user:
        raise ServiceError(CONFLICT, f"you have {len(held)} connections, the most one user may keep (CONNECTIONS_MAX_PER_USER={put.max_per_user}); delete one first")


class ConnectionsRedis:
    """The connection operations on Redis; failures raise redis_store's RedisUnavailable family."""

    def __init__(self, client: Redis) -> None:
        self._client = client

    async def _run[T](self, call: Callable[[], Awaitable[T]]) -> T:
        try:
            return await call()
        except (rex.RedisError, OSError, TimeoutError) as exc:
            if isinstance(exc, rex.WatchError):
                raise
            mapped = classify(exc)
            if mapped is not None:
                raise mapped from exc
            raise

    async def all(self, uid: str) -> dict[str, ConnectionRecord]:
        return decode_records(await self._run(lambda: self._client.hgetall(hash_key(uid))))

    async def get(self, ref: ConnectionRef) -> ConnectionRecord | None:
        raw = await self._run(lambda: self._client.hget(hash_key(ref.owner), ref.id))
        return decode_records({ref.id: raw}).get(ref.id)

    async def put(self, put: ConnectionPut) -> None:
        """Check and store in one WATCH/MULTI transaction, so replicas racing on one user cannot pass the checks together."""
        key = hash_key(put.record.owner)

        async def attempt() -> bool:
            async with self._client.pipeline(transaction=True) as pipe:
                await pipe.watch(key)
                check_put(decode_records(await pipe.hgetall(key)), put)
                pipe.multi()
                pipe.hset(key, put.record.id, _ENCODER.encode(put.record))
                try:
                    await pipe.execute()
                except rex.WatchError:
                    return False
                return True

        for _ in range(20):
            if await self._run(attempt):
                return
        raise ServiceError(UNAVAILABLE, "this user's connections kept changing; try again")

    async def delete(self, ref: ConnectionRef) -> bool:
        return bool(await self._run(lambda: self._client.hdel(hash_key(ref.owner), ref.id)))

    async def apply(self, uid: str, changes: dict[str, bytes | None]) -> None:
        """Write back one user's outage changes (a record, or None to delete it)."""
        key = hash_key(uid)

        async def write() -> None:
            async with self._client.pipeline(transaction=True) as pipe:
                for record_id, value in changes.items():
                    if value is None:
                        pipe.hdel(key, record_id)
                    else:
                        pipe.hset(key, record_id, value)
                await pipe.execute()

        await self._run(write)

    async def scan(self, cursor: str, count: int) -> tuple[list[ConnectionRecord], str | None]:
        """One page of every user's records, and the cursor of the next page (None: done).

        On a single Redis the cursor is SCAN's. On a Redis Cluster it is `<primary>@<cursor>`:
        the primaries are scanned one after another, in the order of their names.
        """
        match = KEY_PREFIX + "*"  # `{` is no glob character
        if isinstance(self._client, RedisCluster):
            keys, following = await self._scan_cluster(self._client, cursor, match, count)
        else:
            raw_cursor, keys = await self._run(lambda: self._client.scan(int(cursor) if cursor.isdigit() else 0, match=match, count=count, _type="HASH"))
            following = str(raw_cursor) if int(raw_cursor) else None
        records: list[ConnectionRecord] = []
        for key in keys:
            held = await self._run(lambda key=key: self._client.hgetall(key))
            records.extend(decode_records(held).values())
        return records, following

    async def _scan_cluster(self, client: RedisCluster, cursor: str, match: str, count: int) -> tuple[list[bytes], str | None]:
        names = sorted(node.name for node in client.get_primaries())
        name, _, position = cursor.rpartition("@") if "@" in cursor else (names[0] if names else "", "", "0")
        if name not in names or not position.isdigit():
            raise ServiceError(UNAVAILABLE, "the Redis Cluster's primaries changed during this scan (or the cursor is not one of its); start again")
        cursors, keys = await self._run(lambda: client.scan(int(position), match=match, count=count, _type="HASH", target_nodes=client.get_node(node_name=name)))
        after = int(cursors[name])
        if after:
            return keys, f"{name}@{after}"
        later = names.index(name) + 1
        return keys, f"{names[later]}@0" if later < len(names) else None

    async def close(self) -> None:
        await close_client(self._client)


class ConnectionStore:
    """The connection operations, each through the outage router: on Redis, or on the user's outage entry in the fallback."""

    def __init__(self, redis: ConnectionsRedis | None, router: OutageRouter) -> None:
        self._redis = redis
        self._router = router
        router.add_writer(FALLBACK_PREFIX, self._write_back)

    async def close(self) -> None:
        if self._redis is not None:
            await self._redis.close()

    async def _call[R](self, uid: str, on_redis: Callable[[ConnectionsRedis], Awaitable[R]], on_fallback: Callable[[], Awaitable[R]]) -> R:
        """One operation through the router; the user's fallback entry is written back first while recovering."""

        async def redis_side() -> R:
            assert self._redis is not None
            try:
                return await on_redis(self._redis)
            except CorruptSession:
                raise ServiceError(UNAVAILABLE, "this user's stored connections are unreadable (another Redis type under their key)") from None

        return await self._router.call(redis_side, on_fallback, fallback_key(uid))

    async def _outage_changes(self, uid: str) -> dict[str, bytes | None]:
        found = await self._router.fallback.get(fallback_key(uid), touch=False)
        if found is None or found.value is None:
            return {}
        return _changes(found.value)

    async def _held(self, uid: str) -> dict[str, ConnectionRecord]:
        """During an outage: what Redis held (if it still reads) with this outage's changes on top."""
        held: dict[str, ConnectionRecord] = {}
        if self._redis is not None and self._router.redis_readable:
            try:
                held = await self._redis.all(uid)
            except RedisUnavailable:
                pass
        for record_id, value in (await self._outage_changes(uid)).items():
            if value is None:
                held.pop(record_id, None)
            else:
                held.update(decode_records({record_id: value}))
        return held

    async def list(self, uid: str) -> list[ConnectionRecord]:
        held = await self._call(uid, lambda r: r.all(uid), lambda: self._held(uid))
        return sorted(held.values(), key=lambda record: (record.name, record.id))

    async def get(self, ref: ConnectionRef) -> ConnectionRecord | None:
        async def from_fallback() -> ConnectionRecord | None:
            return (await self._held(ref.owner)).get(ref.id)

        return await self._call(ref.owner, lambda r: r.get(ref), from_fallback)

    async def put(self, put: ConnectionPut) -> None:
        uid = put.record.owner

        async def from_fallback() -> None:
            async with self._router.lock(fallback_key(uid)):
                check_put(await self._held(uid), put)
                await self._change(uid, put.record.id, _ENCODER.encode(put.record))

        await self._call(uid, lambda r: r.put(put), from_fallback)

    async def delete(self, ref: ConnectionRef) -> bool:
        async def from_fallback() -> bool:
            async with self._router.lock(fallback_key(ref.owner)):
                existed = ref.id in await self._held(ref.owner)
                await self._change(ref.owner, ref.id, None)
            return existed

        return await self._call(ref.owner, lambda r: r.delete(ref), from_fallback)

    async def scan(self, cursor: str, count: int) -> ConnectionRecords:
        """Every user's records, a page at a time (key rotation); needs Redis."""

        async def on_redis() -> ConnectionRecords:
            assert self._redis is not None
            records, following = await self._redis.scan(cursor, count)
            return ConnectionRecords(records=records, cursor=following)

        async def from_fallback() -> ConnectionRecords:
            raise ServiceError(UNAVAILABLE, "listing every user's connections needs Redis, which is not serving now; try again later")

        return await self._router.call(on_redis, from_fallback)

    async def _change(self, uid: str, record_id: str, value: bytes | None) -> None:
        """Record one change in the user's outage entry (compare-and-set, so replicas changing it at once lose nothing)."""
        key = fallback_key(uid)

        def apply(raw: bytes) -> bytes:
            changes = _changes(raw)
            changes[record_id] = value
            return msgpack.packb(changes)

        fallback = self._router.fallback
        if await fallback.update(key, apply) is None:
            await fallback.put(key, msgpack.packb({record_id: value}))
        self._router.changed()

    async def _write_back(self, key: str, value: bytes | None, _version: int) -> bool:
        if value is None or self._redis is None:
            return True
        await self._redis.apply(parse_fallback_key(key), _changes(value))
        return True


def _changes(raw: bytes) -> dict[str, bytes | None]:
    try:
        value = msgpack.unpackb(raw, raw=False)
    except Exception:  # msgpack raises several types; an unreadable entry holds no change
        return {}
    return {str(k): v for k, v in value.items()} if isinstance(value, dict) else {}


class ConnectionHandlers:
    """`session.connection.put/get/list/delete/scan`; a deletion is broadcast so every query replica closes its pools."""

    def __init__(self, store: ConnectionStore, nc: NATS, subjects: Subjects) -> None:
        self._store = store
        self._nc = nc
        self._subjects = subjects

    def routes(self) -> dict[str, Callable[..., Awaitable[Any]]]:
        return {"put": self.put, "get": self.get, "list": self.list, "delete": self.delete, "scan": self.scan}

    async def put(self, req: ConnectionPut, _msg: Msg) -> Ok:
        await self._store.put(req)
        return Ok()

    async def get(self, req: ConnectionGet, _msg: Msg) -> ConnectionFound:
        return ConnectionFound(await self._store.get(req.ref))

    async def list(self, req: ConnectionList, _msg: Msg) -> ConnectionRecords:
        return ConnectionRecords(records=await self._store.list(req.owner))

    async def delete(self, req: ConnectionDelete, _msg: Msg) -> ConnectionDeleted:
        deleted = await self._store.delete(req.ref)
        if deleted:
            await self._nc.publish(self._subjects.query_connection_closed, _ENCODER.encode(req.ref))
            log.info("connection_deleted", connection=req.ref.id)
        return ConnectionDeleted(deleted)

    async def scan(self, req: ConnectionScan, _msg: Msg) -> ConnectionRecords:
        return await self._store.scan(req.cursor, req.count)
