"""Users' own databases over HTTP, end to end: real gateway, session and query processes, real PostgreSQL and MariaDB.

Loopback is allowed here on purpose (CONNECTIONS_ALLOWED_NETWORKS=127.0.0.0/8): the databases
of this machine stand for a user's database on the internet. The guard's refusals with the
default settings are tested in tests/test_connections_guard.py.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import asyncpg
import msgspec
import nats
import pytest
import redis.asyncio as aioredis

from services.gateway.chat import prompt
from services.session.connections import hash_key
from shared.audit import AuditFilter, read_events
from shared.contracts import AuditConnection, ConnectionRecord, Subjects
from tests import fake_llm
from tests.chat_support import gateway, post_chat, user_message
from tests.client import browser, login, run_query
from tests.conftest import Infra, MysqlReader, PasswordPostgres, PostgresReader, System, SystemFactory, postgres_reader, running_system
from tests.fake_llm import FakeLLM
from tests.harness import ROOT, PostgresCluster, RedisServer, Service, eventually, free_port, service_env
from tests.readers import mariadb_database, postgres_schema

KEY_1 = "k1:" + base64.b64encode(os.urandom(32)).decode()
KEY_2 = "k2:" + base64.b64encode(os.urandom(32)).decode()
# Every password a test gives: none may ever show in Redis or in a log line (test_no_password_stored_or_logged).
GIVEN_PASSWORDS: set[str] = set()
ENV = {
    "CONNECTIONS_KEYS": KEY_1,
    "CONNECTIONS_ALLOWED_NETWORKS": "127.0.0.0/8",
    "CONNECTIONS_CONNECT_TIMEOUT_S": "1",
    "QUERY_MAX_POOLS": "2",
    "AUDIT_STREAM": f"AUDIT_CN_{uuid.uuid4().hex[:8]}",
}


@pytest.fixture(scope="module")
def system(infra: Infra) -> Iterator[System]:
    with running_system(infra, "cn", **ENV) as system:
        yield system


@pytest.fixture
async def ada(system: System) -> AsyncIterator[tuple[aiohttp.ClientSession, str]]:
    """A signed-in user of their own (a fresh email per test) and their uid."""
    async with browser(system.url) as client:
        me = await login(client, email=f"ada-{uuid.uuid4().hex[:8]}@example.com")
        yield client, me["user"]["uid"]


@pytest.fixture(scope="module")
async def pg_schema(pg_reader: PostgresReader) -> AsyncIterator[str]:
    async with postgres_schema(pg_reader, "CREATE TABLE {s}.planets (name text, moons int); INSERT INTO {s}.planets VALUES ('Mars', 2), ('Earth', 1)") as name:
        yield name


def pg_fields(reader: PostgresReader, name: str, **extra: Any) -> dict[str, Any]:
    parts = urlsplit(reader.url)
    assert parts.password
    GIVEN_PASSWORDS.add(parts.password)
    fields = {
        "name": name,
        "dialect": "postgresql",
        "host": parts.hostname,
        "port": parts.port or 5432,
        "database": parts.path.lstrip("/"),
        "user": parts.username,
        "password": parts.password,
        "tls": {"mode": "disable"},
    }
    return fields | extra


async def stored(infra: Infra | str, uid: str) -> dict[str, ConnectionRecord]:
    client = aioredis.from_url(infra if isinstance(infra, str) else infra.redis_url)
    try:
        raw = await client.hgetall(hash_key(uid))
    finally:
        await client.aclose()
    return {k.decode(): msgspec.msgpack.decode(v, type=ConnectionRecord) for k, v in raw.items()}


async def create(client: aiohttp.ClientSession, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    async with client.post("/api/connections", json=body) as response:
        return response.status, await response.json()


def rows_of(parts: list[Any]) -> list[Any]:
    """Every row the stream carried; fails (naming the error) when the query failed."""
    errors = [p["errorText"] for p in parts if isinstance(p, dict) and p.get("type") == "tool-output-error"]
    assert not errors, errors
    return [row for p in parts if isinstance(p, dict) and p.get("type") == "data-query-rows" for row in p["data"]["rows"]]


def error_of(parts: list[Any]) -> str:
    return next(p["errorText"] for p in parts if isinstance(p, dict) and p.get("type") == "tool-output-error")


async def test_reader_connects_and_queries_run_on_it(system: System, infra: Infra, ada: tuple[aiohttp.ClientSession, str], pg_reader: PostgresReader, pg_schema: str) -> None:
    client, uid = ada
    status, body = await create(client, pg_fields(pg_reader, "mine"))
    assert status == 201, body
    assert set(body) == {"id", "name", "dialect", "host", "port", "database", "user", "tls", "server_version", "created_at"}
    assert body["name"] == "mine" and body["server_version"]

    async with client.get("/api/connections") as response:
        assert response.status == 200
        assert [c["id"] for c in (await response.json())["connections"]] == [body["id"]]
    async with client.get("/api/sources") as response:
        sources = (await response.json())["sources"]
    assert {"name": "mine", "dialect": "postgres", "role": None, "kind": "connection", "id": body["id"]} in sources

    response, parts = await run_query(client, f"SELECT name, moons FROM {pg_schema}.planets ORDER BY name", source="mine")
    assert response.status == 200
    assert rows_of(parts) == [["Earth", 1], ["Mars", 2]]
    async with client.get("/api/schema", params={"source": "mine"}) as response:
        assert response.status == 200, await response.text()
        assert any(t["name"] == f"{pg_schema}.planets" for t in (await response.json())["tables"])

    record = (await stored(infra, uid))[body["id"]]
    assert record.key_id == "k1" and record.owner == uid and pg_fields(pg_reader, "x")["password"].encode() not in record.sealed

    async with client.post(f"/api/connections/{body['id']}/test") as response:
        assert response.status == 200 and (await response.json())["ok"] is True


async def test_a_chat_turn_runs_on_the_users_connection(system: System, pg_reader: PostgresReader, pg_schema: str) -> None:
    """The model is told of the user's own database (prompt, tool schema, schema overview), and its query runs there."""
    sql = f"SELECT count(*) FROM {pg_schema}.planets"
    fake = await FakeLLM().then(fake_llm.tool_calls((prompt.EXECUTE_QUERY, {"sql": sql, "source": "chatdb"})), fake_llm.text("Two planets.")).start()
    env = {"NATS_URL": system.nats_url, "NATS_SUBJECT_PREFIX": system.prefix, "LLM_BASE_URL": fake.base_url, "LLM_MODEL": fake_llm.MODEL, "LLM_API_KEY": "sk-test"}
    try:
        async with gateway(env) as url, browser(url) as client:
            await login(client, email=f"chat-{uuid.uuid4().hex[:8]}@example.com")
            status, body = await create(client, pg_fields(pg_reader, "chatdb"))
            assert status == 201, body
            turn = await post_chat(client, [user_message("How many planets?")], source="chatdb")
            assert turn.status == 200, turn.body
            assert turn.rows() == [[2]] and turn.text() == "Two planets."
            async with browser(url) as eve:
                await login(eve, email=f"eve-{uuid.uuid4().hex[:8]}@example.com")
                refused = await post_chat(eve, [user_message("And for me?")], source="chatdb")
                assert refused.status == 404 and "unknown source 'chatdb'" in refused.body["error"]["message"]
    finally:
        await fake.stop()
    first = fake.requests[0]
    system_prompt = first["messages"][0]["content"]
    assert "chatdb (default): PostgreSQL, the user's own database" in system_prompt
    assert f"{pg_schema}.planets: name text, moons integer" in system_prompt
    [query_tool] = [t for t in first["tools"] if t["function"]["name"] == prompt.EXECUTE_QUERY]
    assert "chatdb" in query_tool["function"]["parameters"]["properties"]["source"]["description"]
    assert len(fake.requests) == 2


