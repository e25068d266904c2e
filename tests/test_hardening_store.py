"""Session store failures over HTTP against a real redis-server: each degrades or means "no session", never a 500.

Redis full (maxmemory with noeviction), another type under the key (WRONGTYPE), binary and
extension values written by the real Flask-Session, a `user` that is a number, and Redis
refusing the service (NOAUTH, WRONGPASS, NOPERM). Every test checks what is in Redis itself.
"""

from __future__ import annotations

import asyncio
import base64
import json
import urllib.request
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import flask
import msgpack
import msgspec
import nats
import pytest
import redis

from shared.bus import request
from shared.contracts import Subjects
from tests.client import browser, login
from tests.conftest import System, SystemFactory
from tests.harness import RedisServer, Service, wait_until
from tests.redis_busy import busy_redis
from tests.test_session_flask_interop import flask_app

PASSWORD = "pw-" + uuid.uuid4().hex


def new_sid() -> str:
    return uuid.uuid4().hex + "-_x"


def metric(service: Service, name: str) -> float:
    assert service.env is not None
    body = urllib.request.urlopen(f"http://127.0.0.1:{service.env['OPS_PORT']}/metrics", timeout=5).read().decode()
    for line in body.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    return 0.0


async def wait_event(service: Service, event: str, start: int = 0, timeout: float = 30.0) -> dict:
    line = await asyncio.to_thread(service.wait_for_line, lambda line: f'"{event}"' in line and json.loads(line).get("event") == event, timeout, start)
    return json.loads(line)


def sid_of(client) -> str:  # type: ignore[no-untyped-def]
    return next(c.value for c in client.cookie_jar if c.key == "session")


@pytest.fixture
def rdb(redis_server: RedisServer) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_server.url)
    yield client
    client.close()


def fill_until_oom(rdb: redis.Redis) -> list[str]:
    """Cap Redis a little above what it uses, with noeviction, and write junk until even a tiny write is refused."""
    rdb.config_set("maxmemory-policy", "noeviction")
    rdb.config_set("maxmemory", int(rdb.info("memory")["used_memory"]) + 512 * 1024)
    junk: list[str] = []
    for size in (16 * 1024, 64):  # big values first, then small ones so that no request buffer skews the count
        while True:
            key = f"junk:{len(junk)}"
            try:
                rdb.set(key, b"x" * size)
            except redis.exceptions.OutOfMemoryError:
                break
            junk.append(key)
    return junk


async def test_login_while_redis_is_full_uses_the_fallback_and_is_written_back_when_memory_frees(make_system: SystemFactory, redis_server: RedisServer, rdb: redis.Redis) -> None:
    system = make_system(redis_url=redis_server.url, start=("session", "gateway"))
    session = system.services["session"]
    async with browser(system.url) as before:
        await login(before, "early@example.com", "Early")
        early = sid_of(before)
        junk = fill_until_oom(rdb)
        with pytest.raises(redis.exceptions.OutOfMemoryError):
            rdb.set(f"session:{new_sid()}", b"\x80")  # Redis itself refuses writes now

        async with browser(system.url) as client:
            view = await login(client, "full@example.com", "Full")
            sid = sid_of(client)
            async with client.get("/api/me") as me:
                assert me.status == 200, await me.text()
                assert await me.json() == view
        degraded = await wait_event(session, "store_degraded")
        assert degraded["redis_readable"] is True and "OOM" in degraded["error"]
        assert rdb.exists(f"session:{sid}") == 0  # not in Redis yet: held by the fallback

        # A session already in Redis stays readable (Redis still serves reads) and patchable (in the fallback).
        async with before.get("/api/me") as me:
            assert me.status == 200, await me.text()
        async with before.post("/api/conversations") as created:
            assert created.status == 200, await created.text()
            conversation_id = (await created.json())["conversation_id"]
        assert msgspec.msgpack.decode(rdb.get(f"session:{early}"))["conversation_id"] != conversation_id

        # A logout meanwhile holds: the session still in Redis is not read back, nor patched back to life.
        async with before.post("/auth/logout") as out:
            assert out.status == 200
        async with browser(system.url) as after:
            after.cookie_jar.update_cookies({"session": early})
            async with after.get("/api/me") as me:
                assert me.status == 401
            async with after.post("/api/conversations") as created:
                assert created.status == 401
        nc = await nats.connect(system.nats_url)
        try:  # the session service itself, asked directly, does not patch it back to life either
            assert await request(nc, Subjects(system.prefix).session_patch, {"sid": early, "set": {"x": 1}}) == {"session": None}
        finally:
            await nc.close()
        assert rdb.exists(f"session:{early}") == 1  # Redis took no write yet

    mark = len(session.lines)
    rdb.delete(*junk)  # memory frees: the probe's write succeeds and the outage is written back
    recovered = await wait_event(session, "store_recovered", start=mark)
    assert recovered["written"] >= 1 and recovered["deleted"] >= 1
    stored = msgspec.msgpack.decode(rdb.get(f"session:{sid}"))
    assert stored["user"]["email"] == "full@example.com"
    assert rdb.exists(f"session:{early}") == 0  # the logout was written back too
    assert rdb.ttl(f"session:{sid}") > 0
    assert session.events("request_failed") == [] and not any("Traceback" in line for line in session.lines)


