"""Differential fuzz of the guard against the real PostgreSQL and MariaDB: the server is the oracle.

Each engine gets canary functions (a VOLATILE one on PostgreSQL, stored functions on MariaDB)
that record every call in a table the admin owns. hypothesis writes statements that hide a
canary call among comments, quotes, dollar quotes, `E''`/`U&`/`UESCAPE`, executable comments,
white space of every kind, control characters, column notation, casts and keyword-like names.
Each statement goes through the guard; whatever passes runs as the session's reader, and the
canary table must then still be empty. The statements run on a plain connection of the reader
(the engine's session settings, but no READ ONLY transaction), so that a guard bypass shows as
a call even where the second layer would have stopped it.

`make test` runs a fixed seed and a bounded number of examples (GUARD_FUZZ_EXAMPLES, default
100 per engine); `make fuzz` runs many more. Every bypass found is kept in FOUND as a regular
test. The last test switches the MariaDB lexer back to sqlglot's and shows that the same fuzz
finds the comment-boundary bypass, printing how many examples that took.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import asyncmy
import asyncmy.errors
import asyncpg
import pytest
from hypothesis import HealthCheck, Phase, given, seed, settings
from hypothesis import strategies as st

import services.query.guard as guard_module
from services.query.engines.mysql import lexing_sql_mode
from services.query.guard import FunctionPolicy, PgCatalog, check_read_only, default_policy
from services.query.guard.lexing import check_mysql_comments
from shared.errors import ServiceError
from tests.conftest import MysqlReader, PostgresReader, mysql_connect_args
from tests.readers import mariadb_database, postgres_schema

EXAMPLES = int(os.environ.get("GUARD_FUZZ_EXAMPLES", "100"))
SEED = int(os.environ.get("GUARD_FUZZ_SEED", "18"))
# White space to one reader and a name character, a control character or nothing special to another.
ODD_CHARS = ["\xa0", "\u3000", "\x85", "\u2028", "\ufeff", "\x0b", "\x0c", "\r", "\x01", "\x1f", "\x7f"]
PLAIN_CHARS = [" ", "\t", "1", "-", "!", "+", "*", "/", "'", '"', "\\", "x", "$", "`", "#", ";"]

# Canary names: a plain one, and names that sqlglot reads as keywords, types or grammar.
PG_CANARIES = ["canary", "json_scalar", "json_serialize", "second", "filter", "mode", "columns"]
MY_CANARIES = ["canary", "columns", "path", "mode", "nested"]


def _pg_calls(schema: str) -> list[str]:
    calls = [f"{name}(1)" for name in PG_CANARIES] + [
        '"canary"(1)',
        'U&"\\0063anary"(1)',
        "U&\"!0063anary\" UESCAPE '!' (1)",
        f"{schema}.canary(1)",
        f'"{schema}"."canary"(1)',
        "CANARY(1)",
        "(1).canary",
        '(1)."canary"',
        "t.canary",
        "(t.x).canary",
        "x.canary",
        "(1)::text.canary",
        "('a'::text).json_scalar",
        "interval '1' second(1) + second(1) * interval '0'",
        "collation for ('a') || canary(1)",
    ]
    return calls


def _my_calls(database: str) -> list[str]:
    return [f"{name}(1)" for name in MY_CANARIES] + [
        "`canary`(1)",
        "CANARY (1)",
        f"{database}.canary(1)",
        f"`{database}`.`canary`(1)",
        "COLUMNS(1)",
        "JSON_LENGTH('[1]') + columns(1)",
    ]


def statements(calls: list[str], columns: str) -> st.SearchStrategy[str]:
    """`SELECT 1 <noise> <opener> … , <canary call> … <closer> <noise>` over a derived table with oddly named columns."""
    # Benign choices first: hypothesis starts from them, so what it finds it had to search for.
    char = st.sampled_from(PLAIN_CHARS + ODD_CHARS)
    filler = st.text(alphabet=char, max_size=3)
    opener = st.one_of(
        st.sampled_from(["", "-- ", "#", "/*", "/* /*", "/*!", "/*M!", "/*+", "'", '"', "`", "$$", "$a$", "E'", "e'\\", "U&'", 'U&"', "N'", "X'", "_utf8mb4'", "\\"]),
        st.builds(lambda c: "--" + c, char),
    )
    closer = st.sampled_from(["", "\n", "\r\n", "*/", "'", '"', "`", "$$", "$a$", "\\'", "''", "' UESCAPE '!'"])
    noise = st.one_of(
        st.sampled_from(["", "/* c */", "-- c\n", "# c\n", "'s'", "'it''s'", "'a\\'b'", "E'\\''", "$$x$$", "$q$ $$ $q$", "U&'\\0041'", "U&'!0041' UESCAPE '!'", "x'41'", "1::text", "CAST(1 AS text)"]),
        filler,
    )
    return st.builds(
        lambda pre, op, fill1, call, fill2, close, post: f"SELECT 1 {pre}{op}{fill1} , {call}{fill2}{close} {post}\nFROM (SELECT 1 AS x{columns}) AS t",
        noise,
        opener,
        filler,
        st.sampled_from(calls),
        filler,
        closer,
        noise,
    )


@dataclass
class Target:
    """One engine under fuzz: its dialect, how to run a statement as the reader, and the canary table's count."""

    dialect: str
    policy: FunctionPolicy
    calls: list[str]
    columns: str
    run_as_reader: Callable[[str], Any]  # a coroutine function: runs the SQL, swallowing the server's errors
    canary_calls: Callable[[], Any]  # a coroutine function: rows in the canary table


