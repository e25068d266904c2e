"""The session service over NATS against real Redis and NATS servers: bytes, TTLs, commands, errors.

Every test talks to a session service on a subject prefix of its own and checks the outcome in
Redis itself. Tests of what a request does run the service in this process (its own factory,
`create_service`); tests of replicas, restarts, outages and log lines start
`python -m services.session` processes.
"""

from __future__ import annotations

import asyncio
import json
import re
import urllib.request
import uuid
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any

import msgspec
import nats
import pytest
import redis
from nats.aio.client import Client as NATS
from prometheus_client import REGISTRY

from shared.bus import request
from shared.contracts import Subjects
from shared.errors import ServiceError
from tests.conftest import InProcessFactory
from tests.harness import NatsServer, RedisServer, Service, free_port, service_env
from tests.metrics import sample_value

LIFETIME = 1000
# Sent by redis-py itself (connection set-up, health checks) or by this test's own client.
_ADMIN_COMMANDS = {"info", "config|resetstat", "ping", "hello", "client|setinfo", "client|setname", "select", "script|load"}


def new_sid() -> str:
    return uuid.uuid4().hex + "-_x"


@dataclass
class Caller:
    """The subjects of one session service, and a call on them."""

    subjects: Subjects

    async def call(self, nc: NATS, op: str, **payload: Any) -> dict[str, Any]:
        return await request(nc, getattr(self.subjects, f"session_{op}"), payload, timeout=5.0)


@dataclass
class Replica(Caller):
    """One running session service process."""

    service: Service
    ops_port: int

    async def wait_for_event(self, event: str, timeout: float = 30.0, **fields: Any) -> dict[str, Any]:
        def matches(line: str) -> bool:
            if f'"{event}"' not in line:
                return False
            data = json.loads(line)
            return data.get("event") == event and all(data.get(k) == v for k, v in fields.items())

        line = await asyncio.to_thread(self.service.wait_for_line, matches, timeout)
        return json.loads(line)

    def metric(self, name: str, **labels: str) -> float:
        body = urllib.request.urlopen(f"http://127.0.0.1:{self.ops_port}/metrics", timeout=5).read().decode()
        value = sample_value(body, name, **labels)
        return 0.0 if value is None else value  # a labelled counter appears at its first increment


@pytest.fixture
def start_replica() -> Iterator[Callable[..., Any]]:
    """Start session replicas; each must exit 0 on SIGTERM at the end of the test."""
    started: list[Service] = []

    async def start(nats_url: str, redis_url: str | None = None, *, prefix: str | None = None, bucket: str | None = None, **extra: str) -> Replica:
        prefix = prefix or f"s{uuid.uuid4().hex[:10]}"
        ops_port = free_port()
        env = {"NATS_URL": nats_url, "NATS_SUBJECT_PREFIX": prefix, "SESSION_KV_BUCKET": bucket or f"sessions_{prefix}", "OPS_PORT": str(ops_port)}
        if redis_url:
            env["REDIS_URL"] = redis_url
        env.update(extra)
        service = Service("session", service_env(**env))
        started.append(service)
        await asyncio.to_thread(service.start)
        return Replica(Subjects(prefix), service, ops_port)

    yield start
    codes = [service.stop() for service in started]
    assert all(code == 0 for code in codes), f"session replicas exited with {codes}:\n" + "\n".join(started[0].lines[-20:])


@dataclass
class InProcessReplica(Caller):
    """A session service running in this test's process; its metrics are in this process's registry."""

    def metric(self, name: str, **labels: str) -> float:
        return REGISTRY.get_sample_value(name, labels) or 0.0


@pytest.fixture
def start_session(start_inprocess: InProcessFactory, redis_server: RedisServer) -> Callable[..., Awaitable[InProcessReplica]]:
    """Start a session service in this process on the test's own Redis (stopped at the end of the test)."""

    async def start(**extra: str) -> InProcessReplica:
        return InProcessReplica((await start_inprocess(("session",), REDIS_URL=redis_server.url, **extra)).subjects)

    return start