async def test_another_redis_type_under_the_key_is_no_session_and_counted(make_system: SystemFactory, redis_server: RedisServer, rdb: redis.Redis) -> None:
    system = make_system(redis_url=redis_server.url, start=("session", "gateway"))
    session = system.services["session"]
    sid = new_sid()
    rdb.hset(f"session:{sid}", mapping={"user": "u-1"})
    async with browser(system.url) as client:
        client.cookie_jar.update_cookies({"session": sid})
        async with client.get("/api/me") as me:
            assert me.status == 401, await me.text()
            assert (await me.json())["error"]["code"] == "unauthorized"
        async with client.post("/api/conversations") as created:
            assert created.status == 401, await created.text()
    event = await wait_event(session, "session_corrupt")
    assert "WRONGTYPE" in event["error"]
    assert metric(session, "session_corrupt_total") == 2
    assert rdb.type(f"session:{sid}") == b"hash" and rdb.hgetall(f"session:{sid}") == {b"user": b"u-1"}  # left as it was
    assert session.events("store_degraded") == []


async def test_binary_and_datetime_values_written_by_flask_session_have_a_json_form(make_system: SystemFactory, redis_server: RedisServer, rdb: redis.Redis) -> None:
    system = make_system(redis_url=redis_server.url, start=("session", "gateway"))
    app = flask_app(redis_server.url, use_signer=False)
    avatar = b"\x89PNG\r\n\x1a\n\x00\xff"
    seen = datetime(2024, 5, 1, 12, 30, tzinfo=UTC)

    @app.post("/binary")
    def binary() -> dict:
        flask.session["user"] = {**flask.session["user"], "avatar": avatar, "seen": seen}
        flask.session["conversation_id"] = b"\x01\x02"
        return {"ok": True}

    legacy = app.test_client()
    assert legacy.post("/login", json={"uid": "u-bin", "email": "b@example.com", "name": "Bin"}).status_code == 200
    assert legacy.post("/binary").status_code == 200
    sid = legacy.get_cookie("session").value
    raw = rdb.get(f"session:{sid}")
    stored = msgpack.unpackb(raw)
    assert stored["user"]["avatar"] == avatar  # MessagePack bin in Redis
    assert isinstance(stored["user"]["seen"], msgpack.Timestamp)  # the timestamp extension type

    async with browser(system.url) as client:
        client.cookie_jar.update_cookies({"session": sid})
        async with client.get("/api/me") as me:
            assert me.status == 200, await me.text()
            body = await me.json()
    assert body["user"]["avatar"] == {"$bytes": base64.b64encode(avatar).decode()}
    assert body["user"]["seen"] == {"$timestamp": "2024-05-01T12:30:00+00:00"}
    assert body["user"]["uid"] == "u-bin"
    assert body["conversation_id"] == {"$bytes": "AQI="}
    assert rdb.get(f"session:{sid}") == raw  # reading changed nothing