async def test_search_schema_searches_the_users_connection_for_its_owner_only(system: System, pg_reader: PostgresReader, pg_schema: str) -> None:
    """The model's search_schema finds the tables of the user's own database; another user naming it gets an unknown source, and nothing of its schema."""
    search = (prompt.SEARCH_SCHEMA, {"query": "planets and their moons", "source": "searchdb"})
    fake = await FakeLLM().then(fake_llm.tool_calls(search), fake_llm.text("Found them."), fake_llm.tool_calls(search), fake_llm.text("Not yours.")).start()
    env = {"NATS_URL": system.nats_url, "NATS_SUBJECT_PREFIX": system.prefix, "LLM_BASE_URL": fake.base_url, "LLM_MODEL": fake_llm.MODEL, "LLM_API_KEY": "sk-test"}
    try:
        async with gateway(env) as url, browser(url) as client:
            await login(client, email=f"search-{uuid.uuid4().hex[:8]}@example.com")
            status, body = await create(client, pg_fields(pg_reader, "searchdb"))
            assert status == 201, body
            turn = await post_chat(client, [user_message("Where are the planets?")], source="searchdb")
            assert turn.status == 200, turn.body
            async with browser(url) as eve:
                await login(eve, email=f"eve-{uuid.uuid4().hex[:8]}@example.com")
                theirs = await post_chat(eve, [user_message("Where are the planets?")])
                assert theirs.status == 200, theirs.body
    finally:
        await fake.stop()
    found = json.loads(fake.requests[1]["messages"][-1]["content"])
    assert found["tables"][0] == f"{pg_schema}.planets", found
    assert "moons" in found["schema"], found["schema"]
    refused = json.loads(fake.requests[3]["messages"][-1]["content"])
    assert refused["error"].startswith("unknown source 'searchdb'"), refused
    assert theirs.of("tool-output-error")[0]["errorText"] == refused["error"]
    assert pg_schema not in json.dumps(fake.requests[2]) + json.dumps(fake.requests[3])