@pytest.fixture
def rdb(redis_server: RedisServer) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_server.url)
    yield client
    client.close()


def commandstats(client: redis.Redis) -> dict[str, int]:
    stats = client.info("commandstats")
    return {name.removeprefix("cmdstat_"): int(value["calls"]) for name, value in stats.items() if name.removeprefix("cmdstat_") not in _ADMIN_COMMANDS}


# --- what lands in Redis ------------------------------------------------------------------


async def test_set_stores_a_plain_msgpack_map_with_the_session_lifetime(start_session, rdb, nc) -> None:
    replica = await start_session(SESSION_LIFETIME=str(LIFETIME))
    sid = new_sid()
    data = {"_permanent": True, "user": {"uid": "u-1", "email": "a@example.com", "roles": [], "prefs": {}}, "n": 3, "ratio": 0.5, "raw": b"\x00\xff"}

    assert await replica.call(nc, "set", sid=sid, data=data) == {"ok": True}

    raw = rdb.get(f"session:{sid}")
    assert raw is not None
    assert msgspec.msgpack.decode(raw) == data  # what Flask-Session 0.8 decodes with
    assert 0 < rdb.ttl(f"session:{sid}") <= LIFETIME
    assert (await replica.call(nc, "get", sid=sid))["session"] == data


async def test_get_slides_the_expiry(start_session, rdb, nc) -> None:
    replica = await start_session(SESSION_LIFETIME=str(LIFETIME))
    sid = new_sid()
    await replica.call(nc, "set", sid=sid, data={"user": "u-1"})
    rdb.expire(f"session:{sid}", 50)

    assert (await replica.call(nc, "get", sid=sid))["session"] == {"user": "u-1"}
    assert rdb.ttl(f"session:{sid}") > 50


async def test_key_prefix_is_configurable(start_session, rdb, nc) -> None:
    replica = await start_session(SESSION_KEY_PREFIX="app1:sess:")
    sid = new_sid()
    await replica.call(nc, "set", sid=sid, data={"a": 1})
    assert msgspec.msgpack.decode(rdb.get(f"app1:sess:{sid}")) == {"a": 1}


async def test_patch_keeps_untouched_fields_byte_for_byte(start_session, rdb, nc) -> None:
    replica = await start_session(SESSION_LIFETIME=str(LIFETIME))
    sid = new_sid()
    # Written the way Flask-Session writes it, with types a Lua cmsgpack round trip would change.
    original = {"user": {"uid": "u-1", "roles": [], "prefs": {}}, "f": 1.0, "big": 2**63 - 1, "raw": b"\x00\xff", "gone": 1}
    rdb.set(f"session:{sid}", msgspec.msgpack.encode(original), ex=50)

    reply = await replica.call(nc, "patch", sid=sid, set={"conversation_id": "c-1", "nested": {"empty": {}}}, unset=["gone"])

    expected = {k: v for k, v in original.items() if k != "gone"} | {"conversation_id": "c-1", "nested": {"empty": {}}}
    assert reply["session"] == expected
    raw = rdb.get(f"session:{sid}")
    assert msgspec.msgpack.decode(raw) == expected
    assert isinstance(msgspec.msgpack.decode(raw)["f"], float)
    assert msgspec.msgpack.encode(original["user"]) in raw
    assert rdb.ttl(f"session:{sid}") > 50


async def test_patch_of_a_missing_session_creates_nothing(start_session, rdb, nc) -> None:
    replica = await start_session()
    sid = new_sid()
    assert await replica.call(nc, "patch", sid=sid, set={"a": 1}) == {"session": None}
    assert rdb.exists(f"session:{sid}") == 0


async def test_login_rotation_deletes_the_old_sid(start_session, rdb, nc) -> None:
    replica = await start_session()
    old, new = new_sid(), new_sid()
    await replica.call(nc, "set", sid=old, data={"cart": 1})

    assert await replica.call(nc, "set", sid=new, data={"user": "u-1"}, replace_sid=old) == {"ok": True}

    assert rdb.exists(f"session:{old}") == 0
    assert msgspec.msgpack.decode(rdb.get(f"session:{new}")) == {"user": "u-1"}