@pytest.fixture(scope="module")
async def pg_target(pg_reader: PostgresReader) -> AsyncIterator[Target]:
    """A schema with VOLATILE canaries (SECURITY DEFINER, so that a reader's call is recorded in the admin's table)."""
    table = f"calls_{uuid.uuid4().hex[:8]}"
    setup = [f"CREATE TABLE public.{table} (name text)", f"REVOKE ALL ON public.{table} FROM PUBLIC"]
    for name in PG_CANARIES:
        # A second parameter with a default: `x.name` reaches it as well as `name(x)`.
        setup.append(
            f'CREATE FUNCTION {{s}}."{name}"(x anyelement, y int DEFAULT 0) RETURNS int VOLATILE SECURITY DEFINER SET search_path = pg_catalog '
            f"LANGUAGE plpgsql AS $$ BEGIN INSERT INTO public.{table} VALUES ('{name}'); RETURN 1; END $$"
        )
    async with postgres_schema(pg_reader, "; ".join(setup)) as schema:
        admin = await asyncpg.connect(pg_reader.admin_url)
        reader = await asyncpg.connect(pg_reader.url, server_settings={"search_path": f"{schema}, public", "statement_timeout": "2000"}, statement_cache_size=0)
        try:
            policy = (await PgCatalog.load(reader)).policy()

            async def run(sql: str) -> None:
                try:
                    await (await reader.prepare(sql)).fetch()
                except (asyncpg.PostgresError, asyncpg.InterfaceError):
                    pass

            async def count() -> int:
                return int(await admin.fetchval(f"SELECT count(*) FROM public.{table}"))

            columns = "".join(f', 1 AS "{c}"' for c in ODD_CHARS if c.isprintable() or ord(c) > 127)
            yield Target("postgres", policy, _pg_calls(schema), columns, run, count)
        finally:
            await reader.close()
            await admin.execute(f"DROP TABLE IF EXISTS public.{table}")
            await admin.close()


@pytest.fixture(scope="module")
async def my_target(my_reader: MysqlReader) -> AsyncIterator[Target]:
    """A database with stored-function canaries (SQL SECURITY DEFINER) that the reader may EXECUTE."""
    setup = ["CREATE TABLE calls (name VARCHAR(64))"]
    for name in MY_CANARIES:
        setup.append(f"CREATE FUNCTION `{name}`(x INT) RETURNS INT MODIFIES SQL DATA SQL SECURITY DEFINER BEGIN INSERT INTO calls VALUES ('{name}'); RETURN 1; END")
    async with mariadb_database(my_reader, tuple(setup)) as url:
        database = url.rsplit("/", 1)[1]
        admin = await asyncmy.connect(**mysql_connect_args(my_reader.admin_url), db=database)
        async with admin.cursor() as cur:
            for name in MY_CANARIES:
                await cur.execute(f"GRANT EXECUTE ON FUNCTION `{database}`.`{name}` TO '{my_reader.user}'@'%'")
            await cur.execute("SELECT @@GLOBAL.sql_mode")
            sql_mode = lexing_sql_mode(str((await cur.fetchone())[0]))
        reader = await asyncmy.connect(**mysql_connect_args(url), db=database)
        try:
            await reader._execute_command(0x1B, b"\x01\x00")  # multi-statements off, as the engine does
            await reader.read_packet()
            async with reader.cursor() as cur:
                await cur.execute(f"SET SESSION sql_mode = '{sql_mode}'")
                await cur.execute("SET SESSION max_statement_time = 2")

            async def run(sql: str) -> None:
                try:
                    async with reader.cursor() as cur:
                        await cur.execute(sql)
                        await cur.fetchall()
                except (asyncmy.errors.MySQLError, UnicodeDecodeError):
                    pass

            async def count() -> int:
                async with admin.cursor() as cur:
                    await cur.execute("SELECT COUNT(*) FROM calls")
                    return int((await cur.fetchone())[0])

            columns = "".join(f", 1 AS `{c}`" for c in ODD_CHARS if ord(c) > 127)
            yield Target("mysql", default_policy("mysql"), _my_calls(database), columns, run, count)
        finally:
            reader.close()
            async with admin.cursor() as cur:  # MariaDB keeps routine grants past DROP DATABASE: the reader must stay a reader
                for name in MY_CANARIES:
                    await cur.execute(f"REVOKE EXECUTE ON FUNCTION `{database}`.`{name}` FROM '{my_reader.user}'@'%'")
            admin.close()


@pytest.fixture(params=["postgres", "mysql"])
def target(request: pytest.FixtureRequest) -> Target:
    return request.getfixturevalue("pg_target" if request.param == "postgres" else "my_target")