async def test_an_unknown_extension_type_has_a_json_form(make_system: SystemFactory, redis_server: RedisServer, rdb: redis.Redis) -> None:
    system = make_system(redis_url=redis_server.url, start=("session", "gateway"))
    sid = new_sid()
    rdb.set(f"session:{sid}", msgpack.packb({"user": {"uid": "u-ext", "tag": msgpack.ExtType(7, b"\x00\x01")}, "conversation_id": "c"}))
    async with browser(system.url) as client:
        client.cookie_jar.update_cookies({"session": sid})
        async with client.get("/api/me") as me:
            assert me.status == 200, await me.text()
            assert (await me.json())["user"]["tag"] == {"$ext": {"type": 7, "data": "AAE="}}


@pytest.mark.parametrize("user", [1, 0, True, [1, 2], 1.5, b"u-1", ""], ids=["one", "zero", "true", "list", "float", "bytes", "empty"])
async def test_a_user_that_is_neither_a_map_nor_a_string_id_is_no_session(system: System, user: object) -> None:
    assert system.redis_url is not None
    rdb = redis.Redis.from_url(system.redis_url)
    sid = new_sid()
    raw = msgpack.packb({"_permanent": True, "user": user, "conversation_id": "c-1"})
    try:
        rdb.set(f"session:{sid}", raw)
        async with browser(system.url) as client:
            client.cookie_jar.update_cookies({"session": sid})
            async with client.get("/api/me") as me:
                assert me.status == 401, await me.text()
                assert (await me.json())["error"]["code"] == "unauthorized"
            async with client.post("/api/conversations") as created:
                assert created.status == 401
        assert rdb.get(f"session:{sid}") == raw  # nothing was patched
    finally:
        rdb.delete(f"session:{sid}")
        rdb.close()


async def test_a_legacy_string_user_still_signs_in(system: System) -> None:
    assert system.redis_url is not None
    rdb = redis.Redis.from_url(system.redis_url)
    sid = new_sid()
    try:
        rdb.set(f"session:{sid}", msgpack.packb({"user": "u-legacy"}))
        async with browser(system.url) as client:
            client.cookie_jar.update_cookies({"session": sid})
            async with client.get("/api/me") as me:
                assert me.status == 200
                assert (await me.json())["user"]["uid"] == "u-legacy"
    finally:
        rdb.delete(f"session:{sid}")
        rdb.close()


def redis_with(*args: str) -> RedisServer:
    server = RedisServer()
    server.argv += list(args)
    return server


@pytest.mark.parametrize("credentials", ["", f"default:wrong-{uuid.uuid4().hex[:6]}@"], ids=["noauth", "wrongpass"])
async def test_redis_refusing_the_password_is_one_json_line_and_sessions_survive_on_the_fallback(make_system: SystemFactory, credentials: str) -> None:
    server = redis_with("--requirepass", PASSWORD).start()
    try:
        system = make_system(redis_url=f"redis://{credentials}127.0.0.1:{server.port}/0", start=("session", "gateway"))
        session = system.services["session"]
        refused = session.events("redis_refused")
        assert len(refused) == 1, session.lines
        assert refused[0]["cause"] == "authentication" and refused[0]["level"] == "error"
        assert "REDIS_URL" in refused[0]["hint"] and PASSWORD not in json.dumps(refused[0])
        assert all(line.startswith("{") for line in session.lines), session.lines  # every line JSON, no traceback

        # The chosen behaviour: stay up and ready, serving sessions from the fallback.
        async with browser(system.url) as client:
            await login(client, "locked@example.com", "Locked")
            sid = sid_of(client)
            async with client.get("/api/me") as me:
                assert me.status == 200
            async with client.get("/readyz") as ready:
                assert (await ready.json())["checks"]["session"] is True  # the session service answers: it is ready
        assert metric(session, "session_redis_refused") == 1
        assert session.running
        assert len(session.events("redis_refused")) == 1  # the probe keeps trying without repeating the line

        # With the right password (a restart with the fixed REDIS_URL), the outage is written back.
        assert session.stop() == 0
        fixed = system.start("session", REDIS_URL=f"redis://:{PASSWORD}@127.0.0.1:{server.port}/0")
        await wait_event(fixed, "store_recovered")
        rdb = redis.Redis.from_url(f"redis://:{PASSWORD}@127.0.0.1:{server.port}/0")
        try:
            assert msgspec.msgpack.decode(rdb.get(f"session:{sid}"))["user"]["email"] == "locked@example.com"
        finally:
            rdb.close()
    finally:
        server.stop()