async def test_mariadb_reader_by_url(system: System, ada: tuple[aiohttp.ClientSession, str], my_reader: MysqlReader) -> None:
    client, _ = ada
    GIVEN_PASSWORDS.add(my_reader.password)
    async with mariadb_database(my_reader, ("CREATE TABLE t (n INT)", "INSERT INTO t VALUES (7)")) as url:
        status, body = await create(client, {"name": "maria", "url": url + "?sslmode=disable"})
        assert status == 201, body
        assert body["dialect"] == "mysql" and "password" not in body
        response, parts = await run_query(client, "SELECT n FROM t", source="maria")
        assert rows_of(parts) == [[7]]


@pytest.mark.parametrize("who", ["postgres superuser", "mariadb root"])
async def test_privileged_account_refused_and_nothing_stored(system: System, infra: Infra, ada: tuple[aiohttp.ClientSession, str], databases: Any, who: str) -> None:
    client, uid = ada
    url = databases.postgres if who.startswith("postgres") else databases.mysql
    status, body = await create(client, {"name": "admin", "url": url + "?sslmode=disable"})
    assert status == 422, body
    message = body["error"]["message"]
    assert "can do more than read" in message
    assert ("superuser" in message) if who.startswith("postgres") else ("ALL PRIVILEGES" in message or "SUPER" in message or "privilege" in message)
    assert await stored(infra, uid) == {}


async def test_wrong_password_refused_and_nothing_stored(system: System, infra: Infra, ada: tuple[aiohttp.ClientSession, str], my_reader: MysqlReader) -> None:
    client, uid = ada
    GIVEN_PASSWORDS.add("not-the-password-" + uid[-6:])
    parts = urlsplit(my_reader.admin_url)
    fields = {"name": "bad", "dialect": "mysql", "host": parts.hostname, "port": parts.port or 3306, "database": "test", "user": my_reader.user}
    status, body = await create(client, fields | {"password": "not-the-password-" + uid[-6:], "tls": {"mode": "disable"}})
    assert status == 422, body
    assert "refused the user name or password" in body["error"]["message"]
    assert await stored(infra, uid) == {}


@pytest.fixture(scope="module")
async def scram_reader(scram_postgres: PostgresCluster | PasswordPostgres) -> AsyncIterator[PostgresReader]:
    """A reader role on the private cluster that checks passwords (the shared PostgreSQL trusts loopback)."""
    async with postgres_reader(scram_postgres.admin_url) as reader:
        yield reader


