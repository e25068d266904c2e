"""`python -m services.session.admin delete --user UID`: sign a user out everywhere."""

from __future__ import annotations

import asyncio
import subprocess
import sys

import msgspec
import redis

from tests.auth_issuer import gateway_env, running_gateway, running_issuer
from tests.client import browser
from tests.conftest import SystemFactory
from tests.harness import ROOT, RedisServer, service_env

SESSIONS = {
    "ada1aaaaaaaaaaaaaaaa": {"_permanent": True, "user": {"uid": "Mx0s5HR2Pada", "email": "ada@example.com"}},
    "ada2bbbbbbbbbbbbbbbb": {"_permanent": True, "user": {"uid": "Mx0s5HR2Pada", "email": "ada@example.com"}, "conversation_id": "c"},
    "ada3cccccccccccccccc": {"_permanent": True, "user": "Mx0s5HR2Pada"},  # a legacy session: the user is a plain id
    "bob1dddddddddddddddd": {"_permanent": True, "user": {"uid": "Mx0s5HR2Pbob"}},
    "adaXeeeeeeeeeeeeeeee": {"_permanent": True, "user": {"uid": "Mx0s5HR2Pada-not"}},
    "anon1fffffffffffffff": {"_permanent": True, "cart": [1]},
}


def admin(redis_server: RedisServer, *args: str) -> subprocess.CompletedProcess[str]:
    env = service_env(REDIS_URL=redis_server.url)
    return subprocess.run([sys.executable, "-m", "services.session.admin", *args], env=env, cwd=ROOT, capture_output=True, text=True, timeout=30)


def test_delete_user_deletes_every_session_of_that_user_only(redis_server: RedisServer) -> None:
    client = redis.Redis.from_url(redis_server.url)
    try:
        for sid, data in SESSIONS.items():
            client.set(f"session:{sid}", msgspec.msgpack.encode(data), ex=3600)
        client.set("session:broken0000000000", b"\xc1")
        result = admin(redis_server, "delete", "--user", "Mx0s5HR2Pada")
        assert result.returncode == 0, result.stderr
        lines = result.stdout.strip().splitlines()
        assert lines[-1] == "deleted 3 sessions of user Mx0s5HR2Pada"
        assert sorted(lines[:-1]) == ["deleted ada1aa…", "deleted ada2bb…", "deleted ada3cc…"], "sids are masked"
        assert not any(sid in result.stdout for sid in SESSIONS)
        left = {key.decode() for key in client.scan_iter(match="session:*")}
        assert left == {"session:bob1dddddddddddddddd", "session:adaXeeeeeeeeeeeeeeee", "session:anon1fffffffffffffff", "session:broken0000000000"}

        again = admin(redis_server, "delete", "--user", "Mx0s5HR2Pada")
        assert again.returncode == 0 and again.stdout.strip() == "deleted 0 sessions of user Mx0s5HR2Pada"
    finally:
        client.close()


def test_delete_user_needs_a_user_id(redis_server: RedisServer) -> None:
    result = admin(redis_server, "delete", "--user", " ")
    assert result.returncode == 2 and "user id" in result.stderr


async def test_a_user_signed_in_on_two_browsers_is_signed_out_of_both(make_system: SystemFactory, redis_server: RedisServer) -> None:
    system = make_system(redis_url=redis_server.url, start=("session",))
    async with running_issuer() as issuer, running_gateway(gateway_env(system, issuer)) as url, browser(url) as laptop, browser(url) as phone:
        for client in (laptop, phone):
            async with client.post("/auth/login", json={"idToken": issuer.token(sub="Mx0s5HR2Peverywhere")}) as response:
                assert response.status == 200
        async with browser(url) as other, other.post("/auth/login", json={"idToken": issuer.token(sub="Mx0s5HR2Psomeone")}) as response:
            assert response.status == 200

        result = await asyncio.to_thread(admin, redis_server, "delete", "--user", "Mx0s5HR2Peverywhere")
        assert result.returncode == 0, result.stderr
        assert result.stdout.strip().splitlines()[-1] == "deleted 2 sessions of user Mx0s5HR2Peverywhere"
        for client in (laptop, phone):
            async with client.get("/api/me") as me:
                assert me.status == 401
    store = redis.Redis.from_url(redis_server.url)
    try:
        left = [msgspec.msgpack.decode(store.get(key))["user"]["uid"] for key in store.scan_iter(match="session:*")]
    finally:
        store.close()
    assert left == ["Mx0s5HR2Psomeone"]