async def test_delete_removes_the_key(start_session, rdb, nc) -> None:
    replica = await start_session()
    sid = new_sid()
    await replica.call(nc, "set", sid=sid, data={"user": "u-1"})

    assert await replica.call(nc, "delete", sid=sid) == {"deleted": True}
    assert rdb.exists(f"session:{sid}") == 0
    assert await replica.call(nc, "delete", sid=sid) == {"deleted": False}
    assert await replica.call(nc, "get", sid=sid) == {"session": None}


# --- one command per call -------------------------------------------------------------------


async def test_each_call_is_one_redis_command(start_session, rdb, nc) -> None:
    replica = await start_session()
    sids = [new_sid() for _ in range(10)]
    for sid in sids:  # warm the connection pool so connection set-up is not counted
        await replica.call(nc, "set", sid=sid, data={"user": "u-1"})
    n = len(sids)

    async def measure(op: str, payloads: list[dict[str, Any]], command: str) -> dict[str, int]:
        rdb.config_resetstat()
        before = replica.metric("session_redis_commands_total", command=command)
        for payload in payloads:
            await replica.call(nc, op, **payload)
        after = replica.metric("session_redis_commands_total", command=command)
        assert after - before == len(payloads), f"/metrics counted {after - before} for {len(payloads)} {op} calls"
        return commandstats(rdb)

    assert await measure("get", [{"sid": s} for s in sids], "getex") == {"getex": n}
    assert await measure("set", [{"sid": s, "data": {"user": "u-2"}} for s in sids], "set") == {"set": n}
    # GET and SET run inside the one EVALSHA; Redis counts them in commandstats too.
    assert await measure("patch", [{"sid": s, "set": {"c": 1}, "unset": ["user"]} for s in sids], "evalsha") == {"evalsha": n, "get": n, "set": n}
    rotated = [new_sid() for _ in sids]
    rotations = [{"sid": r, "data": {"u": 1}, "replace_sid": s} for r, s in zip(rotated, sids, strict=True)]
    assert await measure("set", rotations, "evalsha") == {"evalsha": n, "set": n, "del": n}
    assert await measure("delete", [{"sid": r} for r in rotated], "del") == {"del": n}


# --- bad data and bad requests ------------------------------------------------------------


async def test_corrupt_bytes_are_no_session_and_are_logged(start_replica, infra, redis_server, rdb, nc) -> None:
    replica = await start_replica(infra.nats_url, redis_server.url)
    for garbage in [b"\xc1not msgpack", b"\x92\x01\x02", b"\x81\xa1a", b'{"user": "json"}']:
        sid = new_sid()
        rdb.set(f"session:{sid}", garbage)

        assert await replica.call(nc, "get", sid=sid) == {"session": None}
        assert await replica.call(nc, "patch", sid=sid, set={"a": 1}) == {"session": None}
        assert rdb.get(f"session:{sid}") == garbage  # left for an operator to inspect, not overwritten
        event = await replica.wait_for_event("session_corrupt", sid=sid[:6] + "…")
        assert event["level"] == "warning"

    # A well-formed map holding invalid UTF-8, which msgspec (and so Flask-Session) rejects too.
    sid = new_sid()
    rdb.set(f"session:{sid}", b"\x81\xa1k\xa2\xff\xfe")
    assert await replica.call(nc, "get", sid=sid) == {"session": None}
    assert await replica.call(nc, "patch", sid=sid, set={"a": 1}) == {"session": None}

    assert (await replica.call(nc, "ping"))["ok"] is True
    assert replica.metric("session_corrupt_total") >= 10