async def test_wrong_password_on_postgresql_is_named_and_nothing_stored(system: System, infra: Infra, ada: tuple[aiohttp.ClientSession, str], scram_reader: PostgresReader) -> None:
    """On a PostgreSQL that checks passwords: a wrong one gets 422 naming the password (not "cannot reach"), stores nothing and
    shows in no log line; the right one, to the same host and port, then connects."""
    client, uid = ada
    wrong = "not-the-password-" + uuid.uuid4().hex[:8]
    GIVEN_PASSWORDS.add(wrong)
    gateway_lines = len(system.services["gateway"].lines)
    status, body = await create(client, pg_fields(scram_reader, "scram", password=wrong))
    assert status == 422, body
    assert body["error"]["code"] == "connection_failed"
    assert body["error"]["message"] == f"the database refused the user name or password for {scram_reader.role!r}"
    assert await stored(infra, uid) == {}

    # The gateway's line for this request comes after the query service answered it: every line of the attempt is out by then.
    def refused_here(line: str) -> bool:
        event = json.loads(line) if line.startswith("{") else {}
        return event.get("event") == "request" and event.get("path") == "/api/connections" and event.get("uid") == uid and event.get("status") == 422

    system.services["gateway"].wait_for_line(refused_here, start=gateway_lines, timeout=10)
    for name, service in system.services.items():
        assert not any(wrong in line for line in service.lines), f"the wrong password is in the {name} log"

    status, body = await create(client, pg_fields(scram_reader, "scram"))
    assert status == 201, body
    assert list(await stored(infra, uid)) == [body["id"]]


async def test_verify_full_against_a_server_without_tls(system: System, infra: Infra, ada: tuple[aiohttp.ClientSession, str], pg_reader: PostgresReader) -> None:
    client, uid = ada
    status, body = await create(client, pg_fields(pg_reader, "tls", tls={"mode": "verify-full"}))
    assert status == 422, body
    assert "TLS (verify-full) failed" in body["error"]["message"]
    assert await stored(infra, uid) == {}


async def test_closed_port_gets_the_unreachable_answer(system: System, infra: Infra, ada: tuple[aiohttp.ClientSession, str], pg_reader: PostgresReader) -> None:
    client, uid = ada
    port = free_port()
    status, body = await create(client, pg_fields(pg_reader, "closed", port=port))
    assert status == 422, body
    assert body["error"]["message"].startswith(f"cannot reach a database at 127.0.0.1:{port};")
    assert await stored(infra, uid) == {}


async def test_bad_input_is_a_clear_400(system: System, ada: tuple[aiohttp.ClientSession, str]) -> None:
    client, _ = ada
    for body, expected in (
        ({"name": "x", "dialect": "oracle", "host": "h", "port": 1, "database": "d", "user": "u", "password": "p"}, "$.dialect"),
        ({"name": "x", "dialect": "mysql", "host": "h", "port": 70000, "database": "d", "user": "u", "password": "p"}, "$.port"),
        ({"name": "bad name!", "url": "mysql://u:p@h/d"}, "$.name"),
        ({"name": "x", "url": "ftp://h/d"}, "postgresql://"),
    ):
        status, answer = await create(client, body)
        assert status == 400, answer
        assert expected in answer["error"]["message"]
        assert "p@" not in answer["error"]["message"]


async def test_another_users_connection_is_not_found(system: System, ada: tuple[aiohttp.ClientSession, str], pg_reader: PostgresReader, pg_schema: str) -> None:
    client, _ = ada
    status, body = await create(client, pg_fields(pg_reader, "private"))
    assert status == 201, body
    connection = body["id"]
    async with browser(system.url) as eve:
        await login(eve, email=f"eve-{uuid.uuid4().hex[:8]}@example.com")
        for method, path, payload in (
            ("GET", f"/api/connections/{connection}", None),
            ("PATCH", f"/api/connections/{connection}", {"name": "stolen"}),
            ("DELETE", f"/api/connections/{connection}", None),
            ("POST", f"/api/connections/{connection}/test", None),
        ):
            async with eve.request(method, path, json=payload) as response:
                assert response.status == 404, (method, path, await response.text())
        async with eve.get("/api/connections") as response:
            assert (await response.json())["connections"] == []
        async with eve.post("/api/query", json={"sql": f"SELECT * FROM {pg_schema}.planets", "source": "private"}) as response:
            assert response.status == 404 and "unknown source 'private'" in (await response.json())["error"]["message"]
        async with eve.get("/api/schema", params={"source": "private"}) as response:
            assert response.status == 404
    async with client.get(f"/api/connections/{connection}") as response:
        assert response.status == 200 and (await response.json())["name"] == "private"


