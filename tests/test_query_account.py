"""The database account as a layer of its own: privileged accounts are refused, pooled connections are reset, cancels are named.

Against the real PostgreSQL and MariaDB. Every role, user, schema and database made here has
a unique name and is dropped at the end. The engine-level tests call the engines directly,
without the guard, so that only the account and the engine stand between a query and the
database.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from urllib.parse import urlsplit

import asyncmy
import asyncpg
import pytest
import yaml
from structlog.testing import capture_logs

from services.query import engines
from services.query.config import QueryConfig
from services.query.engines import EngineSettings, Sources, create_engine
from services.query.privileges import Grant, mysql_findings, parse_grants
from shared.errors import QUERY_FAILED, QUERY_REFUSED, UNAVAILABLE, ConfigError, ServiceError
from tests.client import browser, login, run_query
from tests.conftest import Databases, MysqlReader, PostgresReader, SystemFactory, mysql_connect_args, with_account
from tests.harness import eventually
from tests.readers import mariadb_database, postgres_schema

SETTINGS = EngineSettings(pool_size=1, connect_timeout_s=10.0)
ROOT = Path(__file__).resolve().parent.parent
READER_SQL = ROOT / "deploy" / "postgres" / "reader.sql"


async def rows(sources: Sources, source: str, sql: str) -> list[tuple]:
    engine = await sources.open(sources.resolve(source))
    return [tuple(row) async for row in engine.iterate(sql, 30)]


def error_part(parts: list) -> str:
    errors = [p["errorText"] for p in parts if p != "[DONE]" and p["type"] == "tool-output-error"]
    assert len(errors) == 1, parts
    return errors[0]


def data_rows(parts: list) -> list[list]:
    return [row for p in parts if p != "[DONE]" and p["type"] == "data-query-rows" for row in p["data"]["rows"]]


# --- PostgreSQL: the privilege check ---------------------------------------------------------


@pytest.fixture(scope="module")
async def acct_schema(pg_reader: PostgresReader) -> AsyncIterator[str]:
    async with postgres_schema(pg_reader, "CREATE TABLE {s}.t (a int, b text); INSERT INTO {s}.t VALUES (1, 'one')") as schema:
        yield schema


PgAccount = Callable[[str], Awaitable[tuple[str, str]]]


@pytest.fixture
async def pg_account(databases: Databases, acct_schema: str) -> AsyncIterator[PgAccount]:
    """make(setup) -> (role, url): a login role that may read acct_schema, plus whatever `setup` grants it.

    `setup` is SQL with {role} and {schema}; extra roles it creates are named {role}_<suffix>.
    """
    admin = await asyncpg.connect(databases.postgres)
    made: list[str] = []

    async def make(setup: str) -> tuple[str, str]:
        role = f"dbg_acct_{uuid.uuid4().hex[:10]}"
        made.append(role)
        await admin.execute(
            f"CREATE ROLE {role} LOGIN PASSWORD 'pw'; GRANT USAGE ON SCHEMA {acct_schema} TO {role}; GRANT SELECT ON {acct_schema}.t TO {role};" + setup.format(role=role, schema=acct_schema)
        )
        return role, with_account(databases.postgres, role, "pw")

    try:
        yield make
    finally:
        for role in made:
            await admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename LIKE $1", f"{role}%")
            for (name,) in await admin.fetch("SELECT rolname FROM pg_roles WHERE rolname LIKE $1 ORDER BY length(rolname) DESC", f"{role}%"):
                await admin.execute(f"DROP OWNED BY {name}; DROP ROLE {name}")
        await admin.close()


async def pg_sessions_of(databases: Databases, role: str) -> int:
    conn = await asyncpg.connect(databases.postgres)
    try:
        return await conn.fetchval("SELECT count(*) FROM pg_stat_activity WHERE usename = $1", role)
    finally:
        await conn.close()


async def test_a_postgres_reader_role_passes_the_check_and_is_served(pg_reader: PostgresReader, acct_schema: str) -> None:
    sources = Sources({"default": pg_reader.url}, SETTINGS)
    try:
        with capture_logs() as logs:
            assert await rows(sources, "default", f"SELECT a, b FROM {acct_schema}.t") == [(1, "one")]
        opened = [e for e in logs if e["event"] == "source_opened"]
        assert [e["account"] for e in opened] == [pg_reader.role]
        assert not [e for e in logs if e["log_level"] in ("warning", "error")]
    finally:
        await sources.close()


@pytest.mark.parametrize(
    ("setup", "privilege"),
    [
        ("ALTER ROLE {role} SUPERUSER", "superuser"),
        ("GRANT pg_read_server_files TO {role}", "member of pg_read_server_files"),
        ("GRANT pg_write_server_files TO {role}", "member of pg_write_server_files"),
        ("GRANT pg_execute_server_program TO {role}", "member of pg_execute_server_program"),
        ("GRANT pg_signal_backend TO {role}", "member of pg_signal_backend"),
        # Inherited through a role of our own, two levels down.
        ("CREATE ROLE {role}_a; CREATE ROLE {role}_b; GRANT pg_read_server_files TO {role}_b; GRANT {role}_b TO {role}_a; GRANT {role}_a TO {role}", "member of pg_read_server_files"),
        ("CREATE TABLE {schema}.owned_{role} (a int); ALTER TABLE {schema}.owned_{role} OWNER TO {role}", "owner of table {schema}.owned_{role}"),
        ("GRANT INSERT ON {schema}.t TO {role}", "INSERT on table {schema}.t"),
        ("GRANT UPDATE (b) ON {schema}.t TO {role}", "UPDATE on columns of table {schema}.t"),
        ("GRANT TRUNCATE ON {schema}.t TO {role}", "TRUNCATE on table {schema}.t"),
        ("CREATE ROLE {role}_w; GRANT DELETE ON {schema}.t TO {role}_w; GRANT {role}_w TO {role}", "DELETE on table {schema}.t"),
        ("GRANT CREATE ON SCHEMA {schema} TO {role}", "CREATE on schema {schema}"),
        ("CREATE SEQUENCE {schema}.seq_{role}; GRANT USAGE ON SEQUENCE {schema}.seq_{role} TO {role}", "USAGE on sequence {schema}.seq_{role}"),
        ("ALTER ROLE {role} CREATEROLE", "CREATEROLE"),
        ("ALTER ROLE {role} CREATEDB", "CREATEDB"),
        ("ALTER ROLE {role} BYPASSRLS", "BYPASSRLS"),
    ],
)
async def test_a_privileged_postgres_account_is_refused_naming_the_source_and_the_privilege(pg_account: PgAccount, databases: Databases, acct_schema: str, setup: str, privilege: str) -> None:
    role, url = await pg_account(setup)
    privilege = privilege.format(role=role, schema=acct_schema)
    sources = Sources({"default": "sqlite:///unused.db", "warehouse": url}, SETTINGS)
    try:
        with capture_logs() as logs, pytest.raises(ServiceError) as caught:
            await sources.open(sources.resolve("warehouse"))
        error = caught.value
        assert error.code == UNAVAILABLE
        assert "source 'warehouse' is not served" in error.message and repr(role) in error.message
        assert privilege in error.message
        assert "docs/query-account.md" in error.message and "QUERY_ALLOW_PRIVILEGED=1" in error.message
        [refused] = [e for e in logs if e["event"] == "source_refused"]
        assert refused["log_level"] == "error" and privilege in refused["privileges"]
        # The refused source keeps answering the same error, and it holds no connection open.
        with pytest.raises(ServiceError) as again:
            await sources.open(sources.resolve("warehouse"))
        assert again.value.message == error.message
        await eventually(lambda: _no_sessions(databases, role), "the refused source's connections to close")
    finally:
        await sources.close()


async def test_revoking_the_privilege_serves_the_source_without_a_restart(pg_account: PgAccount, databases: Databases, acct_schema: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(engines, "REFUSAL_RECHECK_S", 0.0)  # ask again at once instead of after 30 s
    role, url = await pg_account("GRANT DELETE ON {schema}.t TO {role}")
    sources = Sources({"default": url}, SETTINGS)
    try:
        with pytest.raises(ServiceError, match="DELETE on table"):
            await sources.open(sources.resolve("default"))
        admin = await asyncpg.connect(databases.postgres)
        try:
            await admin.execute(f"REVOKE DELETE ON {acct_schema}.t FROM {role}")
        finally:
            await admin.close()
        assert await rows(sources, "default", f"SELECT a FROM {acct_schema}.t") == [(1,)]
    finally:
        await sources.close()


async def _no_sessions(databases: Databases, role: str) -> bool:
    return await pg_sessions_of(databases, role) == 0


async def test_query_allow_privileged_serves_a_postgres_superuser_with_a_warning_and_the_read_only_layers_still_hold(pg_account: PgAccount, databases: Databases, acct_schema: str) -> None:
    role, url = await pg_account("ALTER ROLE {role} SUPERUSER")
    sources = Sources({"default": url}, SETTINGS, allow_privileged=True)
    try:
        with capture_logs() as logs:
            assert await rows(sources, "default", f"SELECT a FROM {acct_schema}.t") == [(1,)]
        [warning] = [e for e in logs if e["event"] == "source_privileged"]
        assert warning["log_level"] == "warning" and warning["account"] == role and "superuser" in warning["privileges"]
        with pytest.raises(ServiceError) as caught:
            await rows(sources, "default", f"INSERT INTO {acct_schema}.t VALUES (2, 'two') RETURNING a")
        assert caught.value.code == QUERY_REFUSED
        admin = await asyncpg.connect(databases.postgres)
        try:
            assert await admin.fetch(f"SELECT a, b FROM {acct_schema}.t") == [(1, "one")]
        finally:
            await admin.close()
    finally:
        await sources.close()


# --- MariaDB: the privilege check ------------------------------------------------------------


@pytest.fixture(scope="module")
async def acct_db(my_reader: MysqlReader) -> AsyncIterator[str]:
    async with mariadb_database(my_reader, ("CREATE TABLE t (a INT, b VARCHAR(10))", "INSERT INTO t VALUES (1, 'one')")) as url:
        yield urlsplit(url).path.lstrip("/")


MyAccount = Callable[[str], Awaitable[tuple[str, str]]]


@pytest.fixture
async def my_account(databases: Databases, acct_db: str) -> AsyncIterator[MyAccount]:
    """make(setup) -> (user, url): a user with SELECT and SHOW VIEW on acct_db, plus what `setup` grants.

    `setup` is ';'-separated SQL with {user} and {db}; roles it creates are {user}_r1 and {user}_r2.
    """
    admin = await asyncmy.connect(**mysql_connect_args(databases.mysql))
    made: list[str] = []

    async def make(setup: str) -> tuple[str, str]:
        user = f"dbg_acct_{uuid.uuid4().hex[:10]}"
        made.append(user)
        async with admin.cursor() as cur:
            await cur.execute(f"CREATE USER '{user}'@'%' IDENTIFIED BY 'pw'")
            await cur.execute(f"GRANT SELECT, SHOW VIEW ON `{acct_db}`.* TO '{user}'@'%'")
            for statement in filter(None, (s.strip() for s in setup.format(user=user, db=acct_db).split(";"))):
                await cur.execute(statement)
        return user, with_account(databases.mysql, user, "pw", acct_db)

    try:
        yield make
    finally:
        async with admin.cursor() as cur:
            for user in made:
                await cur.execute(f"DROP USER IF EXISTS '{user}'@'%'")
                await cur.execute(f"DROP ROLE IF EXISTS {user}_r1")
                await cur.execute(f"DROP ROLE IF EXISTS {user}_r2")
        admin.close()


async def test_a_mariadb_reader_account_passes_the_check_and_is_served(my_reader: MysqlReader, acct_db: str) -> None:
    sources = Sources({"default": my_reader.url(acct_db)}, SETTINGS)
    try:
        with capture_logs() as logs:
            assert await rows(sources, "default", "SELECT a, b FROM t") == [(1, "one")]
        assert [e["account"] for e in logs if e["event"] == "source_opened"] == [f"{my_reader.user}@%"]
    finally:
        await sources.close()


@pytest.mark.parametrize(
    ("setup", "privilege"),
    [
        ("GRANT FILE ON *.* TO '{user}'@'%'", "FILE ON *.*"),
        ("GRANT SUPER ON *.* TO '{user}'@'%'", "SUPER ON *.*"),
        ("GRANT PROCESS ON *.* TO '{user}'@'%'", "PROCESS ON *.*"),
        ("GRANT INSERT ON `{db}`.* TO '{user}'@'%'", "INSERT ON `{db}`.*"),
        ("GRANT ALL PRIVILEGES ON `{db}`.* TO '{user}'@'%'", "ALL PRIVILEGES ON `{db}`.*"),
        ("GRANT UPDATE (b) ON `{db}`.t TO '{user}'@'%'", "UPDATE ON `{db}`.`t`"),
        ("GRANT SELECT ON `{db}`.* TO '{user}'@'%' WITH GRANT OPTION", "GRANT OPTION ON `{db}`.*"),
        ("CREATE ROLE {user}_r1; GRANT FILE ON *.* TO {user}_r1; GRANT {user}_r1 TO '{user}'@'%'", "FILE ON *.* (through role {user}_r1)"),
        # A role inside a role, never made the default role.
        ("CREATE ROLE {user}_r1; CREATE ROLE {user}_r2; GRANT PROCESS ON *.* TO {user}_r2; GRANT {user}_r2 TO {user}_r1; GRANT {user}_r1 TO '{user}'@'%'", "PROCESS ON *.* (through role {user}_r2)"),
    ],
)
async def test_a_privileged_mariadb_account_is_refused_naming_the_source_and_the_privilege(my_account: MyAccount, setup: str, privilege: str, acct_db: str) -> None:
    user, url = await my_account(setup)
    privilege = privilege.format(user=user, db=acct_db)
    sources = Sources({"default": "sqlite:///unused.db", "shop": url}, SETTINGS)
    try:
        with capture_logs() as logs, pytest.raises(ServiceError) as caught:
            await sources.open(sources.resolve("shop"))
        assert caught.value.code == UNAVAILABLE
        message = caught.value.message
        assert "source 'shop' is not served" in message and f"'{user}@%'" in message and privilege in message
        assert "docs/query-account.md" in message
        [refused] = [e for e in logs if e["event"] == "source_refused"]
        assert privilege in refused["privileges"]
    finally:
        await sources.close()


async def test_query_allow_privileged_serves_a_mariadb_file_account_and_the_read_only_session_still_holds(my_account: MyAccount, databases: Databases, acct_db: str) -> None:
    _, url = await my_account("GRANT FILE ON *.* TO '{user}'@'%'; GRANT INSERT ON `{db}`.* TO '{user}'@'%'")
    sources = Sources({"default": url}, SETTINGS, allow_privileged=True)
    try:
        with capture_logs() as logs:
            assert await rows(sources, "default", "SELECT a FROM t") == [(1,)]
        [warning] = [e for e in logs if e["event"] == "source_privileged"]
        assert "FILE ON *.*" in warning["privileges"]
        with pytest.raises(ServiceError) as caught:
            await rows(sources, "default", "INSERT INTO t VALUES (2, 'two')")
        assert caught.value.code == QUERY_REFUSED
    finally:
        await sources.close()
    admin = await asyncmy.connect(**mysql_connect_args(databases.mysql))
    try:
        async with admin.cursor() as cur:
            await cur.execute(f"SELECT a, b FROM `{acct_db}`.t")
            assert await cur.fetchall() == ((1, "one"),)
    finally:
        admin.close()


def test_show_grants_lines_are_read_as_privileges_and_roles() -> None:
    lines = [
        "GRANT `analyst` TO `u`@`%`",
        "GRANT USAGE ON *.* TO `u`@`%` IDENTIFIED BY PASSWORD '*D821809F681A40A6E379B50D0463EFAE20BDD122'",
        "GRANT SELECT, SHOW VIEW ON `shop`.* TO `u`@`%`",
        "GRANT SELECT (`a`, `b`), INSERT (`c`) ON `shop`.`t` TO `u`@`%`",
        "GRANT EXECUTE ON PROCEDURE `shop`.`p` TO `u`@`%` WITH GRANT OPTION",
        "GRANT `helper` TO `u`@`%` WITH ADMIN OPTION",
        "GRANT FILE ON *.* TO `analyst`",
        "SET DEFAULT ROLE `analyst` FOR `u`@`%`",
    ]
    grants, roles = parse_grants(lines)
    assert roles == ["analyst", "helper"]
    assert Grant("SELECT", "`shop`.`t`", "u@%") in grants and Grant("INSERT", "`shop`.`t`", "u@%") in grants
    assert mysql_findings(grants, "u@%") == [
        "INSERT ON `shop`.`t`",
        "EXECUTE ON PROCEDURE `shop`.`p`",
        "GRANT OPTION ON PROCEDURE `shop`.`p`",
        "ADMIN OPTION ON role helper",
        "FILE ON *.* (through role analyst)",
    ]
    assert mysql_findings(parse_grants(lines[1:3])[0], "u@%") == []


def test_query_allow_privileged_is_off_by_default_and_a_bad_value_names_the_variable() -> None:
    assert QueryConfig.from_env({}).allow_privileged is False
    assert QueryConfig.from_env({"QUERY_ALLOW_PRIVILEGED": "1"}).allow_privileged is True
    with pytest.raises(ConfigError, match="QUERY_ALLOW_PRIVILEGED"):
        QueryConfig.from_env({"QUERY_ALLOW_PRIVILEGED": "maybe"})


# --- The reader role of compose and the Kubernetes dev overlay --------------------------------


async def test_the_example_reader_role_passes_the_check_and_reads_the_demo_schema(databases: Databases) -> None:
    """deploy/postgres/reader.sql, run in a database of its own (its role renamed to be unique here)."""
    suffix = uuid.uuid4().hex[:10]
    database, role = f"acct_demo_{suffix}", f"dbgenie_reader_{suffix}"
    admin = await asyncpg.connect(databases.postgres)
    await admin.execute(f"CREATE DATABASE {database}")
    try:
        owner = await asyncpg.connect(with_account(databases.postgres, *_user_password(databases.postgres), database))
        try:
            await owner.execute(READER_SQL.read_text().replace("dbgenie_reader", role))
        finally:
            await owner.close()
        sources = Sources({"default": with_account(databases.postgres, role, "reader-dev-only", database)}, SETTINGS)
        try:
            assert await rows(sources, "default", "SELECT count(*), count(DISTINCT customer_id) FROM demo.orders") == [(500, 3)]
        finally:
            await sources.close()
    finally:
        await admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1", database)
        await admin.execute(f"DROP DATABASE IF EXISTS {database}")
        await admin.execute(f"DROP ROLE IF EXISTS {role}")
        await admin.close()


def _user_password(url: str) -> tuple[str, str]:
    parts = urlsplit(url)
    return parts.username or "postgres", parts.password or ""


def test_the_kubernetes_dev_overlay_runs_the_same_reader_sql_and_connects_as_the_reader() -> None:
    docs = list(yaml.safe_load_all((ROOT / "deploy" / "k8s" / "overlays" / "dev" / "postgres.yaml").read_text()))
    [init] = [d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"] == "postgres-init"]
    assert init["data"]["reader.sql"] == READER_SQL.read_text()
    [query_secret] = [d for d in docs if d["kind"] == "Secret" and d["metadata"]["name"] == "dbgenie-query"]
    assert query_secret["stringData"]["QUERY_SOURCES"].startswith("demo=postgresql://dbgenie_reader:")
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    assert compose["services"]["query"]["environment"]["QUERY_SOURCES"] == query_secret["stringData"]["QUERY_SOURCES"]
    assert "./deploy/postgres/reader.sql:/docker-entrypoint-initdb.d/10-reader.sql:ro" in compose["services"]["postgres"]["volumes"]


# --- Through HTTP: a refused source, the override ---------------------------------------------


async def test_a_refused_source_answers_a_clear_error_while_the_others_serve(make_system: SystemFactory, databases: Databases, pg_reader: PostgresReader, acct_schema: str) -> None:
    system = make_system(QUERY_SOURCES=f"reader={pg_reader.url},admin={databases.postgres}")
    query = system.services["query"]
    query.wait_for_line(lambda line: '"source_refused"' in line)  # checked at start, before any query
    async with browser(system.url) as client:
        await login(client)
        response, parts = await run_query(client, "SELECT 1 AS one", source="admin")
        assert response.status == 200
        text = error_part(parts)
        assert "source 'admin' is not served" in text and "superuser" in text and "docs/query-account.md" in text
        response, parts = await run_query(client, f"SELECT a, b FROM {acct_schema}.t", source="reader")
        assert data_rows(parts) == [[1, "one"]]
        response, parts = await run_query(client, "SELECT 1 AS one", source="admin")
        assert "source 'admin' is not served" in error_part(parts)
    refused = query.events("source_refused")
    assert [e["source"] for e in refused] == ["admin"] and refused[0]["level"] == "error"
    assert not query.events("privileged_sources_allowed")


async def test_query_allow_privileged_is_warned_about_on_every_start(make_system: SystemFactory, databases: Databases) -> None:
    system = make_system(QUERY_SOURCES=f"admin={databases.postgres}", QUERY_ALLOW_PRIVILEGED="1")
    for _ in range(2):
        query = system.services["query"]
        [warning] = query.events("privileged_sources_allowed")
        assert warning["level"] == "warning" and warning["variable"] == "QUERY_ALLOW_PRIVILEGED"
        async with browser(system.url) as client:
            await login(client)
            _, parts = await run_query(client, "SELECT 41 + 1 AS answer", source="admin")
        assert data_rows(parts) == [[42]]
        query.wait_for_line(lambda line: '"source_privileged"' in line)
        system.restart("query")


# --- Nothing a query did outlives it ----------------------------------------------------------


async def test_a_pooled_postgres_connection_keeps_no_lock_or_setting_of_the_last_query(pg_reader: PostgresReader, databases: Databases) -> None:
    key = uuid.uuid4().int % 2**62
    engine = create_engine("pg", pg_reader.url, SETTINGS)  # one connection: the next query gets the same one
    await engine.open()
    admin = await asyncpg.connect(databases.postgres)
    try:
        [(pid, locked, _)] = [tuple(r) async for r in engine.iterate(f"SELECT pg_backend_pid(), pg_try_advisory_lock({key}), set_config('dbgenie.dirty', 'yes', false)", 30)]
        assert locked
        held = await admin.fetchval("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = $1", pid)
        assert held == 0
        assert await admin.fetchval(f"SELECT pg_try_advisory_lock({key})")
        assert await admin.fetchval(f"SELECT pg_advisory_unlock({key})")
        [(same_pid, setting)] = [tuple(r) async for r in engine.iterate("SELECT pg_backend_pid(), current_setting('dbgenie.dirty', true)", 30)]
        assert same_pid == pid and setting in ("", None)
        # Left early, with rows unread: the same holds.
        async with engine.query(f"SELECT pg_try_advisory_lock({key}), g FROM generate_series(1, 100000) g", 30) as cursor:
            assert len(await cursor.fetch(5)) == 5
        assert await admin.fetchval("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = $1", pid) == 0
    finally:
        await admin.close()
        await engine.close()


async def test_a_pooled_mariadb_connection_keeps_no_named_lock_or_variable_of_the_last_query(my_reader: MysqlReader, acct_db: str, databases: Databases) -> None:
    lock = f"dbg_lock_{uuid.uuid4().hex[:10]}"
    engine = create_engine("my", my_reader.url(acct_db), SETTINGS)
    await engine.open()
    admin = await asyncmy.connect(**mysql_connect_args(databases.mysql))

    async def lock_is_free() -> bool:
        async with admin.cursor() as cur:
            await cur.execute("SELECT IS_FREE_LOCK(%s)", (lock,))
            return (await cur.fetchone())[0] == 1

    try:
        [(conn_id, got, dirty)] = [tuple(r) async for r in engine.iterate(f"SELECT CONNECTION_ID(), GET_LOCK('{lock}', 0), @dbgenie_dirty := 'yes'", 30)]
        assert got == 1 and dirty == "yes"
        assert await lock_is_free()
        [(same_id, variable)] = [tuple(r) async for r in engine.iterate("SELECT CONNECTION_ID(), @dbgenie_dirty", 30)]
        assert same_id == conn_id and variable is None
        # Left early, with rows unread: the connection is dropped, and its lock with it.
        async with engine.query(f"SELECT GET_LOCK('{lock}', 0), seq FROM seq_1_to_1000000", 30) as cursor:
            assert len(await cursor.fetch(5)) == 5
            assert not await lock_is_free()
        await eventually(lock_is_free, "the named lock of the dropped connection to be freed")
    finally:
        admin.close()
        await engine.close()


# --- Honest errors: cancelled by someone else --------------------------------------------------


@pytest.mark.parametrize(
    ("signal", "code", "reason"),
    [
        ("pg_cancel_backend", QUERY_FAILED, "canceling statement due to user request"),
        ("pg_terminate_backend", UNAVAILABLE, "terminating connection due to administrator command"),
    ],
)
async def test_a_postgres_query_cancelled_by_another_session_says_so(make_system: SystemFactory, pg_reader: PostgresReader, databases: Databases, signal: str, code: str, reason: str) -> None:
    marker = f"victim_{uuid.uuid4().hex[:8]}"
    system = make_system(QUERY_DATABASE_URL=pg_reader.url, QUERY_TIMEOUT_S="60")
    admin = await asyncpg.connect(databases.postgres)

    async def running() -> bool:
        return await admin.fetchval("SELECT count(*) FROM pg_stat_activity WHERE query LIKE $1 AND state = 'active' AND pid <> pg_backend_pid()", f"%{marker}%") == 1

    try:
        async with browser(system.url) as client:
            await login(client)
            stream = asyncio.create_task(run_query(client, f"SELECT pg_sleep(30) AS {marker}"))
            await eventually(running, "the query to run on the server")
            assert await admin.fetchval(f"SELECT {signal}(pid) FROM pg_stat_activity WHERE query LIKE $1 AND pid <> pg_backend_pid()", f"%{marker}%")
            _, parts = await stream
            assert error_part(parts) == f"cancelled by the database: {reason}"
            _, parts = await run_query(client, "SELECT 1 AS still_served")  # the pool let go of the dead connection
            assert data_rows(parts) == [[1]]
        failed = system.services["query"].wait_for_line(lambda line: '"query_failed"' in line and marker in line)
        assert json.loads(failed)["code"] == code
    finally:
        await admin.close()


async def test_a_mariadb_query_killed_by_another_session_says_so(make_system: SystemFactory, my_reader: MysqlReader, acct_db: str, databases: Databases) -> None:
    marker = f"victim_{uuid.uuid4().hex[:8]}"
    system = make_system(QUERY_DATABASE_URL=my_reader.url(acct_db), QUERY_TIMEOUT_S="60")
    admin = await asyncmy.connect(**mysql_connect_args(databases.mysql))

    async def victim() -> list[int]:
        async with admin.cursor() as cur:
            await cur.execute("SELECT id FROM information_schema.processlist WHERE info LIKE %s AND id <> CONNECTION_ID()", (f"%SLEEP(30) AS {marker}%",))
            return [row[0] for row in await cur.fetchall()]

    async def running() -> bool:
        return len(await victim()) == 1

    try:
        async with browser(system.url) as client:
            await login(client)
            stream = asyncio.create_task(run_query(client, f"SELECT SLEEP(30) AS {marker}"))
            await eventually(running, "the query to run on the server")
            [thread] = await victim()
            async with admin.cursor() as cur:
                await cur.execute(f"KILL QUERY {int(thread)}")
            _, parts = await stream
        assert error_part(parts) == "cancelled by the database: Query execution was interrupted"
    finally:
        admin.close()
