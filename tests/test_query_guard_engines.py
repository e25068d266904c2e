"""The guard on the real engines: the attack classes of issue 8 through HTTP, checked by effect, and the catalog.

Attacks go through `POST /api/query` with a session cookie, to PostgreSQL and MariaDB
sources reached through the session's reader role and account (tests/conftest.py), on a schema
and a database this module creates (unique names, dropped at the end), never as superuser.
Each test then looks in the database itself: the named lock is free, the file was not
written, the other backend's query finished with its rows, the file's content did not come
back. The catalog tests read pg_proc itself: every VOLATILE function not on the
reviewed list is refused, and a sample of IMMUTABLE and STABLE ones runs; MariaDB's
executable-comment forms are shown to be code to the server, and refused.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import asyncmy
import asyncpg
import pytest

from services.query.engines import Engine, EngineSettings, create_engine
from services.query.guard import check_read_only
from services.query.guard.policy import MYSQL_ALLOWED, PG_DENIED, PG_REVIEWED_VOLATILE
from shared.errors import QUERY_FAILED, QUERY_REFUSED, ServiceError
from tests.client import browser, login, run_query
from tests.conftest import Databases, Infra, MysqlReader, PostgresReader, System, mysql_connect_args, running_system
from tests.harness import eventually
from tests.readers import mariadb_database, postgres_schema


@dataclass(frozen=True)
class Reader:
    """A read-only role on one engine, and where it may read."""

    url: str
    user: str
    namespace: str  # the PostgreSQL schema or MariaDB database holding `items`


@pytest.fixture(scope="module")
async def pg_items(pg_reader: PostgresReader) -> AsyncIterator[Reader]:
    """The session's PostgreSQL reader role, on a schema of this module holding `items` (1, 2, 3)."""
    async with postgres_schema(pg_reader, "CREATE TABLE {s}.items AS SELECT g AS id FROM generate_series(1, 3) AS g") as schema:
        yield Reader(pg_reader.url, pg_reader.role, schema)


@pytest.fixture(scope="module")
async def my_items(my_reader: MysqlReader) -> AsyncIterator[Reader]:
    """The session's MariaDB reader account, on a database of this module holding `items` (1, 2, 3)."""
    async with mariadb_database(my_reader, ("CREATE TABLE items (id INT)", "INSERT INTO items VALUES (1), (2), (3)")) as url:
        yield Reader(url, my_reader.user, urlsplit(url).path.lstrip("/"))


@pytest.fixture(scope="module")
def guard_system(infra: Infra, pg_items: Reader, my_items: Reader) -> Iterator[System]:
    """Gateway, session and query services with `pg` and `my` sources, both through reader roles."""
    with running_system(infra, "g", QUERY_SOURCES=f"pg={pg_items.url},my={my_items.url}", QUERY_TIMEOUT_S="20") as system:
        yield system


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


async def test_reader_roles_serve_queries(guard_system: System, pg_items: Reader, my_items: Reader) -> None:
    pg = await query(guard_system, f"SELECT count(*) AS n, upper('ok') AS u FROM {pg_items.namespace}.items", "pg")
    assert pg.error is None and pg.rows == [[3, "OK"]]
    my = await query(guard_system, "SELECT count(*) AS n, UPPER('ok') AS u FROM items", "my")
    assert my.error is None and my.rows == [[3, "OK"]]


# --- 1. MariaDB executable comments -----------------------------------------------------------


async def mysql_admin_rows(databases: Databases, sql: str, args: tuple[object, ...] | None = None) -> list[tuple[object, ...]]:
    """The rows of one statement run as the MariaDB admin, to see the server's state after an attack."""
    admin = await asyncmy.connect(**mysql_connect_args(databases.mysql))
    try:
        async with admin.cursor() as cur:
            await cur.execute(sql, args)
            return list(await cur.fetchall())
    finally:
        admin.close()


@pytest.mark.parametrize("form", ["/*!", "/*!50000", "/*!100000", "/*M!", "/*M!100000"])
async def test_executable_comment_cannot_take_a_named_lock(guard_system: System, databases: Databases, form: str) -> None:
    lock = f"guard_lock_{uuid.uuid4().hex[:10]}"
    outcome = await query(guard_system, f"SELECT id {form} , GET_LOCK('{lock}', 0) */ FROM items", "my")
    assert_refused(outcome, "executable comments", "run their content as SQL")
    rows = await mysql_admin_rows(databases, "SELECT IS_FREE_LOCK(%s)", (lock,))
    assert rows[0] == (1,), "the named lock is held: the comment's GET_LOCK ran"