async def test_rename_and_delete(system: System, infra: Infra, ada: tuple[aiohttp.ClientSession, str], pg_reader: PostgresReader, pg_schema: str) -> None:
    client, uid = ada
    status, body = await create(client, pg_fields(pg_reader, "old"))
    assert status == 201
    async with client.patch(f"/api/connections/{body['id']}", json={"name": "new"}) as response:
        assert response.status == 200 and (await response.json())["name"] == "new"
    status, again = await create(client, pg_fields(pg_reader, "new"))
    assert status == 409 and "already have a connection named 'new'" in again["error"]["message"]
    response, parts = await run_query(client, f"SELECT count(*) FROM {pg_schema}.planets", source="new")
    assert rows_of(parts) == [[2]]
    query = system.services["query"]
    closed_before = len(query.events("user_pool_closed"))
    async with client.delete(f"/api/connections/{body['id']}") as response:
        assert response.status == 200
    assert await stored(infra, uid) == {}
    # The broadcast reached the query replica, which closed the pool (the delete answers before that may happen).
    query.wait_for_line(lambda line: '"user_pool_closed"' in line and body["id"] in line, timeout=10)
    assert len(query.events("user_pool_closed")) == closed_before + 1
    async with client.post("/api/query", json={"sql": "SELECT 1", "source": "new"}) as response:
        assert response.status == 404 and "unknown source 'new'" in (await response.json())["error"]["message"]


async def test_creating_and_deleting_a_connection_each_leave_one_audit_event(system: System, ada: tuple[aiohttp.ClientSession, str], pg_reader: PostgresReader) -> None:
    client, uid = ada
    status, body = await create(client, pg_fields(pg_reader, "audited"))
    assert status == 201
    async with client.delete(f"/api/connections/{body['id']}") as response:
        assert response.status == 200
    async with client.delete(f"/api/connections/{body['id']}") as response:
        assert response.status == 404  # nothing deleted: no event either

    async def events() -> list[Any]:
        nc = await nats.connect(system.nats_url)
        try:
            return await read_events(nc, ENV["AUDIT_STREAM"], Subjects(system.prefix), AuditFilter(user=uid, kind="connection"))
        finally:
            await nc.close()

    async def both() -> bool:
        return len(await events()) >= 2

    await eventually(both, "the connection's audit events", timeout=15)
    found = await events()
    assert [(e.action, e.source, e.connection_id) for e in found] == [("create", "audited", body["id"]), ("delete", "audited", body["id"])]
    assert all(isinstance(e, AuditConnection) and e.email and e.email.startswith("ada-") for e in found)
    assert not any(password in msgspec.json.encode(e).decode() for e in found for password in GIVEN_PASSWORDS)


async def test_the_limit_per_user_is_checked_before_connecting_anywhere(system: System, infra: Infra, ada: tuple[aiohttp.ClientSession, str], pg_reader: PostgresReader) -> None:
    client, uid = ada
    for i in range(10):  # CONNECTIONS_MAX_PER_USER's default
        status, body = await create(client, pg_fields(pg_reader, f"n{i}"))
        assert status == 201, body
    # A closed port: had the service connected first, the answer would be "cannot reach".
    status, body = await create(client, pg_fields(pg_reader, "eleventh", port=free_port()))
    assert status == 409 and "CONNECTIONS_MAX_PER_USER=10" in body["error"]["message"], body
    assert len(await stored(infra, uid)) == 10


async def test_a_deleted_connection_closes_its_pools_on_every_replica(system: System, ada: tuple[aiohttp.ClientSession, str], pg_reader: PostgresReader, pg_schema: str) -> None:
    client, _ = ada
    status, body = await create(client, pg_fields(pg_reader, "shared"))
    assert status == 201, body
    second = Service("query", system.service_env("query")).start()
    try:
        replicas = [system.services["query"], second]

        def opened(replica: Service) -> bool:
            return any(e.get("connection") == body["id"] for e in replica.events("user_pool_opened"))

        # Queries go to either replica (one queue group): run them until both hold a pool of this connection.
        for _ in range(60):
            if all(opened(replica) for replica in replicas):
                break
            _, parts = await run_query(client, f"SELECT count(*) FROM {pg_schema}.planets", source="shared")
            assert rows_of(parts) == [[2]]
        assert all(opened(replica) for replica in replicas), "the queries never reached both replicas"
        async with client.delete(f"/api/connections/{body['id']}") as response:
            assert response.status == 200
        for replica in replicas:
            replica.wait_for_line(lambda line: '"user_pool_closed"' in line and body["id"] in line, timeout=10)
    finally:
        assert second.stop() == 0


