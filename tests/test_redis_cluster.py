"""The session service on a real Redis Cluster (3 masters + 3 replicas on loopback): every key layout and script works there.

One cluster serves the module; the failover test runs last, since it leaves a replica
promoted in place of the killed master.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator

import msgpack
import nats
import pytest
import redis

from services.gateway.clients import Limiter, SessionReads, Window
from services.session.config import RedisTarget, redis_target
from services.session.history_redis import HistoryRedis
from services.session.keys import EXAMPLES_SOURCES_KEY, connections_key, examples_key, guard_key, index_key, limit_key, list_key, titles_key
from services.session.redis_store import create_client
from shared.bus import request
from shared.contracts import (
    ConnectionDelete,
    ConnectionDeleted,
    ConnectionList,
    ConnectionPut,
    ConnectionRecord,
    ConnectionRecords,
    ConnectionRef,
    ConnectionScan,
    ConnectionTls,
    ExampleList,
    ExamplePropose,
    ExampleRef,
    ExampleReply,
    ExampleSimilar,
    ExamplesReply,
)
from shared.errors import ServiceError
from tests.client import browser
from tests.clusters import RedisClusterServers
from tests.conftest import Infra, SystemFactory
from tests.harness import ROOT, eventually, wait_until
from tests.test_session_flask_interop import flask_app
from tests.test_session_service import new_sid
from tests.test_session_service import start_replica as start_replica  # noqa: F401 (fixture)

LIFETIME = 1000


@pytest.fixture(scope="module")
def cluster() -> Iterator[RedisClusterServers]:
    servers = RedisClusterServers().start()
    yield servers
    servers.cleanup()


@pytest.fixture
def crdb(cluster: RedisClusterServers) -> Iterator[redis.RedisCluster]:
    client = cluster.client()
    yield client
    client.close()


def commandstats(cluster: RedisClusterServers, command: str) -> int:
    """How many times `command` ran, summed over every master of the cluster."""
    return sum(node.client().info("commandstats").get(f"cmdstat_{command}", {}).get("calls", 0) for node in cluster.masters())


def test_a_cluster_url_or_redis_cluster_picks_the_cluster_client() -> None:
    assert redis_target({"REDIS_URL": "redis+cluster://10.0.0.1:7000/0"}) == RedisTarget("redis://10.0.0.1:7000/0", "REDIS_URL", cluster=True)
    assert redis_target({"REDIS_URL": "redis://10.0.0.1:7000", "REDIS_CLUSTER": "1"}) == RedisTarget("redis://10.0.0.1:7000", "REDIS_URL", cluster=True)
    assert redis_target({"REDIS_URL": "rediss+cluster://h.example:7000"}) == RedisTarget("rediss://h.example:7000", "REDIS_URL", cluster=True)
    assert not redis_target({"REDIS_URL": "redis://10.0.0.1:7000"}).cluster  # type: ignore[union-attr]


def test_every_users_keys_share_one_slot_and_a_guard_shares_its_keys_slot(crdb: redis.RedisCluster) -> None:
    uid = "google-oauth2|1234"
    slots = {crdb.keyslot(k) for k in (list_key(uid, "c1"), list_key(uid, "c2"), index_key(uid), titles_key(uid), limit_key(f"quota:{uid}"))}
    assert len(slots) == 1
    session_key = f"session:{new_sid()}"
    assert crdb.keyslot(guard_key(session_key)) == crdb.keyslot(session_key)
    assert crdb.keyslot(guard_key(list_key(uid, "c1"))) == crdb.keyslot(list_key(uid, "c1"))


async def test_sessions_rotation_and_coalesced_reads_on_the_cluster(start_replica, infra: Infra, cluster: RedisClusterServers, crdb) -> None:  # noqa: F811
    replica = await start_replica(infra.nats_url, cluster.url, SESSION_LIFETIME=str(LIFETIME))
    assert replica.service.events("session_store")[0]["target"].startswith("127.0.0.1:")
    nc = await nats.connect(infra.nats_url)
    try:
        sid, new = new_sid(), new_sid()
        await replica.call(nc, "set", sid=sid, data={"user": {"uid": "u-1"}, "n": 1})
        assert msgpack.unpackb(crdb.get(f"session:{sid}")) == {"user": {"uid": "u-1"}, "n": 1}  # Flask-Session's exact name
        await replica.call(nc, "patch", sid=sid, set={"n": 2})
        assert (await replica.call(nc, "get", sid=sid))["session"] == {"user": {"uid": "u-1"}, "n": 2}
        # Login rotation: the two sids hash to different slots, and the old one is still gone.
        await replica.call(nc, "set", sid=new, data={"user": {"uid": "u-1"}}, replace_sid=sid)
        assert crdb.exists(f"session:{sid}") == 0 and 0 < crdb.ttl(f"session:{new}") <= LIFETIME

        sids = [new_sid() for _ in range(30)]
        for i, s in enumerate(sids):
            crdb.set(f"session:{s}", msgpack.packb({"n": i}), ex=LIFETIME)
        assert len({cluster.master_of(f"session:{s}").port for s in sids}) == 3  # spread over every master
        reads = SessionReads(nc, replica.subjects.session_get_many, timeout=5.0)
        await reads.get(sids[0])
        for node in cluster.masters():
            node.client().config_resetstat()
        sessions = await asyncio.gather(*(reads.get(s) for s in sids))
        assert sessions == [{"n": i} for i in range(len(sids))]
        assert commandstats(cluster, "getex") == len(sids)  # still one command per session, grouped per node
        await replica.call(nc, "delete", sid=new)
        assert crdb.exists(f"session:{new}") == 0
    finally:
        await nc.close()


async def test_flask_session_and_the_gateway_share_sessions_on_the_cluster(make_system: SystemFactory, cluster: RedisClusterServers, crdb) -> None:
    system = make_system(redis_url=cluster.url, start=("session", "gateway"))
    app = flask_app(cluster.seed_url, use_signer=False)
    # Flask-Session 0.8 takes only a redis.Redis in SESSION_REDIS; on a cluster the app hands its interface the cluster client.
    app.session_interface.client = crdb  # type: ignore[attr-defined]
    legacy = app.test_client()
    assert legacy.post("/login", json={"uid": "u-cluster", "email": "c@example.com", "name": "Cy"}).status_code == 200
    cookie = legacy.get_cookie("session")
    assert cookie is not None and crdb.exists(f"session:{cookie.value}") == 1

    async with browser(system.url) as client:
        client.cookie_jar.update_cookies({"session": cookie.value})
        async with client.get("/api/me") as me:
            assert me.status == 200, await me.text()
            assert (await me.json())["user"]["uid"] == "u-cluster"
        async with client.post("/api/conversations") as created:  # a field patch by the gateway, read back by Flask
            assert created.status == 200, await created.text()
            conversation_id = (await created.json())["conversation_id"]
    again = legacy.get("/me")
    assert again.status_code == 200 and again.get_json()["conversation_id"] == conversation_id


async def test_history_scripts_run_on_the_cluster(cluster: RedisClusterServers, crdb) -> None:
    store = HistoryRedis(create_client(RedisTarget(cluster.seed_url, "REDIS_URL", cluster=True)), lifetime_s=3600)
    uid, cid = f"u-{uuid.uuid4().hex[:8]}", uuid.uuid4().hex
    try:
        held, _ = await store.append(uid, cid, [b"m0", b"m1"], max_messages=10, replace_last_of=None, title="First")
        assert held == 2
        loaded = await store.load(uid, cid, max_bytes=10_000, min_messages=1)
        assert loaded is not None and loaded.messages == [b"m0", b"m1"] and loaded.title == "First"
        assert (await store.patch(uid, cid, "Renamed"))[0]
        items, _ = await store.list(uid, limit=10, after=None)
        assert [(i[0], i[2]) for i in items] == [(cid, "Renamed")]
        assert await store.write_back(uid, cid, version=1, epoch="e", replaces=True, deleted=False, title_mode="set", title="Back", messages=[b"n0"])
        assert crdb.lrange(list_key(uid, cid), 0, -1) == [b"n0"] and crdb.hget(titles_key(uid), cid) == b"Back"
        assert await store.delete(uid, cid)
        assert crdb.exists(list_key(uid, cid)) == 0 and crdb.zscore(index_key(uid), cid) is None
    finally:
        await store.close()


async def test_quota_and_login_limits_are_atomic_on_the_cluster(start_replica, infra: Infra, cluster: RedisClusterServers, crdb) -> None:  # noqa: F811
    replica = await start_replica(infra.nats_url, cluster.url)
    nc = await nats.connect(infra.nats_url)
    try:
        limiter = Limiter(nc, replica.subjects, timeout=5.0)
        uid = uuid.uuid4().hex
        results = await asyncio.gather(*(limiter.hit(f"quota:{uid}", [Window("minute", 60, 10), Window("day", 86400, 100)]) for _ in range(40)))
        assert sum(r.allowed for r in results) == 10 and not any(r.local for r in results)
        assert {k.decode(): int(v.split(b":")[1]) for k, v in crdb.hgetall(limit_key(f"quota:{uid}")).items()} == {"minute": 10, "day": 10}
        logins = [await limiter.hit("login:127.0.0.9", [Window("login", 60, 2)]) for _ in range(3)]
        assert [r.allowed for r in logins] == [True, True, False]
    finally:
        await nc.close()


def test_the_migration_moves_history_and_quota_keys_once(cluster: RedisClusterServers, crdb) -> None:
    uid, cid = f"u-{uuid.uuid4().hex[:8]}", uuid.uuid4().hex
    crdb.rpush(f"conversation:{uid}:{cid}", b"m0", b"m1")
    crdb.zadd(f"conversations:{uid}", {cid: 1700000000000})
    crdb.hset(f"conversation_titles:{uid}", cid, "Old")
    for key in (f"conversation:{uid}:{cid}", f"conversations:{uid}", f"conversation_titles:{uid}"):
        crdb.expire(key, 3600)
    now = int(crdb.time()[0])
    crdb.set(f"limit:quota:{uid}:minute:{now // 60}", 7, ex=60)
    # The service already wrote the day window at its new name: that one is kept.
    crdb.hset(limit_key(f"quota:{uid}"), "day", f"{now // 86400}:9")
    crdb.set(f"limit:quota:{uid}:day:{now // 86400}", 3, ex=600)

    env = {**os.environ, "REDIS_URL": cluster.url}
    first = subprocess.run([sys.executable, "-m", "services.session.admin", "migrate-keys"], env=env, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert first.returncode == 0, first.stderr

    assert crdb.lrange(list_key(uid, cid), 0, -1) == [b"m0", b"m1"] and 0 < crdb.ttl(list_key(uid, cid)) <= 3600
    assert crdb.zscore(index_key(uid), cid) == 1700000000000 and crdb.hget(titles_key(uid), cid) == b"Old"
    assert crdb.hgetall(limit_key(f"quota:{uid}")) == {b"minute": f"{now // 60}:7".encode(), b"day": f"{now // 86400}:9".encode()}
    assert not [k for k in crdb.scan_iter(match=f"*{uid}*") if b"{" not in k], "no key is left at its old name"

    again = subprocess.run([sys.executable, "-m", "services.session.admin", "migrate-keys"], env=env, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert again.returncode == 0 and '"conversation": 0' in again.stdout and '"limit": 0' in again.stdout
    assert crdb.lrange(list_key(uid, cid), 0, -1) == [b"m0", b"m1"]


def record(uid: str, rid: str, name: str) -> ConnectionRecord:
    return ConnectionRecord(rid, uid, name, "postgresql", "db.example.com", 5432, "app", "reader", ConnectionTls(), "15", "2026-01-01T00:00:00Z", "k1", b"sealed-" + rid.encode())


async def test_examples_propose_approve_use_and_delete_on_the_cluster(start_replica, infra: Infra, cluster: RedisClusterServers, crdb) -> None:  # noqa: F811
    replica = await start_replica(infra.nats_url, cluster.url)
    nc = await nats.connect(infra.nats_url)
    source = f"src-{uuid.uuid4().hex[:8]}"
    assert crdb.keyslot(examples_key(source)) == crdb.keyslot(EXAMPLES_SOURCES_KEY)

    async def call[R](op: str, payload: object, reply: type[R]) -> R:
        return await request(nc, replica.subjects.session_examples(op), payload, timeout=5.0, reply=reply)  # type: ignore[arg-type, type-var]

    try:
        question, sql = "how many orders were shipped last week", "SELECT count(*) FROM orders WHERE shipped_at > now() - interval '7 days'"
        proposed = (await call("propose", ExamplePropose(source, question, sql, author="u-1", approved=False), ExampleReply)).example
        assert proposed.status == "pending" and crdb.hexists(examples_key(source), proposed.id)
        assert crdb.sismember(EXAMPLES_SOURCES_KEY, source)  # written in the same MULTI, on one node
        assert (await call("similar", ExampleSimilar(source, "orders shipped last week"), ExamplesReply)).examples == []  # pending: not used yet
        approved = (await call("approve", ExampleRef(source, proposed.id, by="admin"), ExampleReply)).example
        assert approved.status == "approved" and approved.approved_by == "admin"
        used = (await call("similar", ExampleSimilar(source, "how many orders shipped last week"), ExamplesReply)).examples
        assert [e.sql for e in used] == [sql]
        listed = (await call("list", ExampleList(), ExamplesReply)).examples
        assert [e.id for e in listed if e.source == source] == [proposed.id]
        await call("delete", ExampleRef(source, proposed.id), dict)  # type: ignore[arg-type]
        assert not crdb.hexists(examples_key(source), proposed.id)
        assert (await call("list", ExampleList(source=source), ExamplesReply)).examples == []
    finally:
        await nc.close()


async def test_connections_create_list_scan_and_delete_on_the_cluster(start_replica, infra: Infra, cluster: RedisClusterServers, crdb) -> None:  # noqa: F811
    replica = await start_replica(infra.nats_url, cluster.url)
    nc = await nats.connect(infra.nats_url)
    run = uuid.uuid4().hex[:8]
    uids = [f"u-{run}-{i}" for i in range(12)]
    assert len({cluster.master_of(connections_key(uid)).port for uid in uids}) == 3  # the users' records lie on every master
    assert crdb.keyslot(connections_key(uids[0])) == crdb.keyslot(index_key(uids[0]))  # the user's one slot

    async def call[R](op: str, payload: object, reply: type[R]) -> R:
        return await request(nc, replica.subjects.session_connection(op), payload, timeout=5.0, reply=reply)  # type: ignore[arg-type, type-var]

    try:
        for uid in uids:
            await call("put", ConnectionPut(record(uid, "c1", "main"), create=True), dict)  # type: ignore[arg-type]
        await call("put", ConnectionPut(record(uids[0], "c2", "other"), create=True), dict)  # type: ignore[arg-type]
        with pytest.raises(ServiceError) as taken:  # the WATCH/MULTI check, on the user's node
            await call("put", ConnectionPut(record(uids[0], "c3", "main"), create=True), dict)  # type: ignore[arg-type]
        assert taken.value.code == "conflict" and crdb.hlen(connections_key(uids[0])) == 2
        listed = await call("list", ConnectionList(uids[0]), ConnectionRecords)
        assert [(r.id, r.name) for r in listed.records] == [("c1", "main"), ("c2", "other")]

        seen: list[tuple[str, str]] = []
        cursor, pages = "0", 0
        while cursor is not None:  # every primary, a page at a time
            page = await call("scan", ConnectionScan(cursor=cursor, count=5), ConnectionRecords)
            seen += [(r.owner, r.id) for r in page.records if r.owner.startswith(f"u-{run}-")]
            cursor, pages = page.cursor, pages + 1  # type: ignore[assignment]
        assert sorted(seen) == sorted([(uid, "c1") for uid in uids] + [(uids[0], "c2")]) and pages >= 3

        deleted = await call("delete", ConnectionDelete(ConnectionRef(uids[0], "c1")), ConnectionDeleted)
        assert deleted.deleted and crdb.hkeys(connections_key(uids[0])) == [b"c2"]
    finally:
        await nc.close()


def test_the_migration_moves_connections_and_examples_once(cluster: RedisClusterServers, crdb) -> None:
    uid, source = f"u-{uuid.uuid4().hex[:8]}", f"src-{uuid.uuid4().hex[:8]}"
    crdb.hset(f"connections:{uid}", mapping={"c1": b"old-1", "c2": b"old-2"})
    crdb.hset(connections_key(uid), "c2", b"new-2")  # written by the service since the deploy: it wins
    crdb.hset(f"examples:{source}", mapping={"e1": b"example-1"})
    crdb.sadd("examples:sources", source)

    env = {**os.environ, "REDIS_URL": cluster.url}
    first = subprocess.run([sys.executable, "-m", "services.session.admin", "migrate-keys"], env=env, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert first.returncode == 0, first.stderr
    assert crdb.hgetall(connections_key(uid)) == {b"c1": b"old-1", b"c2": b"new-2"}
    assert crdb.hgetall(examples_key(source)) == {b"e1": b"example-1"} and crdb.sismember(EXAMPLES_SOURCES_KEY, source)
    assert crdb.exists(f"connections:{uid}", f"examples:{source}", "examples:sources") == 0

    again = subprocess.run([sys.executable, "-m", "services.session.admin", "migrate-keys"], env=env, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert again.returncode == 0 and '"connections": 0' in again.stdout and '"examples": 0' in again.stdout
    assert crdb.hgetall(connections_key(uid)) == {b"c1": b"old-1", b"c2": b"new-2"}


async def test_a_killed_master_loses_no_session_and_the_quota_stays_atomic(start_replica, infra: Infra, cluster: RedisClusterServers) -> None:  # noqa: F811
    replica = await start_replica(infra.nats_url, cluster.url, SESSION_LIFETIME=str(LIFETIME))
    nc = await nats.connect(infra.nats_url)
    victim = cluster.master_of(f"session:{new_sid()}")
    written: dict[str, int] = {}
    try:
        flowing = asyncio.Event()

        async def writer(n: int) -> None:
            for i in range(40):
                sid = f"load-{n}-{i}-{uuid.uuid4().hex}"
                await replica.call(nc, "set", sid=sid, data={"n": i})
                written[sid] = i
                if len(written) >= 40:
                    flowing.set()

        load = [asyncio.create_task(writer(n)) for n in range(8)]
        await asyncio.wait_for(flowing.wait(), 60)  # kill under load, once writes are flowing
        victim.kill()
        await asyncio.gather(*load)  # every write was answered (Redis or the fallback)

        await asyncio.to_thread(wait_until, cluster.healthy, 30, "the failover")
        assert victim not in cluster.masters(), "a replica took over the killed master's slots"
        if replica.service.events("store_degraded"):
            await replica.wait_for_event("store_recovered", timeout=60)
        client = cluster.client()
        try:
            missing = [sid for sid, n in written.items() if client.get(f"session:{sid}") is None or msgpack.unpackb(client.get(f"session:{sid}")) != {"n": n}]
        finally:
            client.close()
        assert missing == [], f"{len(missing)} of {len(written)} sessions lost"

        limiter = Limiter(nc, replica.subjects, timeout=5.0)
        key = f"quota:{uuid.uuid4().hex}"
        windows = [Window("minute", 60, 10)]

        async def counting_on_redis() -> bool:
            # The replica may notice the failover only now (a MOVED or a lost node): wait until it
            # reads this very key's slot on Redis again (consume=False counts nothing).
            return not (await limiter.hit(key, windows, consume=False)).local

        await eventually(counting_on_redis, "the replica to count on Redis again", timeout=60)
        results = await asyncio.gather(*(limiter.hit(key, windows) for _ in range(40)))
        assert sum(r.allowed for r in results) == 10 and not any(r.local for r in results)
    finally:
        await nc.close()