@pytest.mark.parametrize(
    ("op", "payload", "message"),
    [
        ("get", {}, "invalid SessionGet: Object missing required field `sid`"),
        ("get", {"sid": 12}, "invalid SessionGet: Expected `str`, got `int` - at `$.sid`"),
        ("get", {"sid": ""}, "invalid SessionGet: Expected `str` of length >= 1 - at `$.sid`"),
        ("set", {"sid": "abc", "data": [1, 2]}, "invalid SessionSet: Expected `object`, got `array` - at `$.data`"),
        ("set", {"sid": "abc"}, "invalid SessionSet: Object missing required field `data`"),
        ("set", {"sid": "a b", "data": {}}, "- at `$.sid`"),
        ("set", {"sid": "abc", "data": {1: 2}}, "invalid SessionSet: Expected `str`, got `int` - at `key` in `$.data`"),
        ("set", {"sid": "abc", "data": {}, "replace_sid": 5}, "invalid SessionSet: Expected `str | null`, got `int` - at `$.replace_sid`"),
        ("patch", {"sid": "abc", "set": [1]}, "invalid SessionPatch: Expected `object`, got `array` - at `$.set`"),
        ("patch", {"sid": "abc", "unset": "user"}, "invalid SessionPatch: Expected `array`, got `str` - at `$.unset`"),
        ("patch", {"sid": "abc", "unset": ["a", 1]}, "invalid SessionPatch: Expected `str`, got `int` - at `$.unset[1]`"),
        ("patch", {"sid": "abc", "set": {"a": 1}, "unset": ["a"]}, "fields both set and unset: a"),
        ("delete", {"sid": None}, "invalid SessionDelete: Expected `str`, got `None` - at `$.sid`"),
    ],
)
async def test_bad_requests_get_a_clear_bad_request_error(start_session, nc, op: str, payload: dict[str, Any], message: str) -> None:
    replica = await start_session()
    with pytest.raises(ServiceError) as caught:
        await replica.call(nc, op, **payload)
    assert caught.value.code == "bad_request"
    assert message in caught.value.message
    assert (await replica.call(nc, "ping"))["ok"] is True


async def test_an_impossible_sid_reads_as_no_session(start_session, nc) -> None:
    replica = await start_session()
    assert await replica.call(nc, "get", sid="not a sid!") == {"session": None}
    assert await replica.call(nc, "delete", sid="../../etc") == {"deleted": False}


# --- concurrency --------------------------------------------------------------------------


async def test_concurrent_patches_of_different_fields_all_survive(start_replica, infra, redis_server, rdb, nc) -> None:
    prefix = f"s{uuid.uuid4().hex[:10]}"
    # Two replicas in one queue group, so the patches really race inside Redis.
    replicas = [await start_replica(infra.nats_url, redis_server.url, prefix=prefix) for _ in range(2)]
    sids = [new_sid() for _ in range(50)]
    for sid in sids:
        await replicas[0].call(nc, "set", sid=sid, data={"user": {"uid": sid}})

    pairs = []
    for sid in sids:
        pairs.append(replicas[0].call(nc, "patch", sid=sid, set={"conversation_id": f"c-{sid}"}))
        pairs.append(replicas[0].call(nc, "patch", sid=sid, set={"theme": "dark"}, unset=["missing"]))
    shared = new_sid()
    await replicas[0].call(nc, "set", sid=shared, data={})
    many = [replicas[0].call(nc, "patch", sid=shared, set={f"f{i}": i}) for i in range(100)]
    await asyncio.gather(*pairs, *many)

    for sid in sids:
        assert msgspec.msgpack.decode(rdb.get(f"session:{sid}")) == {"user": {"uid": sid}, "conversation_id": f"c-{sid}", "theme": "dark"}
    assert msgspec.msgpack.decode(rdb.get(f"session:{shared}")) == {f"f{i}": i for i in range(100)}


# --- without Redis ------------------------------------------------------------------------