@pytest.mark.parametrize("form", ["/*!", "/*!50000", "/*M!"])
async def test_executable_comment_cannot_write_a_file(guard_system: System, databases: Databases, form: str) -> None:
    path = f"/tmp/guard_outfile_{uuid.uuid4().hex}.txt"
    outcome = await query(guard_system, f"SELECT id FROM items {form} INTO OUTFILE '{path}' */", "my")
    assert_refused(outcome, "executable comments")
    assert not Path(path).exists()
    rows = await mysql_admin_rows(databases, "SELECT LOAD_FILE(%s) IS NULL", (path,))
    assert rows[0] == (1,), "the database server sees the file: it was written"


@pytest.mark.parametrize("sql", ["SELECT 1 /*! , LOAD_FILE('{path}') */ AS x", "SELECT LOAD_FILE('{path}') AS x", "SELECT 1 --1, LOAD_FILE('{path}')"])
async def test_server_file_content_does_not_come_back_from_mariadb(guard_system: System, databases: Databases, sql: str) -> None:
    path = "/etc/os-release"
    rows = await mysql_admin_rows(databases, "SELECT LOAD_FILE(%s)", (path,))
    (content,) = rows[0]
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
async def victim(databases: Databases, pg_items: Reader) -> AsyncIterator[Victim]:
    """A backend of the same reader role, in the middle of a query (waiting on a lock the admin holds)."""
    admin = await asyncpg.connect(databases.postgres)
    conn = await asyncpg.connect(pg_items.url)
    locker = admin.transaction()
    await locker.start()
    try:
        await admin.execute(f"LOCK TABLE {pg_items.namespace}.items IN ACCESS EXCLUSIVE MODE")
        pid = await conn.fetchval("SELECT pg_backend_pid()")
        task = asyncio.create_task(conn.fetch(f"SELECT count(*) AS n FROM {pg_items.namespace}.items"))

        async def waiting() -> bool:
            return await admin.fetchval("SELECT wait_event_type = 'Lock' FROM pg_stat_activity WHERE pid = $1", pid) is True

        await eventually(waiting, "the victim's query to wait on the lock", timeout=15)
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
        'SELECT U&"\\0070g_terminate_backend"({pid})',
        "SELECT U&\"!0070g_cancel_backend\" UESCAPE '!' ({pid})",
        'SELECT pg_catalog.U&"\\0070g_cancel_backend"({pid})',
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


async def test_the_victim_query_finishes_with_its_rows_after_an_attack(guard_system: System, databases: Databases, pg_items: Reader) -> None:
    """End to end: an attack while the victim waits, then the lock goes and the victim gets its rows."""
    admin = await asyncpg.connect(databases.postgres)
    conn = await asyncpg.connect(pg_items.url)
    try:
        async with admin.transaction():
            await admin.execute(f"LOCK TABLE {pg_items.namespace}.items IN ACCESS EXCLUSIVE MODE")
            pid = await conn.fetchval("SELECT pg_backend_pid()")
            task = asyncio.create_task(conn.fetch(f"SELECT count(*) AS n FROM {pg_items.namespace}.items"))

            async def waiting() -> bool:
                return await admin.fetchval("SELECT wait_event_type = 'Lock' FROM pg_stat_activity WHERE pid = $1", pid) is True

            await eventually(waiting, "the victim's query to wait on the lock", timeout=15)
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
        'SELECT "pg_catalog"."pg_read_file"(\'postgresql.auto.conf\')',
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


async def test_sql_in_a_string_cannot_advance_a_sequence(guard_system: System, databases: Databases, pg_items: Reader) -> None:
    """query_to_xml would run the string; the sequence (which the reader may use) stays where it was."""
    sequence = f"{pg_items.namespace}.seq_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(databases.postgres)
    try:
        await admin.execute(f"CREATE SEQUENCE {sequence}; GRANT USAGE, SELECT ON SEQUENCE {sequence} TO {pg_items.user}")
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


