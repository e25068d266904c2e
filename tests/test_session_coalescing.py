"""Coalesced session reads over real NATS and Redis: one `session.get_many` message for the reads that
arrive together, one GETEX per read in one pipeline, and every read served as if it were alone.

The gateway's SessionReads is driven in-process (all reads started in one turn of the event loop
go as one message, whatever the timing), and /api/me through the real gateway shows the same
from outside. Each test checks what is in Redis itself: the TTL slid and the commands counted.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import aiohttp
import msgpack
import msgspec
import nats
import pytest
import redis
import structlog
from nats.aio.msg import Msg

from services.gateway.clients import SessionReads
from shared.bus import subscribed
from shared.contracts import MAX_SESSION_BATCH, SessionGetMany
from shared.errors import ServiceError
from tests.client import browser, login
from tests.conftest import Infra, SystemFactory
from tests.harness import RedisServer, wait_until
from tests.test_hardening_store import redis_with, wait_event
from tests.test_session_service import commandstats, new_sid, rdb, start_replica, start_session  # noqa: F401 - fixtures

LIFETIME = 1000
SHORT_TTL = 50


def stored(rdb: redis.Redis, sid: str, value: Any, ttl: int = SHORT_TTL) -> None:  # noqa: F811
    rdb.set(f"session:{sid}", msgpack.packb(value), ex=ttl)


class Spy:
    """A plain subscription beside the service's queue group: it sees every get_many message sent."""

    def __init__(self) -> None:
        self.batches: list[SessionGetMany] = []

    async def on_message(self, msg: Msg) -> None:
        self.batches.append(msgspec.msgpack.decode(msg.data, type=SessionGetMany))


async def spy_on(nc: nats.NATS, subject: str) -> Spy:
    spy = Spy()
    await nc.subscribe(subject, cb=spy.on_message)
    await subscribed(nc)
    return spy


async def test_reads_started_together_go_as_one_message_and_each_gets_its_own_session(start_replica, infra: Infra, redis_server: RedisServer, rdb: redis.Redis) -> None:  # noqa: F811
    replica = await start_replica(infra.nats_url, redis_server.url, SESSION_LIFETIME=str(LIFETIME))
    sids = [new_sid() for _ in range(40)]
    for i, sid in enumerate(sids):
        stored(rdb, sid, {"user": {"uid": f"u-{i}"}, "n": i})
    nc = await nats.connect(infra.nats_url)
    try:
        spy = await spy_on(nc, replica.subjects.session_get_many)
        reads = SessionReads(nc, replica.subjects.session_get_many, timeout=5.0)
        await reads.get(sids[0])  # warms the replica's Redis connection, so set-up is not counted below
        await nc.flush()
        spy.batches.clear()
        rdb.config_resetstat()

        sessions = await asyncio.gather(*(reads.get(sid) for sid in sids))

        assert sessions == [{"user": {"uid": f"u-{i}"}, "n": i} for i in range(len(sids))]
        await nc.flush()
        assert [[read.sid for read in batch.reads] for batch in spy.batches] == [sids]
        assert commandstats(rdb) == {"getex": len(sids)}  # one GETEX per read, no MULTI/EXEC
        assert all(SHORT_TTL < rdb.ttl(f"session:{sid}") <= LIFETIME for sid in sids)  # each read slid its own expiry
        assert replica.metric("session_batch_reads_total", outcome="ok") == len(sids) + 1
        assert replica.metric("session_redis_commands_total", command="getex") == len(sids) + 1
    finally:
        await nc.close()


async def test_more_reads_than_a_batch_holds_are_split_and_each_answered(start_session, infra: Infra, rdb: redis.Redis) -> None:  # noqa: F811
    replica = await start_session()
    sids = [new_sid() for _ in range(MAX_SESSION_BATCH + 88)]
    pipe = rdb.pipeline(transaction=False)
    for i, sid in enumerate(sids):
        pipe.set(f"session:{sid}", msgpack.packb({"n": i}), ex=SHORT_TTL)
    pipe.execute()
    nc = await nats.connect(infra.nats_url)
    try:
        spy = await spy_on(nc, replica.subjects.session_get_many)
        reads = SessionReads(nc, replica.subjects.session_get_many, timeout=10.0)
        sessions = await asyncio.gather(*(reads.get(sid) for sid in sids))
        await nc.flush()
    finally:
        await nc.close()
    assert sessions == [{"n": i} for i in range(len(sids))]
    assert sorted(len(batch.reads) for batch in spy.batches) == [88, MAX_SESSION_BATCH]


