"""Who may see what (docs/access.md): sources by user and group, database roles per person, no view of other
sessions' SQL, and the audit trail on JetStream, against real PostgreSQL, MariaDB and NATS JetStream.

The session and query services run in this process from their factories; each gateway is
`create_app(config)` under pytest-aiohttp, with two browsers (cookie jars) on one server.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import sys
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncmy
import asyncpg
import nats
import pytest
import structlog.testing
from aiohttp.test_utils import TestClient, TestServer
from nats.js.errors import NotFoundError
from prometheus_client import REGISTRY

from services.gateway import keys
from services.gateway.app import create_app
from services.gateway.config import GatewayConfig
from services.query.config import QueryConfig
from services.query.engines import EngineSettings, Sources
from services.query.service import create_service as create_query_service
from services.session.config import SessionConfig
from services.session.service import create_service as create_session_service
from shared.audit import AuditFilter, default_stream, read_events, read_stream
from shared.contracts import AuditQuery, AuditSignIn, Caller, Subjects
from shared.errors import ConfigError, ServiceError
from tests import fake_llm
from tests.chat_support import parse_sse
from tests.client import events
from tests.conftest import Infra, MysqlReader, PostgresReader, mysql_connect_args, with_account
from tests.fake_llm import FakeLLM
from tests.harness import NatsServer, eventually, service_env

Client = TestClient[Any, Any]
ClientFactory = Callable[..., Awaitable[Client]]
ServerFactory = Callable[..., Awaitable[TestServer]]
ADMIN = "boss@example.com"


@dataclass
class Setup:
    """The databases, roles and policy of this module."""

    schema: str
    analyst: str
    viewer: str
    my_database: str
    my_a: str
    my_b: str
    env: dict[str, str]
    pg_admin: str


@asynccontextmanager
async def _postgres(reader: PostgresReader, tag: str) -> AsyncIterator[tuple[str, str, str]]:
    """A schema with `staff` (salary kept from the analyst role, rows owned by users: RLS) and `notes`, and two roles granted to the reader."""
    schema, analyst, viewer = f"acc_{tag}", f"acc_analyst_{tag}", f"acc_viewer_{tag}"
    admin = await asyncpg.connect(reader.admin_url)
    try:
        await admin.execute(f"""
            CREATE SCHEMA {schema};
            CREATE TABLE {schema}.staff (id int PRIMARY KEY, owner text NOT NULL, name text NOT NULL, salary int NOT NULL);
            INSERT INTO {schema}.staff VALUES (1, 'user-a', 'Ada', 100), (2, 'user-a', 'Alan', 200), (3, 'user-c', 'Cleo', 300);
            CREATE TABLE {schema}.notes (id int, body text);
            INSERT INTO {schema}.notes VALUES (1, 'hello');
            ALTER TABLE {schema}.staff ENABLE ROW LEVEL SECURITY;
            CREATE ROLE {analyst} NOLOGIN; CREATE ROLE {viewer} NOLOGIN;
            GRANT USAGE ON SCHEMA {schema} TO {analyst}, {viewer};
            GRANT SELECT (id, owner, name) ON {schema}.staff TO {analyst};
            GRANT SELECT ON {schema}.notes TO {viewer};
            CREATE POLICY own_rows ON {schema}.staff FOR SELECT TO {analyst} USING (owner = current_setting('dbgenie.user_id', true));
            GRANT {analyst}, {viewer} TO "{reader.role}";
        """)
        await reader.grant(schema)
        yield schema, analyst, viewer
    finally:
        await admin.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE; DROP OWNED BY {analyst}, {viewer}; DROP ROLE IF EXISTS {analyst}; DROP ROLE IF EXISTS {viewer}")
        await admin.close()


@asynccontextmanager
async def _mariadb(reader: MysqlReader, tag: str) -> AsyncIterator[tuple[str, str, str]]:
    """A database whose tables the reader reaches only through roles: `my_a` reads `t_a`, `my_b` reads `t_b`."""
    database, role_a, role_b = f"acc_{tag}", f"acc_a_{tag}", f"acc_b_{tag}"
    admin = await asyncmy.connect(**mysql_connect_args(reader.admin_url))
    try:
        async with admin.cursor() as cur:
            for statement in (
                f"CREATE DATABASE {database}",
                f"CREATE TABLE {database}.t_a (v varchar(20))",
                f"CREATE TABLE {database}.t_b (v varchar(20))",
                f"INSERT INTO {database}.t_a VALUES ('for-a')",
                f"INSERT INTO {database}.t_b VALUES ('for-b')",
                f"CREATE ROLE {role_a}",
                f"CREATE ROLE {role_b}",
                f"GRANT SELECT ON {database}.t_a TO {role_a}",
                f"GRANT SELECT ON {database}.t_b TO {role_b}",
                f"GRANT {role_a} TO '{reader.user}'@'%'",
                f"GRANT {role_b} TO '{reader.user}'@'%'",
                f"GRANT SHOW VIEW ON {database}.* TO '{reader.user}'@'%'",  # lets it USE the database; the rows come through roles
            ):
                await cur.execute(statement)
        yield database, role_a, role_b
    finally:
        async with admin.cursor() as cur:
            await cur.execute(f"DROP DATABASE IF EXISTS {database}")
            await cur.execute(f"DROP ROLE IF EXISTS {role_a}")
            await cur.execute(f"DROP ROLE IF EXISTS {role_b}")
        admin.close()


def policy(s: Setup) -> dict[str, Any]:
    return {
        "sources": {
            "sales": [{"groups": ["analysts"], "role": s.analyst}],
            "hr": [{"groups": ["hr"], "role": s.viewer}],
            "my": [{"groups": ["analysts"], "role": s.my_a}, {"groups": ["hr"], "role": s.my_b}],
        }
    }


@pytest.fixture(scope="module")
async def setup(infra: Infra, pg_reader: PostgresReader, my_reader: MysqlReader, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Setup]:
    tag = uuid.uuid4().hex[:8]
    prefix = f"acc{tag}"
    async with _postgres(pg_reader, tag) as (schema, analyst, viewer), _mariadb(my_reader, tag) as (database, my_a, my_b):
        s = Setup(schema, analyst, viewer, database, my_a, my_b, {}, pg_reader.admin_url)
        s.env = {
            "NATS_URL": infra.nats_url,
            "NATS_SUBJECT_PREFIX": prefix,
            "REDIS_URL": infra.redis_url,
            "SESSION_KV_BUCKET": f"sessions_{prefix}",
            "QUERY_SAMPLE_PATH": str(tmp_path_factory.mktemp("access") / "sample.db"),
            "QUERY_SOURCES": json.dumps({"sales": pg_reader.url, "hr": pg_reader.url, "my": my_reader.url(database)}),
            "ACCESS_POLICY": json.dumps(policy(s)),
            "AUDIT_STREAM": f"AUDIT_{prefix}",
            "ADMIN_EMAILS": ADMIN,
            "AUTH_MODE": "dev",
            "OPS_PORT": "0",
        }
        async with AsyncExitStack() as stack:
            await stack.enter_async_context(create_session_service(SessionConfig.from_env(s.env)))
            await stack.enter_async_context(create_query_service(QueryConfig.from_env(s.env)))
            yield s
            nc = await nats.connect(infra.nats_url)
            try:
                with contextlib.suppress(NotFoundError):  # a test deletes it (AUDIT_REQUIRED)
                    await nc.jetstream().delete_stream(s.env["AUDIT_STREAM"])
            finally:
                await nc.close()


@dataclass
class Gateway:
    server: TestServer
    make: ClientFactory

    async def user(self, email: str, groups: list[str], uid: str | None = None) -> Client:
        """A browser signed in (dev login) as `email` in `groups`."""
        client = await self.make(self.server, headers={"Sec-Fetch-Site": "same-origin"})
        body: dict[str, Any] = {"email": email, "name": email.split("@")[0], "groups": groups}
        if uid:
            body["uid"] = uid
        async with client.post("/auth/login", json=body) as response:
            assert response.status == 200, await response.text()
        return client


@pytest.fixture
async def gateway(setup: Setup, aiohttp_client: ClientFactory, aiohttp_server: ServerFactory) -> Gateway:
    return Gateway(await aiohttp_server(create_app(GatewayConfig.from_env(setup.env))), aiohttp_client)


async def query(client: Client, sql: str, source: str | None = None, request_id: str | None = None) -> tuple[int, list[Any], dict[str, Any]]:
    """POST /api/query: (status, stream parts, JSON body of a refusal)."""
    headers = {"X-Request-Id": request_id} if request_id else {}
    async with client.post("/api/query", json={"sql": sql, **({"source": source} if source else {})}, headers=headers) as response:
        if response.status != 200:
            return response.status, [], await response.json()
        return 200, [part async for part in events(response)], {}


def rows(parts: list[Any]) -> list[list[Any]]:
    return [row for part in parts if isinstance(part, dict) and part["type"] == "data-query-rows" for row in part["data"]["rows"]]


def stream_error(parts: list[Any]) -> str | None:
    found = [part["errorText"] for part in parts if isinstance(part, dict) and part["type"] == "tool-output-error"]
    return found[0] if found else None


def executed(source: str) -> float:
    """How many queries the in-process query service counted for `source`, whatever their outcome."""
    total = 0.0
    for metric in REGISTRY.collect():
        if metric.name == "query_queries":
            total += sum(sample.value for sample in metric.samples if sample.name == "query_queries_total" and sample.labels.get("source") == source)
    return total


async def audit_events(env: dict[str, str], **wanted: Any) -> list[Any]:
    nc = await nats.connect(env["NATS_URL"])
    try:
        return await read_events(nc, env["AUDIT_STREAM"], Subjects(env["NATS_SUBJECT_PREFIX"]), AuditFilter(limit=10_000, **wanted))
    finally:
        await nc.close()


# --- source access ------------------------------------------------------------------------


async def test_each_user_sees_and_queries_only_the_sources_of_their_groups(setup: Setup, gateway: Gateway) -> None:
    analyst = await gateway.user(f"a-{uuid.uuid4().hex[:6]}@example.com", ["analysts"], uid="user-a")
    hr = await gateway.user(f"h-{uuid.uuid4().hex[:6]}@example.com", ["hr"])
    async with analyst.get("/api/sources") as response:
        listed = {s["name"]: s["role"] for s in (await response.json())["sources"]}
    assert listed == {"default": None, "sales": setup.analyst, "my": setup.my_a}
    async with hr.get("/api/sources") as response:
        listed = {s["name"]: s["role"] for s in (await response.json())["sources"]}
    assert listed == {"default": None, "hr": setup.viewer, "my": setup.my_b}

    status, parts, _ = await query(analyst, f"SELECT name FROM {setup.schema}.staff ORDER BY id", "sales")
    assert status == 200 and rows(parts) == [["Ada"], ["Alan"]]
    status, parts, _ = await query(hr, f"SELECT body FROM {setup.schema}.notes", "hr")
    assert status == 200 and rows(parts) == [["hello"]]

    before = executed("sales")
    status, _, body = await query(hr, f"SELECT name FROM {setup.schema}.staff", "sales")
    assert status == 404 and body["error"]["code"] == "unknown_source" and "'sales'" in body["error"]["message"]
    status, _, unknown = await query(hr, "SELECT 1", "nowhere")
    assert status == 404 and unknown["error"]["code"] == "unknown_source"
    assert body["error"]["message"].replace("sales", "X") == unknown["error"]["message"].replace("nowhere", "X")  # indistinguishable
    assert executed("sales") == before  # it never reached the query service
    async with hr.get("/api/schema?source=sales") as response:
        assert response.status == 404 and (await response.json())["error"]["code"] == "unknown_source"
    async with analyst.get("/api/schema?source=hr") as response:
        assert response.status == 404


async def test_the_schema_lists_only_the_columns_the_role_may_read(setup: Setup, gateway: Gateway) -> None:
    analyst = await gateway.user(f"a-{uuid.uuid4().hex[:6]}@example.com", ["analysts"])
    async with analyst.get(f"/api/schema?source=sales&tables={setup.schema}.staff") as response:
        assert response.status == 200, await response.text()
        tables = (await response.json())["tables"]
    assert [c["name"] for c in tables[0]["columns"]] == ["id", "owner", "name"]


async def test_the_chat_refuses_another_groups_source_with_404_and_the_model_cannot_name_it(setup: Setup, gateway: Gateway, aiohttp_client: ClientFactory, aiohttp_server: ServerFactory) -> None:
    fake = await FakeLLM().start()
    try:
        env = setup.env | {"LLM_BASE_URL": fake.base_url, "LLM_MODEL": fake_llm.MODEL, "LLM_API_KEY": "k"}
        chat = Gateway(await aiohttp_server(create_app(GatewayConfig.from_env(env))), aiohttp_client)
        hr = await chat.user(f"h-{uuid.uuid4().hex[:6]}@example.com", ["hr"])
        body = {"id": f"c-{uuid.uuid4().hex[:8]}", "trigger": "submit-message", "messages": [{"id": "m1", "role": "user", "parts": [{"type": "text", "text": "q"}]}]}
        async with hr.post("/api/chat", json=body | {"source": "sales"}) as response:
            assert response.status == 404 and (await response.json())["error"]["code"] == "unknown_source"
        assert fake.requests == []

        before = executed("sales")
        fake.then(
            fake_llm.tool_calls(("execute_query", {"sql": f"SELECT name FROM {setup.schema}.staff", "source": "sales"}), ("describe_schema", {"source": "sales"})),
            fake_llm.text("done"),
        )
        async with hr.post("/api/chat", json=body) as response:
            assert response.status == 200
            parts = parse_sse(await response.read())
        errors = [part["errorText"] for part in parts if isinstance(part, dict) and part["type"] == "tool-output-error"]
        assert len(errors) == 2 and all("unknown source 'sales'" in e for e in errors)
        assert executed("sales") == before
        system = fake.requests[0]["messages"][0]["content"]
        assert "- hr:" in system and "- sales" not in system and setup.schema + ".staff" not in system
    finally:
        await fake.stop()


def test_a_malformed_policy_stops_both_services_at_start_naming_what_is_wrong(tmp_path: Path) -> None:
    bad = json.dumps({"sources": {"sales": [{"groups": ["a"], "rolle": "x"}]}})
    with pytest.raises(ConfigError, match="ACCESS_POLICY is malformed: .*unknown field `rolle`"):
        GatewayConfig.from_env({"ACCESS_POLICY": bad})
    with pytest.raises(ConfigError, match="ACCESS_POLICY is malformed"):
        QueryConfig.from_env({"ACCESS_POLICY": bad})
    with pytest.raises(ConfigError, match="rule 0 of source 'sales' matches nobody"):
        GatewayConfig.from_env({"ACCESS_POLICY": '{"sources": {"sales": [{"role": "x"}]}}'})
    path = tmp_path / "policy.yaml"
    path.write_text("sources:\n  sales:\n    - domains: [example.com]\n      role: viewer\n")
    assert GatewayConfig.from_env({"ACCESS_POLICY": str(path)}).access_policy.roles("sales") == ("viewer",)
    path.write_text("sources: [1, 2")
    with pytest.raises(ConfigError, match=f"ACCESS_POLICY \\({path}\\) is not valid YAML"):
        GatewayConfig.from_env({"ACCESS_POLICY": str(path)})


def test_under_oidc_a_source_without_a_rule_is_closed_and_in_dev_open() -> None:
    from services.gateway.access import visible_sources

    rules = json.dumps({"sources": {"sales": [{"domains": ["example.com"]}]}})
    oidc = GatewayConfig.from_env({"AUTH_MODE": "oidc", "OIDC_ISSUER": "https://issuer.example.com", "OIDC_AUDIENCE": "app", "ACCESS_POLICY": rules})
    dev = GatewayConfig.from_env({"AUTH_MODE": "dev", "ACCESS_POLICY": rules})
    session = {"user": {"uid": "u", "email": "x@EXAMPLE.com"}}
    assert list(visible_sources(oidc, session, ["default", "sales", "other"])) == ["sales"]
    assert list(visible_sources(dev, session, ["default", "sales", "other"])) == ["default", "sales", "other"]
    stranger = {"user": {"uid": "v", "email": "v@elsewhere.org"}}
    assert list(visible_sources(oidc, stranger, ["default", "sales"])) == []
    unset = GatewayConfig.from_env({"AUTH_MODE": "oidc", "OIDC_ISSUER": "https://issuer.example.com", "OIDC_AUDIENCE": "app"})
    assert list(visible_sources(unset, session, ["default", "sales"])) == []  # no policy: every source is without a rule, so closed
    closed = GatewayConfig.from_env({"AUTH_MODE": "oidc", "OIDC_ISSUER": "https://issuer.example.com", "OIDC_AUDIENCE": "app", "ACCESS_POLICY": '{"sources": {}}'})
    assert list(visible_sources(closed, session, ["default", "sales"])) == []


async def test_dev_login_refuses_malformed_groups(gateway: Gateway) -> None:
    client = await gateway.make(gateway.server, headers={"Sec-Fetch-Site": "same-origin"})
    async with client.post("/auth/login", json={"email": "g@example.com", "name": "G", "groups": "analysts"}) as response:
        assert response.status == 400 and "'groups'" in (await response.json())["error"]["message"]
    async with client.get("/api/me") as response:
        assert response.status == 401  # no session was opened


# --- database roles -----------------------------------------------------------------------


async def test_a_column_the_role_lacks_is_refused_by_postgresql_for_the_person_and_the_model(setup: Setup, aiohttp_client: ClientFactory, aiohttp_server: ServerFactory) -> None:
    fake = await FakeLLM().start()
    try:
        env = setup.env | {"LLM_BASE_URL": fake.base_url, "LLM_MODEL": fake_llm.MODEL, "LLM_API_KEY": "k"}
        gw = Gateway(await aiohttp_server(create_app(GatewayConfig.from_env(env))), aiohttp_client)
        analyst = await gw.user(f"a-{uuid.uuid4().hex[:6]}@example.com", ["analysts"], uid="user-a")
        status, parts, _ = await query(analyst, f"SELECT salary FROM {setup.schema}.staff", "sales")
        assert status == 200 and "permission denied for table staff" in (stream_error(parts) or "")
        fake.then(fake_llm.tool_calls(("execute_query", {"sql": f"SELECT sum(salary) AS s FROM {setup.schema}.staff", "source": "sales"})), fake_llm.text("no"))
        body = {"id": f"c-{uuid.uuid4().hex[:8]}", "trigger": "submit-message", "messages": [{"id": "m1", "role": "user", "parts": [{"type": "text", "text": "pay?"}]}]}
        async with analyst.post("/api/chat", json=body) as response:
            parts = parse_sse(await response.read())
        assert "permission denied for table staff" in (stream_error(parts) or "")
    finally:
        await fake.stop()


async def test_row_level_security_on_the_user_id_returns_each_user_their_rows(setup: Setup, gateway: Gateway) -> None:
    ada = await gateway.user(f"a-{uuid.uuid4().hex[:6]}@example.com", ["analysts"], uid="user-a")
    cleo = await gateway.user(f"c-{uuid.uuid4().hex[:6]}@example.com", ["analysts"], uid="user-c")
    nobody = await gateway.user(f"n-{uuid.uuid4().hex[:6]}@example.com", ["analysts"], uid="user-n")
    sql = f"SELECT name, current_user = '{setup.analyst}' AS as_role FROM {setup.schema}.staff ORDER BY id"
    results = await asyncio.gather(*(query(c, sql, "sales") for c in (ada, cleo, nobody)))
    assert [rows(parts) for _, parts, _ in results] == [[["Ada", True], ["Alan", True]], [["Cleo", True]], []]


async def test_mariadb_role_grants_decide_which_tables_each_user_reads(setup: Setup, gateway: Gateway) -> None:
    a = await gateway.user(f"a-{uuid.uuid4().hex[:6]}@example.com", ["analysts"])
    b = await gateway.user(f"b-{uuid.uuid4().hex[:6]}@example.com", ["hr"])
    for _ in range(2):  # twice: a pooled connection used by the other user's role keeps none of it
        _, parts, _ = await query(a, "SELECT v FROM t_a", "my")
        assert rows(parts) == [["for-a"]]
        _, parts, _ = await query(a, "SELECT v FROM t_b", "my")
        assert "denied" in (stream_error(parts) or "")
        _, parts, _ = await query(b, "SELECT v FROM t_b", "my")
        assert rows(parts) == [["for-b"]]
        _, parts, _ = await query(b, "SELECT v FROM t_a", "my")
        assert "denied" in (stream_error(parts) or "")


async def test_a_policy_role_that_can_write_or_is_not_granted_refuses_its_source_at_start(pg_reader: PostgresReader, my_reader: MysqlReader, setup: Setup) -> None:
    tag = uuid.uuid4().hex[:8]
    login, writer, stranger, password = f"acc_rw_{tag}", f"acc_writer_{tag}", f"acc_stranger_{tag}", secrets.token_hex(8)
    admin = await asyncpg.connect(pg_reader.admin_url)
    await admin.execute(f"CREATE ROLE {login} LOGIN PASSWORD '{password}'; CREATE ROLE {writer} NOLOGIN; CREATE ROLE {stranger} NOLOGIN")
    try:
        await admin.execute(f"GRANT USAGE ON SCHEMA {setup.schema} TO {writer}; GRANT SELECT, INSERT ON {setup.schema}.notes TO {writer}; GRANT {writer} TO {login}")
        url = with_account(pg_reader.admin_url, login, password)
        for role, expected in ((writer, f"role '{writer}': INSERT on table {setup.schema}.notes"), (stranger, f"role '{stranger}' is not granted to '{login}'")):
            sources = Sources({"w": url}, EngineSettings(), roles={"w": (role,)})
            try:
                with pytest.raises(ServiceError) as caught:
                    await sources.open(sources.resolve("w"))
                assert expected in caught.value.message and "docs/access.md" in caught.value.message
            finally:
                await sources.close()
        mysql = Sources({"m": my_reader.url(setup.my_database)}, EngineSettings(), roles={"m": (setup.my_a, f"acc_none_{tag}")})
        try:
            with pytest.raises(ServiceError, match=f"role 'acc_none_{tag}' is not granted"):
                await mysql.open(mysql.resolve("m"))
        finally:
            await mysql.close()
        ok = Sources({"m": my_reader.url(setup.my_database)}, EngineSettings(), roles={"m": (setup.my_a, setup.my_b)})
        try:
            await ok.open(ok.resolve("m"))  # read-only roles granted to the account: served
        finally:
            await ok.close()
    finally:
        await admin.execute(f"DROP OWNED BY {writer}; DROP ROLE {login}; DROP ROLE {writer}; DROP ROLE {stranger}")
        await admin.close()


async def test_a_mariadb_connection_keeps_no_role_after_the_query_that_took_it(setup: Setup, my_reader: MysqlReader) -> None:
    sources = Sources({"m": my_reader.url(setup.my_database)}, EngineSettings(pool_size=1), roles={"m": (setup.my_a,)})
    try:
        engine = await sources.open(sources.resolve("m"))
        assert [row async for row in engine.iterate("SELECT v FROM t_a", 5.0, caller=Caller(role=setup.my_a))] == [("for-a",)]
        with pytest.raises(ServiceError, match="denied"):  # the one pooled connection, reset: the account alone
            [row async for row in engine.iterate("SELECT v FROM t_a", 5.0)]
    finally:
        await sources.close()


# --- no cross-user visibility -----------------------------------------------------------------


async def test_no_allowed_route_shows_another_users_running_sql(setup: Setup, gateway: Gateway) -> None:
    a = await gateway.user(f"a-{uuid.uuid4().hex[:6]}@example.com", ["analysts"], uid="user-a")
    b = await gateway.user(f"b-{uuid.uuid4().hex[:6]}@example.com", ["analysts"], uid="user-b")
    marker = f"secret_{uuid.uuid4().hex[:10]}"
    running = asyncio.create_task(query(a, f"SELECT pg_sleep(3) AS {marker}", "sales"))
    admin = await asyncpg.connect(setup.pg_admin)
    try:

        async def visible_to_admin() -> bool:
            return bool(await admin.fetchval("SELECT count(*) FROM pg_stat_activity WHERE query LIKE $1 AND state = 'active'", f"%{marker}%"))

        await eventually(visible_to_admin, "user A's query to run")
        refused = [
            "SELECT query FROM pg_stat_activity",
            "SELECT * FROM pg_catalog.pg_stat_activity",
            'SELECT * FROM "pg_stat_activity"',
            "SELECT pg_stat_get_activity(NULL)",
            "SELECT pg_stat_get_backend_activity(s) FROM pg_stat_get_backend_idset() AS s",
            "WITH x AS (SELECT * FROM pg_stat_activity) SELECT * FROM x",
        ]
        for sql in refused:
            status, parts, _ = await query(b, sql, "sales")
            assert status == 200 and "QUERY_ALLOW_ACTIVITY_VIEWS" in (stream_error(parts) or ""), sql
        allowed = ["SELECT * FROM pg_locks", "SELECT current_query()", "SELECT * FROM pg_prepared_statements", "SELECT * FROM pg_cursors"]
        for sql in allowed:
            _, parts, _ = await query(b, sql, "sales")
            assert marker not in json.dumps(parts), sql
        _, parts, _ = await query(b, "SELECT * FROM information_schema.PROCESSLIST", "my")
        assert "QUERY_ALLOW_ACTIVITY_VIEWS" in (stream_error(parts) or "")
        assert (await running)[0] == 200
    finally:
        await admin.close()


# --- audit trail ------------------------------------------------------------------------------


async def test_every_query_of_a_mixed_run_has_exactly_one_audit_event_with_its_fields(setup: Setup, aiohttp_client: ClientFactory, aiohttp_server: ServerFactory) -> None:
    fake = await FakeLLM().start()
    try:
        env = setup.env | {"LLM_BASE_URL": fake.base_url, "LLM_MODEL": fake_llm.MODEL, "LLM_API_KEY": "k"}
        gw = Gateway(await aiohttp_server(create_app(GatewayConfig.from_env(env))), aiohttp_client)
        email = f"mix-{uuid.uuid4().hex[:6]}@example.com"
        uid = "user-a"  # owns two rows of staff (RLS); events are told apart by the unique email
        user = await gw.user(email, ["analysts"], uid=uid)
        run = uuid.uuid4().hex[:8]
        plan = {
            f"{run}-ok": (f"SELECT name FROM {setup.schema}.staff", "sales", "ok"),
            f"{run}-refused": ("DELETE FROM t_a", "my", "refused"),
            f"{run}-error": ("SELECT no_such_column FROM t_a", "my", "error"),
            f"{run}-denied": ("SELECT 1", "hr", "refused"),
        }
        for rid, (sql, source, _) in plan.items():
            await query(user, sql, source, request_id=rid)
        # Cancelled: the browser leaves while the database works.
        async with user.post("/api/query", json={"sql": "SELECT pg_sleep(5) AS slow", "source": "sales"}, headers={"X-Request-Id": f"{run}-cancelled"}) as response:
            await response.content.readline()
        fake.then(fake_llm.tool_calls(("execute_query", {"sql": "SELECT v FROM t_a", "source": "my"})), fake_llm.text("done"))
        conversation = f"c-{run}"
        body = {"id": conversation, "trigger": "submit-message", "messages": [{"id": "m1", "role": "user", "parts": [{"type": "text", "text": "q"}]}]}
        async with user.post("/api/chat", json=body, headers={"X-Request-Id": f"{run}-chat"}) as response:
            parts = parse_sse(await response.read())
        turn = next(p["messageId"] for p in parts if isinstance(p, dict) and p["type"] == "start")

        async def all_recorded() -> bool:
            found = await audit_events(setup.env, user=email, kind="query")
            return len(found) >= len(plan) + 2

        await eventually(all_recorded, "the audit events", timeout=15)
        found = await audit_events(setup.env, user=email, kind="query")
        by_request: dict[str, list[AuditQuery]] = {}
        for event in found:
            assert isinstance(event, AuditQuery)
            by_request.setdefault(event.request_id or "", []).append(event)
        assert sorted(by_request) == sorted([*plan, f"{run}-cancelled", f"{run}-chat"])
        assert all(len(events) == 1 for events in by_request.values())
        for rid, (sql, source, outcome) in plan.items():
            event = by_request[rid][0]
            assert (event.sql, event.source, event.outcome, event.email, event.user_id) == (sql, source, outcome, email, uid)
        ok = by_request[f"{run}-ok"][0]
        assert ok.rows == 2 and ok.bytes > 0 and ok.role == setup.analyst and ok.duration_ms > 0 and ok.reason is None
        assert by_request[f"{run}-refused"][0].reason and by_request[f"{run}-denied"][0].reason == "unknown source 'hr'; GET /api/sources lists yours"
        assert by_request[f"{run}-cancelled"][0].outcome == "cancelled"
        chat = by_request[f"{run}-chat"][0]
        assert (chat.outcome, chat.sql, chat.role, chat.conversation_id, chat.model, chat.turn, chat.rows) == ("ok", "SELECT v FROM t_a", setup.my_a, conversation, fake_llm.MODEL, turn, 1)
        sign_ins = await audit_events(setup.env, user=email, kind="sign_in")
        assert len(sign_ins) == 1 and isinstance(sign_ins[0], AuditSignIn) and sign_ins[0].method == "dev"
    finally:
        await fake.stop()


async def test_the_audit_trail_is_for_admins_only_and_filters(setup: Setup, gateway: Gateway) -> None:
    uid = f"f-{uuid.uuid4().hex[:6]}"
    user = await gateway.user(f"{uid}@example.com", ["analysts"], uid=uid)
    await query(user, "SELECT 1 AS one", "sales")
    await query(user, "SELECT 2 AS two")
    for who in (user, await gateway.make(gateway.server)):
        async with who.get(f"/api/audit?user={uid}") as response:
            assert response.status == 404
            assert await response.json() == {"error": {"code": "not_found", "message": "Not Found"}}
        async with who.get("/api/nothing-here") as response:  # the same answer as a path that does not exist
            assert response.status == 404
    admin = await gateway.user(ADMIN, [])
    async with admin.get("/api/me") as response:
        assert (await response.json())["admin"] is True

    async def listed() -> list[dict[str, Any]]:
        async with admin.get(f"/api/audit?user={uid}&kind=query&source=sales") as response:
            assert response.status == 200
            return (await response.json())["events"]

    await eventually(lambda: _nonempty(listed), "the event")
    found = await listed()
    assert [(e["kind"], e["sql"], e["source"]) for e in found] == [("query", "SELECT 1 AS one", "sales")]
    # The same through the operator's command, as JSON lines.
    env = service_env(NATS_URL=setup.env["NATS_URL"], NATS_SUBJECT_PREFIX=setup.env["NATS_SUBJECT_PREFIX"], AUDIT_STREAM=setup.env["AUDIT_STREAM"])
    command = [sys.executable, "-m", "services.session.admin", "audit", "--user", uid, "--source", "sales", "--kind", "query", "--format", "jsonl"]
    process = await asyncio.create_subprocess_exec(*command, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await process.communicate()
    assert process.returncode == 0, err.decode()
    assert [(e["kind"], e["sql"], e["user_id"]) for e in map(json.loads, out.decode().splitlines())] == [("query", "SELECT 1 AS one", uid)]
    async with admin.get("/api/audit?limit=0") as response:
        assert response.status == 400
    async with admin.get("/api/audit?since=yesterday") as response:
        assert response.status == 400 and "'since'" in (await response.json())["error"]["message"]


async def _nonempty(fetch: Callable[[], Awaitable[list[Any]]]) -> bool:
    return bool(await fetch())


async def test_two_prefixes_on_one_nats_each_keep_their_own_audit_trail(nats_server: NatsServer, infra: Infra, aiohttp_client: ClientFactory, aiohttp_server: ServerFactory) -> None:
    """Without AUDIT_STREAM each subject prefix names its own stream: both gateways store their events, and each reads back only its own."""
    tag = uuid.uuid4().hex[:6]
    prefixes = [f"aud{tag}", f"aud{tag}.two"]  # the second holds a '.', which no stream name may
    assert [default_stream("dbgenie"), default_stream(prefixes[0])] == ["AUDIT", f"AUDIT_{prefixes[0]}"]
    common = {"NATS_URL": nats_server.url, "REDIS_URL": infra.redis_url, "AUTH_MODE": "dev", "ADMIN_EMAILS": ADMIN, "OPS_PORT": "0"}
    envs = [common | {"NATS_SUBJECT_PREFIX": prefix, "SESSION_KV_BUCKET": f"sessions_{tag}{i}"} for i, prefix in enumerate(prefixes)]
    async with AsyncExitStack() as stack:
        admins = []
        for i, env in enumerate(envs):
            await stack.enter_async_context(create_session_service(SessionConfig.from_env(env)))
            gw = Gateway(await aiohttp_server(create_app(GatewayConfig.from_env(env))), aiohttp_client)
            admins.append(await gw.user(ADMIN, [], uid=f"admin-{tag}-{i}"))

        async def sign_ins(i: int) -> list[str]:
            async with admins[i].get("/api/audit?kind=sign_in") as response:
                assert response.status == 200, await response.text()
                return [event["user_id"] for event in (await response.json())["events"]]

        for i in range(2):
            await eventually(lambda i=i: _nonempty(lambda: sign_ins(i)), f"the sign-in on gateway {i}")
            assert await sign_ins(i) == [f"admin-{tag}-{i}"]

    # In JetStream itself: one stream per prefix, each on its own prefix's subjects and holding its own event.
    nc = await nats.connect(nats_server.url)
    try:
        streams = {info.config.name: info.config.subjects for info in await nc.jetstream().streams_info()}
        assert {name: subjects for name, subjects in streams.items() if name.startswith("AUDIT")} == {default_stream(p): [f"{p}.audit.>"] for p in prefixes}
        for i, prefix in enumerate(prefixes):
            stored = await read_events(nc, default_stream(prefix), Subjects(prefix), AuditFilter(kind="sign_in"))
            assert [e.user_id for e in stored] == [f"admin-{tag}-{i}"]
    finally:
        await nc.close()
    # The operator's command finds the second trail from NATS_URL and NATS_SUBJECT_PREFIX alone.
    env = service_env(NATS_URL=nats_server.url, NATS_SUBJECT_PREFIX=prefixes[1])
    command = [sys.executable, "-m", "services.session.admin", "audit", "--kind", "sign_in", "--format", "jsonl"]
    process = await asyncio.create_subprocess_exec(*command, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await process.communicate()
    assert process.returncode == 0, err.decode()
    assert [json.loads(line)["user_id"] for line in out.decode().splitlines()] == [f"admin-{tag}-1"]


def test_an_explicit_audit_stream_wins_over_the_prefix_and_a_bad_one_is_refused_naming_it() -> None:
    env = {"NATS_SUBJECT_PREFIX": "acme", "AUDIT_STREAM": "MINE"}
    assert GatewayConfig.from_env(env).audit_stream == read_stream(env, "acme") == "MINE"
    assert GatewayConfig.from_env({"NATS_SUBJECT_PREFIX": "acme"}).audit_stream == read_stream({}, "acme") == "AUDIT_acme"
    for read in (lambda: GatewayConfig.from_env({"AUDIT_STREAM": "A.B"}), lambda: read_stream({"AUDIT_STREAM": "A.B"}, "acme")):
        with pytest.raises(ConfigError, match="AUDIT_STREAM must be 1-64 letters"):
            read()


async def test_with_audit_required_and_the_stream_gone_a_query_gets_503_and_runs_nowhere(setup: Setup, aiohttp_client: ClientFactory, aiohttp_server: ServerFactory) -> None:
    gw = Gateway(await aiohttp_server(create_app(GatewayConfig.from_env(setup.env | {"AUDIT_REQUIRED": "1"}))), aiohttp_client)
    user = await gw.user(f"r-{uuid.uuid4().hex[:6]}@example.com", ["analysts"])
    status, parts, _ = await query(user, "SELECT 1 AS one", "sales")
    assert status == 200 and rows(parts) == [[1]]
    nc = await nats.connect(setup.env["NATS_URL"])
    try:
        await nc.jetstream().delete_stream(setup.env["AUDIT_STREAM"])
        before = executed("sales")
        status, _, body = await query(user, "SELECT 2 AS two", "sales")
        assert status == 503 and "AUDIT_REQUIRED" in body["error"]["message"]
        assert executed("sales") == before
    finally:
        await nc.close()


async def test_a_jetstream_restart_mid_run_loses_no_audit_event(
    setup: Setup, nats_server: NatsServer, infra: Infra, tmp_path: Path, aiohttp_client: ClientFactory, aiohttp_server: ServerFactory
) -> None:
    prefix = f"accr{uuid.uuid4().hex[:8]}"
    env = setup.env | {"NATS_URL": nats_server.url, "NATS_SUBJECT_PREFIX": prefix, "SESSION_KV_BUCKET": f"sessions_{prefix}", "AUDIT_STREAM": "AUDIT"}
    env["QUERY_SAMPLE_PATH"] = str(tmp_path / "sample.db")
    async with AsyncExitStack() as stack:
        session = await stack.enter_async_context(create_session_service(SessionConfig.from_env(env)))
        query_service = await stack.enter_async_context(create_query_service(QueryConfig.from_env(env)))
        gw = Gateway(await aiohttp_server(create_app(GatewayConfig.from_env(env))), aiohttp_client)
        uid = f"restart-{uuid.uuid4().hex[:6]}"
        user = await gw.user(f"{uid}@example.com", ["analysts"], uid=uid)
        sent = 0
        for i in range(3):
            await query(user, f"SELECT {i} AS n")
            sent += 1
        # A query whose stream is cut by the restart: its event is recorded while JetStream is away.
        async with user.post("/api/query", json={"sql": "SELECT pg_sleep(2) AS slow", "source": "sales"}) as response:
            await response.content.readline()
            nats_server.stop()
            await response.read()
        sent += 1
        nats_server.start()
        clients = [gw.server.app[keys.NATS_CLIENT], session.nc, query_service.nc]

        async def reconnected() -> bool:
            return all(nc.is_connected for nc in clients)

        await eventually(reconnected, "every service to reconnect", timeout=30)
        for i in range(3):
            status, _, _ = await query(user, f"SELECT {i + 10} AS n")
            assert status == 200
            sent += 1

        async def all_there() -> bool:
            try:
                return len(await audit_events(env, user=uid, kind="query")) >= sent
            except Exception:
                return False

        await eventually(all_there, "every audit event", timeout=30)
        found = await audit_events(env, user=uid, kind="query")
        assert len(found) == len({e.id for e in found}) == sent


async def test_an_erasure_by_the_admin_command_is_in_the_audit_trail(setup: Setup, gateway: Gateway) -> None:
    """(The gateway declares the audit stream at start.)"""
    uid = f"erase-{uuid.uuid4().hex[:8]}"
    env = service_env(**{k: setup.env[k] for k in ("NATS_URL", "NATS_SUBJECT_PREFIX", "REDIS_URL")})
    process = await asyncio.create_subprocess_exec(sys.executable, "-m", "services.session.admin", "erase", "--user", uid, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await process.communicate()
    assert process.returncode == 0 and b"erased" in out and not err, err.decode()
    found = await audit_events(setup.env, user=uid, kind="erasure")
    assert [(type(e).__name__, e.user_id, e.by) for e in found] == [("AuditErasure", uid, "admin erase")]


def test_groups_come_from_the_claim_auth_groups_claim_names() -> None:
    from services.gateway.auth.tokens import user_from_claims

    claims = {"sub": "u1", "email": "u@example.com", "email_verified": True, "roles": ["analysts", 7, "hr"], "groups": ["ignored"]}
    assert user_from_claims(claims, "roles")["groups"] == ["analysts", "hr"]
    assert user_from_claims({**claims, "roles": "analysts"}, "roles")["groups"] == ["analysts"]
    assert "groups" not in user_from_claims(claims)


async def test_under_oidc_the_gateway_logs_once_which_sources_nobody_can_reach(setup: Setup, aiohttp_server: ServerFactory) -> None:
    env = setup.env | {"AUTH_MODE": "oidc", "OIDC_ISSUER": "https://issuer.example.com", "OIDC_AUDIENCE": "app"}
    with structlog.testing.capture_logs() as logs:
        await aiohttp_server(create_app(GatewayConfig.from_env(env)))

        async def logged() -> bool:
            return any(entry["event"] == "sources_unreachable" for entry in logs)

        await eventually(logged, "the sources_unreachable line")
    [entry] = [entry for entry in logs if entry["event"] == "sources_unreachable"]
    assert entry["sources"] == ["default"]


def test_activity_views_pass_the_guard_only_with_query_allow_activity_views() -> None:
    from services.query.guard import check_read_only

    with pytest.raises(ServiceError, match="QUERY_ALLOW_ACTIVITY_VIEWS"):
        check_read_only("SELECT query FROM pg_stat_activity", "postgres")
    check_read_only("SELECT query FROM pg_stat_activity", "postgres", allow_activity_views=True)
    check_read_only("SELECT * FROM information_schema.processlist", "mysql", allow_activity_views=True)
    assert QueryConfig.from_env({"QUERY_ALLOW_ACTIVITY_VIEWS": "1"}).allow_activity_views is True


async def test_sign_out_is_in_the_audit_trail(setup: Setup, gateway: Gateway) -> None:
    email = f"out-{uuid.uuid4().hex[:6]}@example.com"
    user = await gateway.user(email, [])
    async with user.post("/auth/logout") as response:
        assert response.status == 200

    async def recorded() -> bool:
        return len(await audit_events(setup.env, user=email, kind="sign_out")) == 1

    await eventually(recorded, "the sign-out event")


async def test_while_the_stream_cannot_take_events_a_full_buffer_drops_them_and_counts_the_drops() -> None:
    from services.gateway.audit import AuditTrail

    def dropped() -> float:
        return REGISTRY.get_sample_value("gateway_audit_events_dropped_total") or 0.0

    server = NatsServer(jetstream=False).start()  # a real NATS without JetStream: nothing can be stored
    try:
        nc = await nats.connect(server.url)
        config = GatewayConfig.from_env({"AUDIT_BUFFER": "2"})
        trail = AuditTrail(nc, Subjects("drop"), config)
        before = dropped()
        with structlog.testing.capture_logs() as logs:
            await trail.start()
            for i in range(5):
                trail.record(AuditSignIn(id=f"e{i}", time=0.0, user_id=f"u{i}", method="dev"))

            async def warned() -> bool:
                return any(entry["event"] == "audit_events_buffered" for entry in logs)

            await eventually(warned, "the buffered warning")
            await trail.stop()
            await nc.close()
        assert dropped() - before == 3
        assert [entry["user_id"] for entry in logs if entry["event"] == "audit_event_dropped"] == ["u2", "u3", "u4"]
        assert [entry["events"] for entry in logs if entry["event"] == "audit_events_lost_on_stop"] == [2]
    finally:
        server.cleanup()