async def test_a_changed_password_is_tested_again_and_a_wrong_one_changes_nothing(system: System, infra: Infra, ada: tuple[aiohttp.ClientSession, str], my_reader: MysqlReader) -> None:
    client, uid = ada
    GIVEN_PASSWORDS.add(my_reader.password)
    async with mariadb_database(my_reader, ("CREATE TABLE t (n INT)", "INSERT INTO t VALUES (5)")) as url:
        status, body = await create(client, {"name": "m", "url": url + "?sslmode=disable"})
        assert status == 201, body
        before = (await stored(infra, uid))[body["id"]]
        wrong = "wrong-" + uuid.uuid4().hex[:8]
        GIVEN_PASSWORDS.add(wrong)
        async with client.patch(f"/api/connections/{body['id']}", json={"password": wrong}) as response:
            assert response.status == 422
            assert "refused the user name or password" in (await response.json())["error"]["message"]
        assert (await stored(infra, uid))[body["id"]] == before
        async with client.patch(f"/api/connections/{body['id']}", json={"password": my_reader.password}) as response:
            assert response.status == 200, await response.text()
        after = (await stored(infra, uid))[body["id"]]
        assert after.sealed != before.sealed  # sealed again, with a new nonce
        response, parts = await run_query(client, "SELECT n FROM t", source="m")
        assert rows_of(parts) == [[5]]


async def test_at_most_max_pools_open_and_every_query_answers(system: System, ada: tuple[aiohttp.ClientSession, str], pg_reader: PostgresReader, pg_schema: str) -> None:
    client, _ = ada
    names = [f"p{i}" for i in range(5)]
    for name in names:
        status, body = await create(client, pg_fields(pg_reader, name))
        assert status == 201, body
    query = system.services["query"]
    start = len(query.lines)
    for name in names * 2:
        response, parts = await run_query(client, f"SELECT count(*) FROM {pg_schema}.planets", source=name)
        assert rows_of(parts) == [[2]], parts

    def opened() -> list[dict[str, Any]]:
        return [e for e in _events_since(query, start) if e.get("event") == "user_pool_opened"]

    async def all_logged() -> bool:  # the service writes its held log lines within 50 ms, not at once
        return len(opened()) >= 10

    await eventually(all_logged, "a user_pool_opened line for every query")
    assert len(opened()) == 10  # each use after four others finds its pool evicted
    assert max(e["pools"] for e in opened()) <= 2
    admin = await asyncpg.connect(pg_reader.admin_url)
    try:
        held = await admin.fetchval("SELECT count(*) FROM pg_stat_activity WHERE usename = $1 AND application_name = 'dbgenie-query'", urlsplit(pg_reader.url).username)
    finally:
        await admin.close()
    assert held <= 2


def _events_since(service: Service, start: int) -> list[dict[str, Any]]:
    out = []
    for line in service.lines[start:]:
        try:
            out.append(json.loads(line))
        except ValueError:
            continue
    return out