async def test_an_acl_user_without_permission_is_reported_and_written_back_once_granted(make_system: SystemFactory, redis_server: RedisServer, rdb: redis.Redis) -> None:
    user = f"limited{uuid.uuid4().hex[:6]}"
    rdb.acl_setuser(user, enabled=True, passwords=[f"+{PASSWORD}"], keys=["session:*"], commands=["+@read", "+ping", "+hello", "+client"])
    system = make_system(redis_url=f"redis://{user}:{PASSWORD}@127.0.0.1:{redis_server.port}/0", start=("session", "gateway"))
    session = system.services["session"]
    refused = session.events("redis_refused")
    assert len(refused) == 1 and refused[0]["cause"] == "permission", session.lines
    assert "NOPERM" in refused[0]["error"]
    assert not any("Traceback" in line for line in session.lines)

    async with browser(system.url) as client:
        await login(client, "acl@example.com", "Acl")
        sid = sid_of(client)
    assert rdb.exists(f"session:{sid}") == 0

    mark = len(session.lines)
    rdb.acl_setuser(user, enabled=True, passwords=[f"+{PASSWORD}"], keys=["*"], commands=["+@all"])  # the operator fixes the ACL
    await wait_event(session, "redis_accepted", start=mark)
    await wait_event(session, "store_recovered", start=mark)
    assert msgspec.msgpack.decode(rdb.get(f"session:{sid}"))["user"]["email"] == "acl@example.com"
    wait_until(lambda: metric(session, "session_redis_refused") == 0, what="the refusal gauge to clear")


async def test_a_permission_revoked_while_running_is_reported_once_and_logins_go_on(make_system: SystemFactory, redis_server: RedisServer, rdb: redis.Redis) -> None:
    user = f"revoked{uuid.uuid4().hex[:6]}"
    rdb.acl_setuser(user, enabled=True, passwords=[f"+{PASSWORD}"], keys=["*"], commands=["+@all"])
    system = make_system(redis_url=f"redis://{user}:{PASSWORD}@127.0.0.1:{redis_server.port}/0", start=("session", "gateway"))
    session = system.services["session"]
    assert session.events("redis_refused") == []

    rdb.acl_setuser(user, enabled=True, passwords=[f"+{PASSWORD}"], keys=["*"], commands=["+@all", "-set", "-evalsha"])
    async with browser(system.url) as client:
        for n in range(3):
            await login(client, f"later{n}@example.com", "Later")
        sid = sid_of(client)
        async with client.get("/api/me") as me:
            assert me.status == 200 and (await me.json())["user"]["email"] == "later2@example.com"
    refused = session.events("redis_refused")
    assert len(refused) == 1 and refused[0]["cause"] == "permission" and "NOPERM" in refused[0]["error"]
    assert rdb.exists(f"session:{sid}") == 0

    mark = len(session.lines)
    rdb.acl_setuser(user, enabled=True, passwords=[f"+{PASSWORD}"], keys=["*"], commands=["+@all"])
    await wait_event(session, "store_recovered", start=mark)
    assert msgspec.msgpack.decode(rdb.get(f"session:{sid}"))["user"]["email"] == "later2@example.com"
    assert not any("Traceback" in line for line in session.lines)