async def test_a_missing_corrupt_or_bad_sid_fails_alone(start_replica, infra: Infra, redis_server: RedisServer, rdb: redis.Redis) -> None:  # noqa: F811
    replica = await start_replica(infra.nats_url, redis_server.url)
    good, missing, hashed, garbage, impossible = (new_sid() for _ in range(5))
    stored(rdb, good, {"user": "u-good"})
    rdb.hset(f"session:{hashed}", mapping={"user": "u-1"})
    rdb.set(f"session:{garbage}", b"\xc1not msgpack")
    nc = await nats.connect(infra.nats_url)
    try:
        spy = await spy_on(nc, replica.subjects.session_get_many)
        reads = SessionReads(nc, replica.subjects.session_get_many, timeout=5.0)
        calls = []
        for sid in (good, missing, hashed, garbage, "", impossible + " x", good):
            with structlog.contextvars.bound_contextvars(request_id=f"rid-{sid[:8]}"):  # as the gateway's middleware binds it
                calls.append(asyncio.ensure_future(reads.get(sid)))
        outcomes = await asyncio.gather(*calls, return_exceptions=True)
        await nc.flush()
        assert len(spy.batches) == 1 and len(spy.batches[0].reads) == 7
    finally:
        await nc.close()

    assert outcomes[0] == outcomes[6] == {"user": "u-good"}
    assert outcomes[1:4] == [None, None, None]
    assert isinstance(outcomes[4], ServiceError) and outcomes[4].code == "bad_request" and "sid" in outcomes[4].message
    assert outcomes[5] is None  # a sid that is never stored has no session
    assert replica.metric("session_corrupt_total") == 2
    for sid in (hashed, garbage):  # each read's log line carries the request id of the request it serves
        assert (await replica.wait_for_event("session_corrupt", sid=sid[:6] + "…"))["request_id"] == f"rid-{sid[:8]}"
    assert rdb.type(f"session:{hashed}") == b"hash" and rdb.get(f"session:{garbage}") == b"\xc1not msgpack"  # left for an operator
    assert replica.metric("session_batch_reads_total", outcome="bad_request") == 1
    assert replica.metric("session_batch_reads_total", outcome="ok") == 6


async def test_many_concurrent_requests_with_distinct_sessions_each_see_their_own_user(make_system: SystemFactory, redis_server: RedisServer, rdb: redis.Redis) -> None:  # noqa: F811
    system = make_system(redis_url=redis_server.url, start=("session", "gateway"))
    clients = [browser(system.url) for _ in range(30)]
    try:
        for i, client in enumerate(clients):
            await login(client, f"user{i}@example.com", f"User {i}")
        sids = [next(c.value for c in client.cookie_jar if c.key == "session") for client in clients]
        for sid in sids:
            rdb.expire(f"session:{sid}", SHORT_TTL)
        rdb.config_resetstat()

        async def me(client: aiohttp.ClientSession) -> tuple[int, dict[str, Any]]:
            async with client.get("/api/me") as response:
                return response.status, await response.json()

        answers = await asyncio.gather(*(me(client) for client in clients for _ in range(3)))
    finally:
        for client in clients:
            await client.close()

    assert [(status, body["user"]["email"]) for status, body in answers] == [(200, f"user{i}@example.com") for i in range(len(clients)) for _ in range(3)]
    assert commandstats(rdb) == {"getex": 3 * len(clients)}
    assert all(rdb.ttl(f"session:{sid}") > SHORT_TTL for sid in sids)

    # The canonical request line stays one per request, each with its own request id.
    def me_requests() -> list[dict[str, Any]]:
        lines = [json.loads(line) for line in list(system.services["gateway"].lines) if '"request"' in line]
        return [line for line in lines if line.get("event") == "request" and line.get("path") == "/api/me"]

    await asyncio.to_thread(wait_until, lambda: len(me_requests()) >= 3 * len(clients), 10, "a request line per /api/me")  # lines are held up to 50 ms
    me_lines = me_requests()
    assert len(me_lines) == 3 * len(clients) and len({line["request_id"] for line in me_lines}) == len(me_lines)