def query_admin(system: System, keys: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = service_env(NATS_URL=system.nats_url, NATS_SUBJECT_PREFIX=system.prefix, CONNECTIONS_KEYS=keys)
    return subprocess.run([sys.executable, "-m", "services.query.admin", *args], env=env, cwd=ROOT, capture_output=True, text=True, timeout=60)


def session_admin(system: System, *args: str, **env_vars: str) -> subprocess.CompletedProcess[str]:
    env = service_env(REDIS_URL=system.redis_url or "", **env_vars)
    return subprocess.run([sys.executable, "-m", "services.session.admin", *args], env=env, cwd=ROOT, capture_output=True, text=True, timeout=60)


async def test_keys_off_rotation_and_a_missing_key(make_system: SystemFactory, redis_server: RedisServer, pg_reader: PostgresReader, pg_schema: str) -> None:
    """Without CONNECTIONS_KEYS the feature answers 503 naming it; rotation re-seals with the first key; a gone key is named.

    On a Redis of its own: rotation reads every user's records.
    """
    system = make_system(redis_url=redis_server.url, CONNECTIONS_ALLOWED_NETWORKS="127.0.0.0/8")
    redis_url = redis_server.url
    async with browser(system.url) as client:
        me = await login(client, email=f"rot-{uuid.uuid4().hex[:8]}@example.com")
        uid = me["user"]["uid"]
        status, body = await create(client, pg_fields(pg_reader, "rot"))
        assert status == 503 and "CONNECTIONS_KEYS" in body["error"]["message"], body
        async with client.get("/api/connections") as response:
            assert response.status == 503

        def restart_query(keys: str) -> None:
            assert system.services["query"].stop() == 0
            system.start("query", CONNECTIONS_KEYS=keys)

        restart_query(KEY_1)
        status, body = await create(client, pg_fields(pg_reader, "rot"))
        assert status == 201, body

        first = query_admin(system, f"{KEY_2},{KEY_1}", "rotate-keys")
        assert first.returncode == 0, first.stderr
        assert "resealed 1, already current 0" in first.stdout
        again = query_admin(system, f"{KEY_2},{KEY_1}", "rotate-keys")
        assert "resealed 0, already current 1" in again.stdout, again.stdout
        assert (await stored(redis_url, uid))[body["id"]].key_id == "k2"

        restart_query(KEY_2)
        response, parts = await run_query(client, f"SELECT count(*) FROM {pg_schema}.planets", source="rot")
        assert rows_of(parts) == [[2]]

        key_3 = "k3:" + base64.b64encode(os.urandom(32)).decode()
        restart_query(key_3)
        response, parts = await run_query(client, "SELECT 1", source="rot")
        assert "sealed with key 'k2', which is not in CONNECTIONS_KEYS" in error_of(parts)
        failed = query_admin(system, key_3, "rotate-keys")
        assert failed.returncode == 1 and "sealed with key 'k2'" in failed.stdout

        listed = session_admin(system, "connections", "list", "--user", uid)
        assert listed.returncode == 0, listed.stderr
        assert "rot" in listed.stdout and "1 connection of user" in listed.stdout
        erased = session_admin(system, "erase", "--user", uid)
        assert "1 connection" in erased.stdout, erased.stdout
        assert await stored(redis_url, uid) == {}


async def test_erase_closes_the_pools_of_the_erased_connections(system: System, ada: tuple[aiohttp.ClientSession, str], pg_reader: PostgresReader, pg_schema: str) -> None:
    """`admin erase` with NATS_URL tells the query replicas to close the erased connections' pools: the database sees their sessions end."""
    client, uid = ada
    async with postgres_reader(pg_reader.admin_url) as own:  # a role of this test's only: its sessions are the pool's
        await own.grant(pg_schema)
        status, body = await create(client, pg_fields(own, "erased"))
        assert status == 201, body
        response, parts = await run_query(client, f"SELECT count(*) FROM {pg_schema}.planets", source="erased")
        assert rows_of(parts) == [[2]]
        admin = await asyncpg.connect(pg_reader.admin_url)
        try:

            async def sessions() -> int:
                return int(await admin.fetchval("SELECT count(*) FROM pg_stat_activity WHERE usename = $1", own.role))

            assert await sessions() > 0, "the query replica holds the connection's pool"
            erased = session_admin(system, "erase", "--user", uid, NATS_URL=system.nats_url, NATS_SUBJECT_PREFIX=system.prefix)
            assert erased.returncode == 0 and "1 connection" in erased.stdout, erased.stdout + erased.stderr
            assert not erased.stderr, erased.stderr

            async def closed() -> bool:
                return await sessions() == 0

            await eventually(closed, "the erased connection's pool closed (QUERY_POOL_IDLE_S is 300 s here)", timeout=15)
        finally:
            await admin.close()
    system.services["query"].wait_for_line(lambda line: '"user_pool_closed"' in line and body["id"] in line, timeout=10)


async def test_no_password_stored_or_logged(system: System, infra: Infra) -> None:
    """After the tests above: no password given to a form is in any Redis value or any log line of the module's services."""
    assert GIVEN_PASSWORDS, "the tests above gave passwords"
    client = aioredis.from_url(infra.redis_url)
    values: list[bytes] = []
    try:
        async for key in client.scan_iter(count=500):
            kind = (await client.type(key)).decode()
            if kind == "string":
                values.append(await client.get(key) or b"")
            elif kind == "hash":
                values += [k + b"=" + v for k, v in (await client.hgetall(key)).items()]
            elif kind == "list":
                values += await client.lrange(key, 0, -1)
            elif kind == "zset":
                values += [member for member, _ in await client.zrange(key, 0, -1, withscores=True)]
            elif kind == "set":
                values += list(await client.smembers(key))
    finally:
        await client.aclose()
    assert values, "the tests above stored something"
    for password in GIVEN_PASSWORDS:
        assert not any(password.encode() in value for value in values), "a password is in Redis"
        for name, service in system.services.items():
            assert not any(password in line for line in service.lines), f"a password is in the {name} log"