async def test_a_read_only_replica_serves_reads_and_the_logins_made_meanwhile_are_written_back(make_system: SystemFactory, tmp_path: Path) -> None:
    # Replication writes RDB files: both servers keep them in a directory of this test only.
    (tmp_path / "master").mkdir()
    (tmp_path / "replica").mkdir()
    master = redis_with("--dir", str(tmp_path / "master")).start()
    redis_server = redis_with("--dir", str(tmp_path / "replica")).start()
    rdb = redis.Redis.from_url(redis_server.url)
    try:
        system = make_system(redis_url=redis_server.url, start=("session", "gateway"))
        session = system.services["session"]
        existing = new_sid()
        primary = redis.Redis.from_url(master.url)
        primary.set(f"session:{existing}", msgpack.packb({"user": {"uid": "u-old"}, "conversation_id": "c-old"}), ex=1000)
        primary.close()
        rdb.replicaof("127.0.0.1", str(master.port))  # as after a failover that left us on a replica
        wait_until(lambda: rdb.exists(f"session:{existing}") == 1, what="the replica to sync")
        with pytest.raises(redis.exceptions.ReadOnlyError):
            rdb.set("probe", b"1")
        async with browser(system.url) as client:
            await login(client, "replica@example.com", "Replica")
            sid = sid_of(client)
            async with client.get("/api/me") as me:
                assert me.status == 200
        degraded = await wait_event(session, "store_degraded")
        assert degraded["redis_readable"] is True and "READONLY" in degraded["error"]
        assert rdb.exists(f"session:{sid}") == 0
        async with browser(system.url) as client:  # a session only the replica holds is still read
            client.cookie_jar.update_cookies({"session": existing})
            async with client.get("/api/me") as me:
                assert me.status == 200, await me.text()
                assert (await me.json())["user"]["uid"] == "u-old"

        mark = len(session.lines)
        rdb.replicaof("NO", "ONE")  # promoted: writable again
        await wait_event(session, "store_recovered", start=mark)
        assert msgspec.msgpack.decode(rdb.get(f"session:{sid}"))["user"]["email"] == "replica@example.com"
    finally:
        rdb.close()
        redis_server.stop()
        master.stop()


async def test_a_redis_busy_running_a_script_degrades_and_is_written_back_after_script_kill(make_system: SystemFactory, redis_server: RedisServer, rdb: redis.Redis) -> None:
    system = make_system(redis_url=redis_server.url, start=("session", "gateway"))
    session = system.services["session"]
    rdb.config_set("busy-reply-threshold", 50)  # ms after which other clients get BUSY
    async with busy_redis(redis_server.url) as end_script:
        async with browser(system.url) as client:
            await login(client, "busy@example.com", "Busy")
            sid = sid_of(client)
        degraded = await wait_event(session, "store_degraded")
        assert "BUSY" in degraded["error"]
        mark = len(session.lines)
        await end_script()
        await wait_event(session, "store_recovered", start=mark)
        assert msgspec.msgpack.decode(rdb.get(f"session:{sid}"))["user"]["email"] == "busy@example.com"


async def test_nan_and_non_string_keys_have_a_json_form(make_system: SystemFactory, redis_server: RedisServer, rdb: redis.Redis) -> None:
    system = make_system(redis_url=redis_server.url, start=("session", "gateway"))
    sid = new_sid()
    user = {"uid": "u-odd", 1: "one", b"\x00": "bytes key", "score": float("nan"), "max": float("inf")}
    rdb.set(f"session:{sid}", msgpack.packb({"user": user}))
    async with browser(system.url) as client:
        client.cookie_jar.update_cookies({"session": sid})
        async with client.get("/api/me") as me:
            assert me.status == 200, await me.text()
            text = await me.text()
    body = json.loads(text)  # strict JSON: no NaN literal
    assert "NaN" not in text
    assert body["user"] == {"uid": "u-odd", "1": "one", "AA==": "bytes key", "score": {"$float": "nan"}, "max": {"$float": "inf"}}