async def test_without_a_redis_url_sessions_live_in_jetstream_shared_by_replicas(start_replica, infra, nc) -> None:
    bucket = f"sessions_{uuid.uuid4().hex[:10]}"
    a = await start_replica(infra.nats_url, None, bucket=bucket)
    b = await start_replica(infra.nats_url, None, bucket=bucket)
    event = await a.wait_for_event("session_store_fallback")
    assert event["level"] == "warning" and event["store"] == "jetstream"
    assert await a.call(nc, "ping") == {"ok": True, "store": "jetstream", "degraded": False}

    sid, old = new_sid(), new_sid()
    await a.call(nc, "set", sid=old, data={"cart": 1})
    await a.call(nc, "set", sid=sid, data={"user": {"uid": "u-1"}}, replace_sid=old)
    assert (await b.call(nc, "get", sid=sid))["session"] == {"user": {"uid": "u-1"}}
    assert (await b.call(nc, "get", sid=old))["session"] is None
    assert (await b.call(nc, "patch", sid=sid, set={"c": 2}))["session"] == {"user": {"uid": "u-1"}, "c": 2}
    assert (await a.call(nc, "get", sid=sid))["session"] == {"user": {"uid": "u-1"}, "c": 2}
    assert await a.call(nc, "delete", sid=sid) == {"deleted": True}
    assert (await b.call(nc, "get", sid=sid))["session"] is None


async def test_without_jetstream_the_store_is_bounded_memory(start_replica) -> None:
    plain = NatsServer(jetstream=False).start()
    client = await nats.connect(plain.url)
    try:
        replica = await start_replica(plain.url, None, SESSION_MEMORY_MAX_ENTRIES="3")
        assert (await replica.wait_for_event("jetstream_unavailable"))["fallback"] == "memory"
        assert (await replica.wait_for_event("session_store_fallback"))["store"] == "memory"
        assert await replica.call(client, "ping") == {"ok": True, "store": "memory", "degraded": False}

        sids = [new_sid() for _ in range(5)]
        for i, sid in enumerate(sids):
            await replica.call(client, "set", sid=sid, data={"n": i})
        assert [(await replica.call(client, "get", sid=sid))["session"] for sid in sids] == [None, None, {"n": 2}, {"n": 3}, {"n": 4}]
        assert (await replica.call(client, "patch", sid=sids[4], set={"m": 1}))["session"] == {"n": 4, "m": 1}
        assert await replica.call(client, "delete", sid=sids[4]) == {"deleted": True}
        await replica.wait_for_event("memory_store_full")
        assert replica.service.stop() == 0
    finally:
        await client.close()
        plain.cleanup()


async def test_redis_unreachable_at_start_serves_from_fallback_then_writes_back(start_replica, infra, nc) -> None:
    redis_server = RedisServer()  # a free port with nothing listening yet
    replica = await start_replica(infra.nats_url, redis_server.url)
    degraded = await replica.wait_for_event("store_degraded")
    assert degraded["reason"] == "Redis unreachable at start" and degraded["store"] == "jetstream"
    assert (await replica.call(nc, "ping"))["store"] == "jetstream"
    assert replica.metric("session_store_degraded") == 1

    sid = new_sid()
    await replica.call(nc, "set", sid=sid, data={"user": "u-1"})
    await asyncio.to_thread(redis_server.start)
    try:
        recovered = await replica.wait_for_event("store_recovered")
        assert recovered["written"] == 1
        client = redis.Redis.from_url(redis_server.url)
        assert msgspec.msgpack.decode(client.get(f"session:{sid}")) == {"user": "u-1"}
        client.close()
        assert (await replica.call(nc, "ping"))["store"] == "redis"
        assert replica.metric("session_store_degraded") == 0
    finally:
        redis_server.stop()


def test_service_ready_line_names_the_store_without_the_password(infra) -> None:
    prefix = f"s{uuid.uuid4().hex[:10]}"
    env = service_env(NATS_URL=infra.nats_url, NATS_SUBJECT_PREFIX=prefix, REDIS_URL="redis://user:hunter2@127.0.0.1:1/3", OPS_PORT="0", SESSION_KV_BUCKET=f"sessions_{prefix}")
    service = Service("session", env).start()
    try:
        line = service.wait_for_line(lambda line: '"session_store"' in line)
        assert json.loads(line)["target"] == "127.0.0.1:1/3"
        assert json.loads(line)["tls"] is False
        assert not any("hunter2" in line for line in service.lines)
        assert re.search(r'"store":"jetstream"', service.wait_for_line(lambda line: '"service_ready"' in line))
    finally:
        assert service.stop() == 0
