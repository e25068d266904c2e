"""The guard against the attack classes of issue 8, on the real engines, through HTTP, checked by effect.

Every query goes through `POST /api/query` with a session cookie, to PostgreSQL and MariaDB
sources reached through reader roles this module creates (unique names, dropped at the end),
never as superuser. Each test then looks in the database itself: the named lock is free, the
file was not written, the other backend's query finished with its rows, the file's content
did not come back.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import asyncmy
import asyncpg
import pytest

from tests.client import browser, login, run_query
from tests.conftest import Databases, Infra, System
from tests.harness import free_port


@dataclass(frozen=True)
class Reader:
    """A read-only role on one engine, and where it may read."""

    url: str
    user: str
    password: str
    namespace: str  # the PostgreSQL schema or MariaDB database holding `items`


async def eventually(check: Callable[[], Awaitable[bool]], what: str, timeout: float = 15.0) -> None:
    """Poll the database until `check` holds (for states that send no event)."""
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


def _with_user(url: str, user: str, password: str, path: str | None = None) -> str:
    parts = urlsplit(url)
    netloc = f"{quote(user)}:{quote(password)}@{parts.hostname}:{parts.port}"
    return f"{parts.scheme}://{netloc}{path if path is not None else parts.path}"


def _mysql_params(url: str) -> dict[str, Any]:
    parts = urlsplit(url)
    return {
        "host": parts.hostname or "127.0.0.1",
        "port": parts.port or 3306,
        "user": parts.username or "root",
        "password": parts.password or "",
        "autocommit": True,
    }


@pytest.fixture(scope="module")
async def pg_reader(databases: Databases) -> AsyncIterator[Reader]:
    suffix = uuid.uuid4().hex[:10]
    role, schema, password = f"guard_reader_{suffix}", f"guard_{suffix}", f"pw_{suffix}"
    admin = await asyncpg.connect(databases.postgres)
    database = await admin.fetchval("SELECT current_database()")
    try:
        await admin.execute(f"""
            CREATE SCHEMA {schema};
            CREATE TABLE {schema}.items AS SELECT g AS id FROM generate_series(1, 3) AS g;
            CREATE ROLE {role} LOGIN PASSWORD '{password}';
            GRANT CONNECT ON DATABASE "{database}" TO {role};
            GRANT USAGE ON SCHEMA {schema} TO {role};
            GRANT SELECT ON ALL TABLES IN SCHEMA {schema} TO {role};
        """)
        yield Reader(_with_user(databases.postgres, role, password), role, password, schema)
    finally:
        await admin.execute(f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = '{role}'")
        await admin.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
        await admin.execute(f"""DO $$ BEGIN
            IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '{role}') THEN
                EXECUTE 'REVOKE ALL ON DATABASE "{database}" FROM {role}';
                EXECUTE 'DROP ROLE {role}';
            END IF; END $$""")
        await admin.close()


@pytest.fixture(scope="module")
async def my_reader(databases: Databases) -> AsyncIterator[Reader]:
    suffix = uuid.uuid4().hex[:10]
    user, database, password = f"guard_r_{suffix}", f"guard_{suffix}", f"pw_{suffix}"
    admin = await asyncmy.connect(**_mysql_params(databases.mysql))
    try:
        async with admin.cursor() as cur:
            await cur.execute(f"CREATE DATABASE {database}")
            await cur.execute(f"CREATE TABLE {database}.items (id INT)")
            await cur.execute(f"INSERT INTO {database}.items VALUES (1), (2), (3)")
            await cur.execute(f"CREATE USER '{user}'@'%' IDENTIFIED BY '{password}'")
            await cur.execute(f"GRANT SELECT ON {database}.* TO '{user}'@'%'")
        yield Reader(_with_user(databases.mysql, user, password, f"/{database}"), user, password, database)
    finally:
        async with admin.cursor() as cur:
            await cur.execute(f"DROP USER IF EXISTS '{user}'@'%'")
            await cur.execute(f"DROP DATABASE IF EXISTS {database}")
        admin.close()


@pytest.fixture(scope="module")
def guard_system(infra: Infra, pg_reader: Reader, my_reader: Reader) -> Iterator[System]:
    """Gateway, session and query services with `pg` and `my` sources, both through reader roles."""
    prefix = f"g{uuid.uuid4().hex[:10]}"
    env = {
        "NATS_URL": infra.nats_url,
        "NATS_SUBJECT_PREFIX": prefix,
        "AUTH_MODE": "dev",
        "REDIS_URL": infra.redis_url,
        "SESSION_KV_BUCKET": f"sessions_{prefix}",
        "QUERY_SOURCES": f"pg={pg_reader.url},my={my_reader.url}",
        "QUERY_TIMEOUT_S": "20",
    }
    system = System(infra.nats_url, infra.redis_url, prefix, free_port(), env)
    try:
        for name in ("session", "query", "gateway"):
            system.start(name)
        yield system
    finally:
        codes = system.stop()
    assert all(code == 0 for code in codes.values()), f"services did not stop cleanly: {codes}"


@dataclass
class Outcome:
    status: int
    parts: list[Any]

    @property
    def error(self) -> str | None:
        for part in self.parts:
            if part != "[DONE]" and part.get("type") == "tool-output-error":
                return str(part["errorText"])
        return None

    @property
    def rows(self) -> list[list[Any]]:
        rows: list[list[Any]] = []
        for part in self.parts:
            if part != "[DONE]" and part.get("type") == "data-query-rows":
                rows.extend(part["data"]["rows"])
        return rows

    @property
    def text(self) -> str:
        return repr(self.parts)


async def query(system: System, sql: str, source: str) -> Outcome:
    async with browser(system.url) as client:
        await login(client, f"attacker-{uuid.uuid4().hex[:6]}@example.com", "Mallory")
        response, parts = await run_query(client, sql, source=source)
    return Outcome(response.status, parts)


def assert_refused(outcome: Outcome, *fragments: str) -> None:
    assert outcome.status == 200
    assert outcome.error is not None, f"the query was not refused: {outcome.text[:500]}"
    for fragment in fragments:
        assert fragment in outcome.error, outcome.error
    assert "Traceback" not in outcome.error and not outcome.rows


async def test_reader_roles_serve_queries(guard_system: System, pg_reader: Reader, my_reader: Reader) -> None:
    pg = await query(guard_system, f"SELECT count(*) AS n, upper('ok') AS u FROM {pg_reader.namespace}.items", "pg")
    assert pg.error is None and pg.rows == [[3, "OK"]]
    my = await query(guard_system, "SELECT count(*) AS n, UPPER('ok') AS u FROM items", "my")
    assert my.error is None and my.rows == [[3, "OK"]]


# --- 1. MariaDB executable comments -----------------------------------------------------------

@pytest.mark.parametrize("form", ["/*!", "/*!50000", "/*!100000", "/*M!", "/*M!100000"])
async def test_executable_comment_cannot_take_a_named_lock(guard_system: System, databases: Databases, form: str) -> None:
    lock = f"guard_lock_{uuid.uuid4().hex[:10]}"
    outcome = await query(guard_system, f"SELECT id {form} , GET_LOCK('{lock}', 0) */ FROM items", "my")
    assert_refused(outcome, "executable comments", "run their content as SQL")
    admin = await asyncmy.connect(**_mysql_params(databases.mysql))
    try:
        async with admin.cursor() as cur:
            await cur.execute("SELECT IS_FREE_LOCK(%s)", (lock,))
            assert await cur.fetchone() == (1,), "the named lock is held: the comment's GET_LOCK ran"
    finally:
        admin.close()


@pytest.mark.parametrize("form", ["/*!", "/*!50000", "/*M!"])
async def test_executable_comment_cannot_write_a_file(guard_system: System, databases: Databases, form: str) -> None:
    path = f"/tmp/guard_outfile_{uuid.uuid4().hex}.txt"
    outcome = await query(guard_system, f"SELECT id FROM items {form} INTO OUTFILE '{path}' */", "my")
    assert_refused(outcome, "executable comments")
    assert not Path(path).exists()
    admin = await asyncmy.connect(**_mysql_params(databases.mysql))
    try:
        async with admin.cursor() as cur:
            await cur.execute("SELECT LOAD_FILE(%s) IS NULL", (path,))
            assert await cur.fetchone() == (1,), "the database server sees the file: it was written"
    finally:
        admin.close()


@pytest.mark.parametrize("sql", ["SELECT 1 /*! , LOAD_FILE('{path}') */ AS x", "SELECT LOAD_FILE('{path}') AS x", "SELECT 1 --1, LOAD_FILE('{path}')"])
async def test_server_file_content_does_not_come_back_from_mariadb(guard_system: System, databases: Databases, sql: str) -> None:
    path = "/etc/os-release"
    admin = await asyncmy.connect(**_mysql_params(databases.mysql))
    try:
        async with admin.cursor() as cur:
            await cur.execute("SELECT LOAD_FILE(%s)", (path,))
            (content,) = await cur.fetchone()
    finally:
        admin.close()
    assert content, "the admin reads the file, so its content is a real secret to leak"
    first_line = (content.decode() if isinstance(content, bytes) else content).splitlines()[0]
    outcome = await query(guard_system, sql.format(path=path), "my")
    assert outcome.error is not None
    assert first_line not in outcome.text


# --- 2, 3, 4. PostgreSQL: escaped names, SQL in strings, same-role signalling ---------------

@dataclass
class Victim:
    pid: int
    task: asyncio.Task[list[asyncpg.Record]]


@pytest.fixture
async def victim(databases: Databases, pg_reader: Reader) -> AsyncIterator[Victim]:
    """A backend of the same reader role, in the middle of a query (waiting on a lock the admin holds)."""
    admin = await asyncpg.connect(databases.postgres)
    conn = await asyncpg.connect(pg_reader.url)
    locker = admin.transaction()
    await locker.start()
    try:
        await admin.execute(f"LOCK TABLE {pg_reader.namespace}.items IN ACCESS EXCLUSIVE MODE")
        pid = await conn.fetchval("SELECT pg_backend_pid()")
        task = asyncio.create_task(conn.fetch(f"SELECT count(*) AS n FROM {pg_reader.namespace}.items"))

        async def waiting() -> bool:
            return await admin.fetchval("SELECT wait_event_type = 'Lock' FROM pg_stat_activity WHERE pid = $1", pid) is True

        await eventually(waiting, "the victim's query to wait on the lock")
        yield Victim(pid, task)
    finally:
        await locker.rollback()
        if not task.done():
            await asyncio.wait([task], timeout=10)
        await conn.close()
        await admin.close()


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT pg_cancel_backend({pid})",
        "SELECT pg_terminate_backend({pid})",
        "SELECT U&\"\\0070g_terminate_backend\"({pid})",
        "SELECT U&\"!0070g_cancel_backend\" UESCAPE '!' ({pid})",
        "SELECT pg_catalog.U&\"\\0070g_cancel_backend\"({pid})",
        "SELECT query_to_xml('SELECT pg_cancel_backend({pid})', true, false, '')",
        "SELECT * FROM ts_stat('SELECT to_tsvector(pg_terminate_backend({pid})::text)')",
        "SELECT * FROM U&\"ts\\005Fstat\"('SELECT to_tsvector(pg_cancel_backend({pid})::text)')",
    ],
)
async def test_a_query_cannot_signal_another_backend_of_its_role(guard_system: System, databases: Databases, victim: Victim, sql: str) -> None:
    outcome = await query(guard_system, sql.format(pid=victim.pid), "pg")
    assert_refused(outcome, "the function")
    admin = await asyncpg.connect(databases.postgres)
    try:
        state = await admin.fetchval("SELECT wait_event_type FROM pg_stat_activity WHERE pid = $1", victim.pid)
        assert state == "Lock", "the other backend is no longer waiting in its query"
    finally:
        await admin.close()
    assert not victim.task.done()


async def test_the_victim_query_finishes_with_its_rows_after_an_attack(guard_system: System, databases: Databases, pg_reader: Reader) -> None:
    """End to end: an attack while the victim waits, then the lock goes and the victim gets its rows."""
    admin = await asyncpg.connect(databases.postgres)
    conn = await asyncpg.connect(pg_reader.url)
    try:
        async with admin.transaction():
            await admin.execute(f"LOCK TABLE {pg_reader.namespace}.items IN ACCESS EXCLUSIVE MODE")
            pid = await conn.fetchval("SELECT pg_backend_pid()")
            task = asyncio.create_task(conn.fetch(f"SELECT count(*) AS n FROM {pg_reader.namespace}.items"))

            async def waiting() -> bool:
                return await admin.fetchval("SELECT wait_event_type = 'Lock' FROM pg_stat_activity WHERE pid = $1", pid) is True

            await eventually(waiting, "the victim's query to wait on the lock")
            outcome = await query(guard_system, f'SELECT U&"\\0070g_cancel_backend"({pid})', "pg")
            assert_refused(outcome, "pg_cancel_backend()", "signals another backend")
        rows = await asyncio.wait_for(task, 15)
        assert [r["n"] for r in rows] == [3]
    finally:
        await conn.close()
        await admin.close()


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT pg_read_file('postgresql.auto.conf')",
        "SELECT U&\"\\0070g_read_file\"('postgresql.auto.conf')",
        "SELECT U&\"!0070g_read_file\" UESCAPE '!' ('postgresql.auto.conf')",
        "SELECT \"pg_catalog\".\"pg_read_file\"('postgresql.auto.conf')",
        "SELECT t.pg_read_file FROM (SELECT 'postgresql.auto.conf'::text) AS t",
        "SELECT query_to_xml('SELECT pg_read_file(''postgresql.auto.conf'')', true, false, '')",
        "SELECT convert_from(pg_read_binary_file('postgresql.auto.conf'), 'UTF8')",
    ],
)
async def test_server_file_content_does_not_come_back_from_postgres(guard_system: System, databases: Databases, sql: str) -> None:
    admin = await asyncpg.connect(databases.postgres)
    try:
        content = await admin.fetchval("SELECT pg_read_file('postgresql.auto.conf')")
    finally:
        await admin.close()
    first_line = content.splitlines()[0]
    assert first_line, "the file has content to leak"
    outcome = await query(guard_system, sql, "pg")
    assert_refused(outcome, "the function")
    assert first_line not in outcome.text


async def test_sql_in_a_string_cannot_advance_a_sequence(guard_system: System, databases: Databases, pg_reader: Reader) -> None:
    """query_to_xml would run the string; the sequence (which the reader may use) stays where it was."""
    sequence = f"{pg_reader.namespace}.seq_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(databases.postgres)
    try:
        await admin.execute(f"CREATE SEQUENCE {sequence}; GRANT USAGE, SELECT ON SEQUENCE {sequence} TO {pg_reader.user}")
        outcome = await query(guard_system, f"SELECT query_to_xml('SELECT nextval(''{sequence}'')', true, false, '')", "pg")
        assert_refused(outcome, "query_to_xml()", "runs SQL given to it as text")
        assert await admin.fetchval(f"SELECT is_called FROM {sequence}") is False
    finally:
        await admin.execute(f"DROP SEQUENCE IF EXISTS {sequence}")
        await admin.close()


async def test_valid_sql_the_parser_does_not_understand_says_so(guard_system: System) -> None:
    outcome = await query(guard_system, "SELECT g FROM generate_series(1, 3) AS g ORDER BY g USING >", "pg")
    assert_refused(outcome, "the guard cannot analyse this statement")
    assert "syntax error" not in (outcome.error or "")