async def test_redis_killed_before_a_batch_degrades_once_and_the_fallback_answers(start_replica, infra: Infra, redis_server: RedisServer, rdb: redis.Redis) -> None:  # noqa: F811
    replica = await start_replica(infra.nats_url, redis_server.url)
    before = [new_sid() for _ in range(5)]
    for sid in before:
        stored(rdb, sid, {"user": sid})
    nc = await nats.connect(infra.nats_url)
    try:
        reads = SessionReads(nc, replica.subjects.session_get_many, timeout=5.0)
        assert await asyncio.gather(*(reads.get(sid) for sid in before)) == [{"user": sid} for sid in before]
        redis_server.stop()  # the replica still believes Redis is up: the next pipeline fails

        # Sessions only Redis held cannot be read, but every read is answered (no error), from the fallback.
        assert await asyncio.gather(*(reads.get(sid) for sid in before)) == [None] * len(before)
        degraded = await replica.wait_for_event("store_degraded")
        assert degraded["store"] == "jetstream"

        during = [new_sid() for _ in range(5)]
        for sid in during:
            await replica.call(nc, "set", sid=sid, data={"user": sid})
        assert await asyncio.gather(*(reads.get(sid) for sid in during)) == [{"user": sid} for sid in during]

        await asyncio.to_thread(redis_server.start)
        recovered = await replica.wait_for_event("store_recovered")
        assert recovered["written"] == len(during)
        client = redis.Redis.from_url(redis_server.url)
        try:
            for sid in during:
                client.expire(f"session:{sid}", SHORT_TTL)
            await replica.wait_for_event("store_settled")
            assert await asyncio.gather(*(reads.get(sid) for sid in during)) == [{"user": sid} for sid in during]
            assert all(client.ttl(f"session:{sid}") > SHORT_TTL for sid in during)  # read from Redis again, expiry slid
        finally:
            client.close()
        assert replica.metric("session_batch_reads_total", outcome="ok") == 4 * 5
    finally:
        await nc.close()


async def test_a_batch_that_finds_redis_read_only_is_read_through_without_sliding(make_system: SystemFactory, tmp_path: Path) -> None:
    (tmp_path / "master").mkdir()
    (tmp_path / "replica").mkdir()
    master = redis_with("--dir", str(tmp_path / "master")).start()
    redis_server = redis_with("--dir", str(tmp_path / "replica")).start()
    rdb = redis.Redis.from_url(redis_server.url)  # noqa: F811
    try:
        system = make_system(redis_url=redis_server.url, start=("session", "gateway"))
        sids = [new_sid() for _ in range(6)]
        primary = redis.Redis.from_url(master.url)
        for i, sid in enumerate(sids):
            primary.set(f"session:{sid}", msgpack.packb({"user": {"uid": f"u-{i}"}, "conversation_id": None}), ex=LIFETIME)
        primary.close()
        rdb.replicaof("127.0.0.1", str(master.port))  # a failover left the service on a replica: GETEX is refused
        wait_until(lambda: all(rdb.exists(f"session:{sid}") for sid in sids), what="the replica to sync")

        async def me(sid: str) -> tuple[int, Any]:
            async with browser(system.url) as client:
                client.cookie_jar.update_cookies({"session": sid})
                async with client.get("/api/me") as response:
                    return response.status, (await response.json())["user"]["uid"]

        assert await asyncio.gather(*(me(sid) for sid in sids)) == [(200, f"u-{i}") for i in range(len(sids))]
        degraded = await wait_event(system.services["session"], "store_degraded")
        assert degraded["redis_readable"] is True and "READONLY" in degraded["error"]
        assert len(system.services["session"].events("store_degraded")) == 1
    finally:
        rdb.close()
        redis_server.stop()
        master.stop()


@pytest.mark.parametrize(
    ("payload", "named"),
    [(b"\x81\xa5reads\x90", "$.reads"), (b"\x81\xa5reads\x91\x81\xa3sid\x05", "$.reads[0].sid"), (b"\xc1", "not valid MessagePack")],
    ids=["empty", "sid-not-a-string", "not-msgpack"],
)
async def test_a_malformed_batch_gets_a_bad_request_naming_the_field(start_session, infra: Infra, payload: bytes, named: str) -> None:  # noqa: F811
    replica = await start_session()
    nc = await nats.connect(infra.nats_url)
    try:
        reply = msgpack.unpackb((await nc.request(replica.subjects.session_get_many, payload, timeout=5.0)).data)
        assert reply["error"]["code"] == "bad_request"
        assert named in reply["error"]["message"]
        assert (await replica.call(nc, "ping"))["ok"] is True
    finally:
        await nc.close()