# --- The catalog ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
async def pg_engine(pg_items: Reader) -> AsyncIterator[Engine]:
    engine = create_engine("pg", pg_items.url, EngineSettings(pool_size=2))
    await engine.open()
    yield engine
    await engine.close()


@pytest.fixture(scope="module")
async def my_engine(my_items: Reader) -> AsyncIterator[Engine]:
    engine = create_engine("my", my_items.url, EngineSettings(pool_size=2))
    await engine.open()
    yield engine
    await engine.close()


async def guarded_rows(engine: Engine, sql: str) -> list[Any]:
    check_read_only(sql, engine.dialect, engine.function_policy())
    rows: list[Any] = []
    async for row in engine.iterate(sql, 20.0):
        rows.append(tuple(row))
    return rows


def _quoted(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


async def test_every_volatile_function_not_on_the_reviewed_list_is_refused(pg_engine: Engine, databases: Databases) -> None:
    admin = await asyncpg.connect(databases.postgres)
    try:
        volatile = await admin.fetch("SELECT DISTINCT n.nspname, p.proname FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace WHERE p.provolatile = 'v'")
    finally:
        await admin.close()
    assert len(volatile) > 200, "the server's catalog should hold hundreds of VOLATILE functions"
    policy = pg_engine.function_policy()
    slipped, reviewed = [], 0
    for row in volatile:
        schema, name = row["nspname"], row["proname"]
        if schema == "pg_catalog" and name in PG_REVIEWED_VOLATILE:
            reviewed += 1
            check_read_only(f"SELECT pg_catalog.{_quoted(name)}()", "postgres", policy)
            continue
        for sql in (f"SELECT {_quoted(name)}()", f"SELECT {_quoted(schema)}.{_quoted(name)}()", f"SELECT * FROM {_quoted(name)}()"):
            try:
                check_read_only(sql, "postgres", policy)
            except ServiceError as exc:
                if exc.code != QUERY_REFUSED or f"{name}()" not in exc.message:
                    slipped.append(f"{sql}: {exc.message}")
            else:
                slipped.append(sql)
    assert not slipped, "VOLATILE functions the guard let through:\n" + "\n".join(slipped)
    assert reviewed >= 5


@pytest.mark.parametrize(
    ("sql", "expected"),
    [
        ("SELECT upper('abc'), lower('ABC'), length('abcd'), md5('a')", [("ABC", "abc", 4, "0cc175b9c0f1b6a831c399e269772661")]),
        ("SELECT abs(-2), round(2.5), sqrt(16::float8), power(2, 10)::int, mod(7, 3)", [(2, 3, 4.0, 1024, 1)]),
        ("SELECT to_char(date '2024-05-01', 'YYYY-MM'), date_trunc('month', date '2024-05-09')::date::text", [("2024-05", "2024-05-01")]),
        ("SELECT jsonb_build_object('a', 1)::text, array_length(ARRAY[1, 2, 3], 1), string_agg(g::text, ',') FROM generate_series(1, 3) g", [('{"a": 1}', 3, "1,2,3")]),
        ("SELECT current_setting('DateStyle') IS NOT NULL, now() IS NOT NULL, current_database() IS NOT NULL", [(True, True, True)]),
        ("SELECT left('abcdef', 2), substring('abcdef' FROM 2 FOR 3), position('c' IN 'abc'), coalesce(NULL, 'x'), greatest(1, 5)", [("ab", "bcd", 3, "x", 5)]),
        ("SELECT count(*) FILTER (WHERE g > 1), percentile_cont(0.5) WITHIN GROUP (ORDER BY g) FROM generate_series(1, 3) g", [(2, 2.0)]),
        ("SELECT random() < 1, length(gen_random_uuid()::text), pg_sleep(0)::text", [(True, 36, "")]),
        ("SELECT U&\"\\0075pper\"('x'), pg_catalog.\"lower\"('Y')", [("X", "y")]),
    ],
)
async def test_immutable_and_stable_functions_run(pg_engine: Engine, sql: str, expected: list[tuple[Any, ...]]) -> None:
    assert await guarded_rows(pg_engine, sql) == expected


async def test_a_catalog_sample_of_immutable_and_stable_functions_passes_and_runs(pg_engine: Engine, databases: Databases) -> None:
    """Every argument-less IMMUTABLE or STABLE function in pg_catalog passes the guard and runs for a reader."""
    admin = await asyncpg.connect(databases.postgres)
    try:
        names = [
            r["proname"]
            for r in await admin.fetch("""
                SELECT DISTINCT p.proname FROM pg_proc p
                 WHERE p.pronamespace = 'pg_catalog'::regnamespace AND p.provolatile IN ('i', 's') AND p.prokind = 'f'
                   AND p.pronargs = 0 AND NOT p.proretset AND p.prorettype NOT IN ('internal'::regtype, 'trigger'::regtype, 'event_trigger'::regtype)
                   AND NOT EXISTS (SELECT 1 FROM pg_proc o WHERE o.proname = p.proname AND o.provolatile = 'v')
                 ORDER BY 1""")
        ]
    finally:
        await admin.close()
    names = [n for n in names if n not in PG_DENIED]
    assert len(names) > 20
    ran, failures = 0, []
    for name in names:
        sql = f"SELECT pg_catalog.{_quoted(name)}()"
        try:
            await guarded_rows(pg_engine, sql)
            ran += 1
        except ServiceError as exc:
            # The guard must allow it; the server may still refuse a reader (permission) or the context.
            if exc.code != QUERY_FAILED:
                failures.append(f"{sql}: {exc.code}: {exc.message}")
    assert not failures, "\n".join(failures)
    assert ran >= len(names) * 3 // 4, f"only {ran} of {len(names)} ran"


@pytest.mark.parametrize("form", ["/*!", "/*!50000", "/*!100000", "/*M!", "/*M!100000"])
async def test_executable_comment_forms_are_code_to_mariadb_and_refused(databases: Databases, form: str) -> None:
    rows = await mysql_admin_rows(databases, f"SELECT 1 {form} , 2 */")
    assert len(rows[0]) == 2, "this server runs the comment's content"
    with pytest.raises(ServiceError) as caught:
        check_read_only(f"SELECT 1 {form} , 2 */", "mysql")
    assert caught.value.code == QUERY_REFUSED and "executable comments" in caught.value.message


@pytest.mark.parametrize(
    ("sql", "expected"),
    [
        ("SELECT UPPER('abc'), LOWER('ABC'), LENGTH('abcd'), MD5('a'), CONCAT('a', 'b'), LEFT('abc', 2)", [("ABC", "abc", 4, "0cc175b9c0f1b6a831c399e269772661", "ab", "ab")]),
        ("SELECT ABS(-2), ROUND(2.5), MOD(7, 3), GREATEST(1, 5), IFNULL(NULL, 3), IF(1 > 0, 'y', 'n')", [(2, 3, 1, 5, 3, "y")]),
        ("SELECT DATE_FORMAT('2024-05-01', '%Y-%m'), DATEDIFF('2024-05-03', '2024-05-01'), YEAR('2024-05-01')", [("2024-05", 2, 2024)]),
        ("SELECT JSON_EXTRACT('{\"a\": 1}', '$.a'), JSON_LENGTH('[1, 2]'), GROUP_CONCAT(id ORDER BY id) FROM items", [("1", 2, "1,2,3")]),
        ("SELECT COUNT(*), SUM(id), ROW_NUMBER() OVER (ORDER BY id) FROM items GROUP BY id ORDER BY id LIMIT 1", [(1, 1, 1)]),
        ("SELECT SLEEP(0), DATABASE() IS NOT NULL, VERSION() IS NOT NULL, RAND() < 1, LENGTH(UUID())", [(0, 1, 1, 1, 36)]),
        ("SELECT REGEXP_REPLACE('abc', 'b', 'x'), SUBSTRING_INDEX('a.b.c', '.', 2), CAST('7' AS SIGNED), CONVERT('8', SIGNED)", [("axc", "a.b", 7, 8)]),
    ],
)
async def test_reviewed_mariadb_builtins_run(my_engine: Engine, sql: str, expected: list[tuple[Any, ...]]) -> None:
    rows = await guarded_rows(my_engine, sql)
    assert [tuple(float(v) if hasattr(v, "as_integer_ratio") and not isinstance(v, (int, float)) else v for v in row) for row in rows] == expected


async def test_every_mariadb_native_function_not_on_the_reviewed_list_is_refused(databases: Databases) -> None:
    """MariaDB lists its native functions (information_schema.SQL_FUNCTIONS): those not reviewed are refused."""
    rows = await mysql_admin_rows(databases, "SELECT LOWER(FUNCTION) FROM information_schema.SQL_FUNCTIONS")
    native = {row[0] for row in rows}
    unreviewed = native - MYSQL_ALLOWED
    assert {"load_file", "get_lock", "release_all_locks", "benchmark", "master_pos_wait", "last_insert_id"} <= unreviewed
    slipped = []
    for name in sorted(unreviewed):
        # Every case, quoted, spaced, and with letters MariaDB's collation folds to ASCII ones (ſ is s, ı is i, K is k).
        folded = name.replace("s", "\u017f").replace("i", "\u0131").replace("k", "\u212a")
        for sql in (f"SELECT {name}(1)", f"SELECT `{name}`(1)", f"SELECT {name.upper()} (1, 2)", f"SELECT {name.title()}(1)", f"SELECT `{folded}`(1)", f"SELECT {folded}(1)"):
            try:
                check_read_only(sql, "mysql")
            except ServiceError as exc:
                if exc.code != QUERY_REFUSED:
                    slipped.append(f"{sql}: {exc.code}")
            else:
                slipped.append(sql)
    assert not slipped, "native functions the guard let through:\n" + "\n".join(slipped)


# --- Issue 18: what the guard used to refuse, and now runs; server-side resources ---------------------


@pytest.mark.parametrize(
    ("sql", "expected"),
    [
        ("SELECT interval '1.5' second(1)::text", [("PT1.5S",)]),
        ("SELECT COLLATION FOR ('a'::text), collation for ('b' COLLATE \"C\")", [('"default"', '"C"')]),
        ("SELECT count(*) OVER () FROM generate_series(1, 2) g", [(2,), (2,)]),
        ("SELECT count(*) FILTER (WHERE g > 1) FROM generate_series(1, 2) g", [(1,)]),
        ("SELECT s.setseed FROM (SELECT 3 AS setseed) s", [(3,)]),
        ("WITH c AS (SELECT 4 AS nextval) SELECT c.nextval FROM c", [(4,)]),
    ],
)
async def test_postgres_syntax_the_guard_used_to_refuse_runs(pg_engine: Engine, sql: str, expected: list[tuple[Any, ...]]) -> None:
    assert await guarded_rows(pg_engine, sql) == expected


async def test_a_column_named_like_a_function_is_read_as_the_column(pg_reader: PostgresReader) -> None:
    """`t.setseed` is the column when the table has one (the server resolves columns first), so it runs."""
    async with postgres_schema(pg_reader, "CREATE TABLE {s}.seeds AS SELECT 7 AS setseed, 8 AS nextval") as schema:
        engine = create_engine("pg", pg_reader.url, EngineSettings(pool_size=1))
        await engine.open()
        try:
            assert await guarded_rows(engine, f"SELECT t.setseed, seeds.nextval FROM {schema}.seeds t, {schema}.seeds") == [(7, 8)]
            with pytest.raises(ServiceError) as caught:  # a subquery without that column: the server would call setseed(x)
                check_read_only(f"SELECT x.setseed FROM (SELECT 0.5 AS y) x, {schema}.seeds t", "postgres", engine.function_policy())
            assert caught.value.code == QUERY_REFUSED and "setseed" in caught.value.message
        finally:
            await engine.close()


async def test_mariadb_json_table_columns_runs(my_engine: Engine) -> None:
    sql = "SELECT jt.a, jt.b FROM JSON_TABLE('[{\"a\": 1, \"b\": [5]}]', '$[*]' COLUMNS (a INT PATH '$.a', NESTED PATH '$.b[*]' COLUMNS (b INT PATH '$'))) AS jt"
    assert await guarded_rows(my_engine, sql) == [(1, 5)]


async def test_mariadb_text_that_is_not_utf8_is_a_clear_error(my_engine: Engine) -> None:
    with pytest.raises(ServiceError) as caught:
        await guarded_rows(my_engine, "SELECT CAST(X'EDA080' AS CHAR)")
    assert caught.value.code == QUERY_FAILED and "not valid UTF-8" in caught.value.message
    assert await guarded_rows(my_engine, "SELECT 1") == [(1,)], "the source still serves queries"


async def test_txid_current_runs_in_a_read_only_transaction_and_the_refusal_says_so(pg_reader: PostgresReader, pg_engine: Engine) -> None:
    conn = await asyncpg.connect(pg_reader.url)
    try:
        async with conn.transaction(readonly=True):
            assert await conn.fetchval("SELECT txid_current()") > 0
    finally:
        await conn.close()
    with pytest.raises(ServiceError) as caught:
        check_read_only("SELECT txid_current()", "postgres", pg_engine.function_policy())
    assert "even a read-only transaction" in caught.value.message and "refuses it anyway" not in caught.value.message


async def test_postgres_statements_run_under_the_configured_work_mem_and_temp_file_limit(pg_items: Reader) -> None:
    engine = create_engine("pg", pg_items.url, EngineSettings(pool_size=1, pg_work_mem="1234kB", pg_temp_file_limit="2MB"))
    await engine.open()
    try:
        rows = await guarded_rows(engine, "SELECT current_setting('work_mem'), current_setting('temp_file_limit')")
        assert rows == [("1234kB", "2MB")]
        with pytest.raises(ServiceError) as caught:  # a sort that spills more than 2 MB to disk is stopped by the server
            await guarded_rows(engine, "SELECT count(*) FROM (SELECT g, md5(g::text) FROM generate_series(1, 300000) g ORDER BY 2) s")
        assert caught.value.code == QUERY_FAILED and "temp_file_limit" in caught.value.message
    finally:
        await engine.close()


async def test_mariadb_statements_run_under_a_memory_bound(my_items: Reader) -> None:
    engine = create_engine("my", my_items.url, EngineSettings(pool_size=1, mysql_max_mem_bytes=8 * 1024 * 1024))
    await engine.open()
    try:
        assert await guarded_rows(engine, "SELECT @@max_session_mem_used") == [(8 * 1024 * 1024,)]
        with pytest.raises(ServiceError) as caught:
            await guarded_rows(engine, "SELECT COUNT(*) FROM (SELECT MD5(seq) AS m FROM seq_1_to_300000 GROUP BY m) AS t")
        assert caught.value.code == QUERY_FAILED and "max-session-mem-used" in caught.value.message
    finally:
        await engine.close()


def _spellings(schema: str, name: str) -> list[str]:
    """Every way a query can name a function: quoted, qualified, Unicode-escaped, and unquoted in another case."""
    escaped = "".join(f"\\{ord(c):04X}" if ord(c) <= 0xFFFF else f"\\+{ord(c):06X}" for c in name)
    forms = [_quoted(name), f"{_quoted(schema)}.{_quoted(name)}", f'U&"{escaped}"']
    if name.isascii() and name.isidentifier() and name == name.lower():
        forms.append(name.upper())
    return forms


async def test_every_refused_postgres_function_is_refused_under_every_spelling_and_in_column_notation(pg_engine: Engine, databases: Databases) -> None:
    """The catalog sweep: each pg_proc entry (defaults and VARIADIC counted) is refused however it is called, or allowed."""
    admin = await asyncpg.connect(databases.postgres)
    try:
        rows = await admin.fetch(
            "SELECT DISTINCT n.nspname, p.proname, p.pronargs - p.pronargdefaults <= 1 AND (p.pronargs >= 1 OR p.provariadic <> 0) AS takes_one"
            " FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace"
        )
    finally:
        await admin.close()
    policy = pg_engine.function_policy()
    slipped, refused = [], 0
    for row in rows:
        schema, name = row["nspname"], row["proname"]
        if policy.refusal(None, name) is None:
            continue  # allowed by the rule (IMMUTABLE/STABLE, trusted) or on the reviewed list
        refused += 1
        statements = [f"SELECT {form}()" for form in _spellings(schema, name)]
        if row["takes_one"] or name in PG_DENIED:
            statements += [f"SELECT (1).{_quoted(name)}", f"SELECT x.{_quoted(name)} FROM (SELECT 1 AS y) x"]
        for sql in statements:
            try:
                check_read_only(sql, "postgres", policy)
            except ServiceError as exc:
                if exc.code not in (QUERY_REFUSED, QUERY_FAILED):
                    slipped.append(f"{sql}: {exc.code}")
            else:
                slipped.append(sql)
    assert refused > 200
    assert not slipped, f"{len(slipped)} calls the guard let through:\n" + "\n".join(slipped[:50])