@dataclass
class FuzzRun:
    examples: int = 0
    passed_guard: int = 0
    first_bypass: tuple[int, str] | None = None


def fuzz(target: Target, examples: int, loop: asyncio.AbstractEventLoop, stop_at_first: bool = False) -> FuzzRun:
    """Run hypothesis over `target` (in a worker thread; the database work runs on `loop`, the fixtures' loop).

    A bypass fails the run, or with `stop_at_first` is recorded and ends it.
    """
    run = FuzzRun()

    def wait(coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, loop).result(timeout=60)

    class Found(Exception):
        pass

    baseline = wait(target.canary_calls())

    @seed(SEED)
    @settings(
        max_examples=examples,
        database=None,
        deadline=None,
        phases=[Phase.generate] if stop_at_first else [Phase.generate, Phase.shrink],
        suppress_health_check=list(HealthCheck),
    )
    @given(statements(target.calls, target.columns))
    def one(sql: str) -> None:
        run.examples += 1
        try:
            check_read_only(sql, target.dialect, target.policy)
        except ServiceError:
            return
        run.passed_guard += 1
        wait(target.run_as_reader(sql))
        calls = wait(target.canary_calls()) - baseline
        if calls:
            if run.first_bypass is None:
                run.first_bypass = (run.examples, sql)
            if stop_at_first:
                raise Found(sql)
            raise AssertionError(f"the guard passed a statement that called a canary ({calls} call(s)): {sql!r}")

    try:
        one()
    except Found:
        pass
    return run


async def test_no_statement_the_guard_passes_calls_a_canary(target: Target) -> None:
    run = await asyncio.to_thread(fuzz, target, EXAMPLES, asyncio.get_running_loop())
    print(f"\n[fuzz] {target.dialect}: {run.examples} examples, {run.passed_guard} passed the guard and ran as the reader")
    assert run.examples == EXAMPLES
    assert run.passed_guard > 0, "no generated statement passed the guard: the fuzz tests nothing"


# Bypasses the fuzz (or the battery) found, kept as regular tests: {t} is the derived table's FROM.
FOUND_MYSQL = [
    "SELECT 1 # c\n--\u2028 , COLUMNS(1) # c\n{t}",
    "SELECT 1 --\xa0 , canary(1)\n{t}",
    "SELECT 1 --\x85 , `canary`(1)\n{t}",
    "SELECT 1 --\ufeff , CANARY (1)\n{t}",
]
FOUND_POSTGRES = [
    "SELECT (1).canary {t}",
    "SELECT t.canary {t}",
    "SELECT json_scalar(1) {t}",
    "SELECT second(1) {t}",
    "SELECT ('a'::text).json_scalar {t}",
]


async def refused_yet_calls_the_canary(target: Target, sql: str) -> None:
    statement = sql.format(t=f"FROM (SELECT 1 AS x{target.columns}) AS t")
    before = await target.canary_calls()
    with pytest.raises(ServiceError):
        check_read_only(statement, target.dialect, target.policy)
    await target.run_as_reader(statement)
    assert await target.canary_calls() == before + 1, "the statement does call the canary when run unguarded"


@pytest.mark.parametrize("sql", FOUND_MYSQL)
async def test_a_mariadb_bypass_once_found_is_refused(my_target: Target, sql: str) -> None:
    await refused_yet_calls_the_canary(my_target, sql)


@pytest.mark.parametrize("sql", FOUND_POSTGRES)
async def test_a_postgres_bypass_once_found_is_refused(pg_target: Target, sql: str) -> None:
    await refused_yet_calls_the_canary(pg_target, sql)


async def test_the_canaries_record_a_call_by_the_reader(target: Target) -> None:
    """Not hollow: a canary the reader calls (no guard in the way) leaves its row."""
    before = await target.canary_calls()
    await target.run_as_reader(f"SELECT {target.calls[0]}")
    assert await target.canary_calls() == before + 1


def sqlglot_lexer_for_mysql(sql: str) -> str:
    """The guard before issue 18: executable comments refused, then sqlglot's own tokeniser."""
    check_mysql_comments(sql)
    return sql


async def test_with_sqlglots_lexer_the_fuzz_finds_the_comment_boundary_bypass(my_target: Target, monkeypatch: pytest.MonkeyPatch) -> None:
    """Proof by breaking: the same fuzz, same seed and budget, with the MariaDB lexer switched back to sqlglot's."""
    monkeypatch.setitem(guard_module._LEXERS, "mysql", sqlglot_lexer_for_mysql)
    run = await asyncio.to_thread(fuzz, my_target, EXAMPLES, asyncio.get_running_loop(), True)
    assert run.first_bypass is not None, f"the fuzz did not find the bypass in {run.examples} examples"
    examples, sql = run.first_bypass
    print(f"\n[fuzz] with sqlglot's lexer the comment-boundary bypass was found after {examples} examples: {sql!r}")
    dash = sql.index("--")
    assert not sql[dash + 2].isascii(), f"expected a `--` followed by a character MariaDB does not take as white space: {sql!r}"
