"""The SQL guard (services/query/guard/): one read-only query passes, every known bypass is refused with a reason.

PostgreSQL cases are checked against the function catalog of the real test server, read
the way the engine reads it when a pool opens.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import asyncpg
import pytest

from services.query.config import QueryConfig, parse_allowed_functions
from services.query.guard import FunctionPolicy, PgCatalog, check_read_only, default_policy
from shared.errors import BAD_REQUEST, QUERY_FAILED, QUERY_REFUSED, ConfigError, ServiceError
from tests.conftest import Databases


@pytest.fixture(scope="session")
async def pg_catalog(databases: Databases) -> AsyncIterator[PgCatalog]:
    conn = await asyncpg.connect(databases.postgres)
    try:
        yield await PgCatalog.load(conn)
    finally:
        await conn.close()


def policy_for(dialect: str, catalog: PgCatalog) -> FunctionPolicy:
    return catalog.policy() if dialect == "postgres" else default_policy(dialect)


COMMON_BYPASSES = [
    ("COMMIT", "found COMMIT"),
    ("ROLLBACK", "found ROLLBACK"),
    ("BEGIN", "found BEGIN"),
    ("DROP TABLE customers", "found DROP TABLE"),
    ("SELECT 1; COMMIT; DROP TABLE x", "found 3 statements (SELECT, COMMIT, DROP TABLE)"),
    ("SELECT 1; SELECT 2", "found 2 statements"),
    ("INSERT INTO t VALUES (1)", "found INSERT"),
    ("UPDATE t SET a = 1", "found UPDATE"),
    ("DELETE FROM t", "found DELETE"),
    ("CREATE TABLE t (a INT)", "found CREATE TABLE"),
    ("ALTER TABLE t ADD COLUMN b INT", "found ALTER TABLE"),
    ("CREATE VIEW v AS SELECT 1", "found CREATE VIEW"),
    ("SELECT * FROM (SELECT 1) AS s WHERE EXISTS (SELECT 1 FROM t) ; DELETE FROM t", "found 2 statements"),
]

POSTGRES_BYPASSES = [
    ("WITH x AS (DELETE FROM t RETURNING *) SELECT * FROM x", "found DELETE"),
    ("WITH x AS (INSERT INTO t VALUES (1) RETURNING *) SELECT * FROM x", "found INSERT"),
    ("WITH x AS (UPDATE t SET a = 2 RETURNING *) SELECT * FROM x", "found UPDATE"),
    ("SELECT * INTO new_table FROM t", "found SELECT INTO"),
    ("COPY (SELECT 1) TO PROGRAM 'id'", "found COPY"),
    ("COPY t FROM '/etc/passwd'", "found COPY"),
    ("SELECT set_config('transaction_read_only', 'off', false)", "set_config()"),
    ("SELECT pg_catalog.set_config('statement_timeout', '0', false)", "set_config()"),
    ("SET TRANSACTION READ WRITE", "found SET"),
    ("SET statement_timeout = 0", "found SET"),
    ("SELECT * FROM t FOR UPDATE", "found FOR UPDATE"),
    ("SELECT * FROM t FOR NO KEY UPDATE", "FOR UPDATE"),
    ("SELECT * FROM t FOR SHARE", "locking clause"),
    ("SELECT * FROM (SELECT * FROM t FOR UPDATE) AS s", "found FOR UPDATE"),
    ("CALL do_things()", "found CALL"),
    ("DO $$ BEGIN DELETE FROM t; END $$", "found DO"),
    ("PREPARE p AS DELETE FROM t", "found PREPARE"),
    ("LOCK TABLE t", "found LOCK"),
    ("TRUNCATE t", "found TRUNCATE"),
    ("SELECT lo_import('/etc/passwd')", "lo_import()"),
    ("SELECT lo_export(1234, '/tmp/x')", "lo_export()"),
    ("SELECT pg_read_file('/etc/passwd')", "pg_read_file()"),
    ("SELECT pg_ls_dir('.')", "pg_ls_dir()"),
    ("SELECT * FROM dblink('host=evil', 'DELETE FROM t') AS r(a int)", "dblink()"),
    ("SELECT dblink_exec('host=evil', 'DROP TABLE t')", "dblink_exec()"),
    ("SELECT nextval('orders_id_seq')", "nextval()"),
    ("SELECT setval('orders_id_seq', 1)", "setval()"),
    ("SELECT pg_terminate_backend(123)", "pg_terminate_backend()"),
    ("SELECT pg_cancel_backend(123)", "pg_cancel_backend()"),
    ("SELECT pg_advisory_lock(1)", "pg_advisory_lock()"),
    ("SELECT pg_notify('c', 'x')", "pg_notify()"),
    ("SELECT query_to_xml('DELETE FROM t RETURNING *', true, false, '')", "query_to_xml()"),
    ("SELECT 1 WHERE EXISTS (SELECT txid_current())", "txid_current()"),
    ("EXPLAIN ANALYZE DELETE FROM t", "found EXPLAIN"),
    ("REFRESH MATERIALIZED VIEW v", "found REFRESH"),
    ("GRANT ALL ON t TO public", "found GRANT"),
    ("VACUUM t", "found VACUUM"),
]

MYSQL_BYPASSES = [
    ("SELECT 1 INTO @a", "found SELECT INTO"),
    ("SELECT @a := 1", "variable assignment"),
    ("SET @a = 1", "found SET"),
    ("SET SESSION TRANSACTION READ WRITE", "found SET"),
    ("SELECT * FROM t FOR UPDATE", "found FOR UPDATE"),
    ("SELECT * FROM t LOCK IN SHARE MODE", "locking clause"),
    ("CALL p()", "found CALL"),
    ("SELECT GET_LOCK('x', 10)", "get_lock()"),
    ("SELECT LOAD_FILE('/etc/passwd')", "load_file()"),
    ("SELECT NEXTVAL(s)", "nextval()"),
    ("REPLACE INTO t VALUES (1)", "found REPLACE"),
    ("LOCK TABLES t WRITE", "found LOCK"),
    ("HANDLER t OPEN", ""),
    ("SELECT * FROM t INTO OUTFILE '/tmp/x'", ""),
    ("LOAD DATA INFILE '/etc/passwd' INTO TABLE t", ""),
]

SQLITE_BYPASSES = [
    ("ATTACH DATABASE '/tmp/evil.db' AS evil", "found ATTACH"),
    ("DETACH evil", "found DETACH"),
    ("PRAGMA query_only = OFF", "found PRAGMA"),
    ("PRAGMA writable_schema = ON", "found PRAGMA"),
    ("VACUUM INTO '/tmp/copy.db'", "found VACUUM"),
    ("REPLACE INTO t VALUES (1)", "found REPLACE"),
    ("SELECT load_extension('/tmp/evil.so')", "load_extension()"),
    ("SELECT writefile('/tmp/x', 'y')", "writefile()"),
    ("WITH x AS (SELECT 1) DELETE FROM t", "found DELETE"),
]


def _cases(dialect: str, specific: list[tuple[str, str]]) -> list:
    return [pytest.param(dialect, sql, reason, id=f"{dialect}:{sql[:50]}") for sql, reason in COMMON_BYPASSES + specific]


@pytest.mark.parametrize(
    ("dialect", "sql", "reason"),
    _cases("postgres", POSTGRES_BYPASSES) + _cases("mysql", MYSQL_BYPASSES) + _cases("sqlite", SQLITE_BYPASSES),
)
def test_bypass_is_refused_with_a_reason(dialect: str, sql: str, reason: str, pg_catalog: PgCatalog) -> None:
    with pytest.raises(ServiceError) as caught:
        check_read_only(sql, dialect, policy_for(dialect, pg_catalog))
    assert caught.value.code in (QUERY_REFUSED, QUERY_FAILED)
    assert reason in caught.value.message
    assert caught.value.message


@pytest.mark.parametrize(
    ("dialect", "sql"),
    [
        ("postgres", "SELECT 1"),
        ("postgres", "select c.name, count(*) from customers c join orders o on o.customer_id = c.id group by 1 order by 2 desc limit 10"),
        ("postgres", "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 5) SELECT * FROM n"),
        ("postgres", "SELECT a->>'b', x::interval, now() AT TIME ZONE 'UTC', '{1,2}'::int[] FROM t"),
        ("postgres", "SELECT pg_sleep(1)"),
        ("postgres", "VALUES (1, 'a'), (2, 'b')"),
        ("postgres", "(SELECT 1) UNION ALL (SELECT 2)"),
        ("postgres", "SELECT 1 -- ; DROP TABLE x"),
        ("postgres", "SELECT 1;"),
        ("mysql", "SELECT `name`, SLEEP(0) FROM `customers` WHERE id IN (1, 2)"),
        ("mysql", "SELECT JSON_EXTRACT(doc, '$.a') FROM t"),
        ("sqlite", "SELECT * FROM pragma_table_info('customers')"),
        ("sqlite", "SELECT name FROM sqlite_master WHERE type = 'table'"),
    ],
)
def test_read_only_query_passes(dialect: str, sql: str, pg_catalog: PgCatalog) -> None:
    check_read_only(sql, dialect, policy_for(dialect, pg_catalog))


@pytest.mark.parametrize("dialect", ["postgres", "mysql", "sqlite"])
def test_sql_the_parser_cannot_read_says_the_guard_cannot_analyse_it(dialect: str) -> None:
    with pytest.raises(ServiceError) as caught:
        check_read_only("SELEC name FROM customers", dialect)
    assert caught.value.code == QUERY_FAILED
    assert caught.value.message.startswith("the guard cannot analyse this statement")
    assert "line 1" in caught.value.message and "not valid" in caught.value.message


@pytest.mark.parametrize("sql", ["", ";", "  -- only a comment"])
def test_sql_without_a_statement_is_a_bad_request(sql: str) -> None:
    with pytest.raises(ServiceError) as caught:
        check_read_only(sql, "postgres")
    assert caught.value.code == BAD_REQUEST


# --- PostgreSQL: identifiers decoded as the server decodes them -----------------------------


@pytest.mark.parametrize(
    ("sql", "function"),
    [
        ("SELECT U&\"\\0070g_read_file\"('PG_VERSION')", "pg_read_file()"),
        ("SELECT u&\"pg_\\0072ead_file\"('PG_VERSION')", "pg_read_file()"),
        ('SELECT U&"\\+000070g_terminate_backend"(1)', "pg_terminate_backend()"),
        ("SELECT U&\"!0070g_terminate_backend\" UESCAPE '!' (1)", "pg_terminate_backend()"),
        ("SELECT U&\"!0070g_cancel_backend\"\n  /* c */ uescape -- c\n '!' (1)", "pg_cancel_backend()"),
        ("SELECT pg_catalog.U&\"\\0070g_read_file\"('x')", "pg_catalog.pg_read_file()"),
        ('SELECT "pg_catalog"."pg_ls_dir"(\'.\')', "pg_catalog.pg_ls_dir()"),
        ("SELECT * FROM U&\"ts\\005fstat\"('SELECT 1')", "ts_stat()"),
        ("SELECT t.pg_read_file FROM (SELECT 'PG_VERSION'::text) AS t", "pg_read_file()"),
        ("SELECT $$ $$, pg_read_file('x') -- $$", "pg_read_file()"),
        ("SELECT 1 /* nested /* comment */ still comment */, pg_read_file('x')", "pg_read_file()"),
        ("SELECT E'\\'', pg_read_file('x') --'", "pg_read_file()"),
        ("SELECT PG_READ_FILE('x')", "pg_read_file()"),
    ],
)
def test_postgres_call_is_found_however_its_name_is_written(sql: str, function: str, pg_catalog: PgCatalog) -> None:
    with pytest.raises(ServiceError) as caught:
        check_read_only(sql, "postgres", pg_catalog.policy())
    assert caught.value.code == QUERY_REFUSED
    assert f"the function {function}" in caught.value.message


@pytest.mark.parametrize(
    "sql",
    [
        'SELECT U&"\\00zz"(1)',
        'SELECT U&"\\D800"(1)',
        'SELECT U&"\\0000"(1)',
        "SELECT U&\"x\" UESCAPE 'ab' (1)",
        "SELECT U&\"x\" UESCAPE '+' (1)",
        'SELECT U&""(1)',
        'SELECT "unclosed(1)',
        "SELECT 1 /* /* */",
        "SELECT $a$ unclosed",
    ],
)
def test_postgres_text_that_cannot_be_decoded_is_refused_as_not_analysable(sql: str, pg_catalog: PgCatalog) -> None:
    with pytest.raises(ServiceError) as caught:
        check_read_only(sql, "postgres", pg_catalog.policy())
    assert caught.value.code == QUERY_REFUSED
    assert caught.value.message.startswith("the guard cannot analyse this statement")


@pytest.mark.parametrize(
    ("sql", "why"),
    [
        ("SELECT query_to_xml('SELECT 1', true, false, '')", "runs SQL given to it as text"),
        ("SELECT * FROM ts_stat('SELECT to_tsvector(''a'')')", "runs SQL given to it as text"),
        ("SELECT ts_rewrite('a'::tsquery, 'SELECT ''a''::tsquery, ''b''::tsquery')", "runs SQL given to it as text"),
        ("SELECT table_to_xml('pg_class', true, false, '')", "runs SQL given to it as text"),
        ("SELECT pg_cancel_backend(pg_backend_pid())", "signals another backend"),
        ("SELECT pg_terminate_backend(1)", "signals another backend"),
        ("SELECT pg_read_binary_file('PG_VERSION')", "files on the database server"),
        ("SELECT lo_get(1)", "files on the database server"),
        ("SELECT pg_try_advisory_lock(1)", "lock that outlives the query"),
        ("SELECT setseed(0.5)", "session's state"),
        ("SELECT currval('s')", "VOLATILE"),
        ("SELECT pg_export_snapshot()", "VOLATILE"),
        ("SELECT array_in('{1}'::cstring, 23, -1)", "type input/output function"),
        ("SELECT no_such_function_anywhere(1)", "not in the database's catalog"),
    ],
)
def test_postgres_refusal_names_the_function_and_says_why(sql: str, why: str, pg_catalog: PgCatalog) -> None:
    with pytest.raises(ServiceError) as caught:
        check_read_only(sql, "postgres", pg_catalog.policy())
    assert caught.value.code == QUERY_REFUSED
    name = sql.split("(")[0].split()[-1]
    assert f"{name}()" in caught.value.message and why in caught.value.message


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT random(), gen_random_uuid(), clock_timestamp(), pg_sleep(0), current_setting('work_mem'), now()",
        "SELECT string_agg(x::text, ',' ORDER BY x), percentile_cont(0.5) WITHIN GROUP (ORDER BY x) FROM generate_series(1, 3) AS g(x)",
        "SELECT left('abc', 2), substring('abc' FROM 1 FOR 2), extract(year FROM now()), trim(both 'x' FROM 'xax'), position('a' IN 'b')",
        "SELECT x::numeric(10, 2), x::varchar(3), coalesce(x, 0), greatest(x, 1), nullif(x, 2) FROM (VALUES (1)) AS v(x)",
        "SELECT count(*) FILTER (WHERE x > 1) OVER (PARTITION BY x ORDER BY x), row_number() OVER w FROM (VALUES (1)) AS v(x) WINDOW w AS (ORDER BY x)",
        "SELECT 1 FROM pg_class TABLESAMPLE BERNOULLI (10) REPEATABLE (1)",
        "SELECT U&\"\\0075pper\"('x'), pg_catalog.lower('X'), \"md5\"('x')",
        "SELECT pg_total_relation_size('pg_class'), pg_database_size(current_database())",
        "TABLE pg_namespace",
        "SELECT DISTINCT ON (c.oid) c.relname, x.n FROM pg_class c LEFT JOIN (SELECT 1 AS n) x ON true CROSS JOIN LATERAL (SELECT 1) y ORDER BY c.oid",
        "SELECT date_part('epoch', now() - now()), EXTRACT(EPOCH FROM interval '1 hour'), now()::date, to_char(now(), 'YYYY-MM-DD')",
        "SELECT e ->> 'a', '{\"a\": 1}'::jsonb @> '{\"a\": 1}', '{\"a\": 1}'::jsonb ? 'a' FROM jsonb_array_elements('[{\"a\": 1}]') AS e",
        "SELECT mode() WITHIN GROUP (ORDER BY x), percentile_disc(0.9) WITHIN GROUP (ORDER BY x) FROM generate_series(1, 3) AS g(x)",
        "SELECT table_name FROM information_schema.columns WHERE table_schema = 'public' AND data_type ILIKE ANY (ARRAY['%int%'])",
        "SELECT * FROM generate_series(now() - interval '7 days', now(), interval '1 day') WITH ORDINALITY AS g(day, n)",
    ],
)
def test_postgres_read_only_calls_pass(sql: str, pg_catalog: PgCatalog) -> None:
    check_read_only(sql, "postgres", pg_catalog.policy())


def test_postgres_operator_can_allow_a_volatile_function_but_not_a_denied_one(pg_catalog: PgCatalog) -> None:
    allowed = parse_allowed_functions("default:currval,pg_catalog.pg_export_snapshot,pg_terminate_backend")["default"]
    policy = pg_catalog.policy(allowed)
    check_read_only("SELECT currval('s'), pg_catalog.pg_export_snapshot()", "postgres", policy)
    with pytest.raises(ServiceError) as caught:
        check_read_only("SELECT pg_terminate_backend(1)", "postgres", policy)
    assert "signals another backend" in caught.value.message


def test_postgres_without_a_catalog_allows_no_function() -> None:
    with pytest.raises(ServiceError) as caught:
        check_read_only("SELECT upper('x')", "postgres")
    assert "catalog is not loaded" in caught.value.message


@pytest.mark.parametrize(
    "sql",
    [
        "LISTEN channel",
        "NOTIFY channel",
        "UNLISTEN *",
        "EXECUTE p",
        "DEALLOCATE p",
        "DISCARD ALL",
        "RESET ALL",
        "SELECT 1 INTO TEMP t",
        "SELECT * FROM pg_class FOR KEY SHARE",
        "COPY pg_class TO STDOUT",
        "CALL p()",
    ],
)
def test_postgres_statements_that_are_not_queries_are_refused(sql: str, pg_catalog: PgCatalog) -> None:
    with pytest.raises(ServiceError) as caught:
        check_read_only(sql, "postgres", pg_catalog.policy())
    message = caught.value.message
    assert (
        caught.value.code == QUERY_REFUSED
        and message.startswith("only a single read-only statement")
        or (caught.value.code == QUERY_FAILED and message.startswith("the guard cannot analyse this statement"))
    )


# --- MySQL / MariaDB ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT 1 /*! , LOAD_FILE('/etc/passwd') */",
        "SELECT 1 /*!50000 , GET_LOCK('x', 0) */",
        "SELECT 1 /*!999999 , GET_LOCK('x', 0) */",
        "SELECT 1 /*M! , GET_LOCK('x', 0) */",
        "SELECT 1 /*M!100000 , GET_LOCK('x', 0) */",
        "SELECT 1 /*m! , GET_LOCK('x', 0) */",
        "SELECT '/*!' AS looks_like_a_string",
        "/*!40101 SELECT 1 */",
    ],
)
def test_mysql_executable_comments_are_refused_outright(sql: str) -> None:
    with pytest.raises(ServiceError) as caught:
        check_read_only(sql, "mysql")
    assert caught.value.code == QUERY_REFUSED
    assert caught.value.message.startswith("executable comments (/*")
    assert "run their content as SQL" in caught.value.message


def test_mysql_optimizer_hints_and_nested_comments_are_refused() -> None:
    with pytest.raises(ServiceError) as caught:
        check_read_only("SELECT /*+ SET_VAR(max_statement_time = 0) */ 1", "mysql")
    assert "optimizer hints" in caught.value.message
    with pytest.raises(ServiceError) as caught:
        check_read_only("SELECT 1 /* /* */, LOAD_FILE('x') -- */", "mysql")
    assert caught.value.message.startswith("the guard cannot analyse this statement")


@pytest.mark.parametrize(
    ("sql", "function", "why"),
    [
        ("SELECT LOAD_FILE('/etc/passwd')", "load_file()", "files on the database server"),
        ("SELECT GET_LOCK('x', 0)", "get_lock()", "lock that outlives the query"),
        ("SELECT RELEASE_ALL_LOCKS()", "release_all_locks()", "belong to the connection"),
        ("SELECT BENCHMARK(1000000, MD5('x'))", "benchmark()", "burns CPU"),
        ("SELECT NEXTVAL(s)", "nextval()", "advances a sequence"),
        ("SELECT LAST_INSERT_ID(5)", "last_insert_id()", "sets the session"),
        ("SELECT sys_exec('id')", "sys_exec()", "runs a program"),
        ("SELECT my_udf(1)", "my_udf()", "not a reviewed built-in"),
        ("SELECT shop.order_total(1)", "shop.order_total()", "stored function"),
        ("SELECT 1 --1, LOAD_FILE('/etc/passwd')", "load_file()", "files on the database server"),
    ],
)
def test_mysql_refusal_names_the_function_and_says_why(sql: str, function: str, why: str) -> None:
    with pytest.raises(ServiceError) as caught:
        check_read_only(sql, "mysql")
    assert caught.value.code == QUERY_REFUSED
    assert f"the function {function}" in caught.value.message and why in caught.value.message


def test_mysql_operator_can_allow_a_stored_function() -> None:
    allowed = parse_allowed_functions("my:shop.order_total, my_udf")["my"]
    check_read_only("SELECT shop.order_total(1), my_udf(2), SLEEP(0), IF(1, 2, 3), LEFT('a', 1)", "mysql", default_policy("mysql", allowed))


# --- QUERY_ALLOWED_FUNCTIONS -----------------------------------------------------------------


def test_allowed_functions_parse_per_source() -> None:
    parsed = parse_allowed_functions(" pg: Audit.Row_Count , lower_all ; my:shop.total ;")
    assert parsed == {"pg": frozenset({("audit", "row_count"), (None, "lower_all")}), "my": frozenset({("shop", "total")})}


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ("pgfunc", "must look like source:func1,schema.func2"),
        ("pg:a.b.c", "is not a function name"),
        ("pg:f(1)", "is not a function name"),
        ("pg:", "is not a function name"),
        ("pg:f;pg:g", "twice"),
        ("bad name:f", "must look like source:func1"),
    ],
)
def test_malformed_allowed_functions_fail_naming_the_variable(raw: str, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_allowed_functions(raw)
    assert "QUERY_ALLOWED_FUNCTIONS" in str(caught.value) and message in str(caught.value)


def test_allowed_functions_for_an_unknown_source_fail_at_start() -> None:
    from services.query.config import QueryConfig

    with pytest.raises(ConfigError) as caught:
        QueryConfig.from_env({"QUERY_DATABASE_URL": "sqlite:///x.db", "QUERY_ALLOWED_FUNCTIONS": "nosuch:f"})
    assert "QUERY_ALLOWED_FUNCTIONS names source 'nosuch'" in str(caught.value)


@pytest.mark.parametrize(
    ("dialect", "sql", "builder"),
    [
        *[
            (dialect, sql, builder)
            for dialect in ("mysql", "postgres")
            for sql, builder in [
                ("SELECT repeat('ab', 300000)", "repeat()"),
                ("SELECT lpad('x', 1e9)", "lpad()"),
                ("SELECT RPAD('x', 600000, '-')", "rpad()"),
                ("SELECT repeat(repeat('a', 1000), 1000)", "repeat()"),
                ("SELECT repeat('x', 10000000 + 0)", "repeat()"),
                ("SELECT lpad('x', (1000 * 1000))", "lpad()"),
            ]
        ],
        ("mysql", "SELECT SPACE(2000000)", "space()"),
    ],
)
def test_a_value_builder_with_literal_sizes_over_the_cell_limit_is_refused(dialect: str, sql: str, builder: str, pg_catalog: PgCatalog) -> None:
    with pytest.raises(ServiceError) as caught:
        check_read_only(sql, dialect, policy_for(dialect, pg_catalog), max_value_bytes=512 * 1024)
    assert caught.value.code == QUERY_REFUSED and builder in caught.value.message and "QUERY_MAX_CELL_BYTES" in caught.value.message


@pytest.mark.parametrize("sql", ["SELECT repeat('ab', 3), lpad('x', 10), rpad('x', 600000, '')", "SELECT repeat(name, 1000000) FROM t", "SELECT repeat('x', (SELECT 1000000))"])
def test_value_builders_within_the_limit_or_of_unknown_size_pass(sql: str) -> None:
    check_read_only(sql, "mysql", max_value_bytes=512 * 1024)


@pytest.mark.parametrize(
    ("env", "variable"),
    [({"QUERY_PG_WORK_MEM": "lots"}, "QUERY_PG_WORK_MEM"), ({"QUERY_PG_TEMP_FILE_LIMIT": "1 GB"}, "QUERY_PG_TEMP_FILE_LIMIT"), ({"QUERY_MYSQL_MAX_MEM_BYTES": "10"}, "QUERY_MYSQL_MAX_MEM_BYTES")],
)
def test_a_bad_server_side_bound_stops_the_service_naming_the_variable(env: dict[str, str], variable: str) -> None:
    with pytest.raises(ConfigError) as caught:
        QueryConfig.from_env(env)
    assert variable in str(caught.value)


def test_server_side_bounds_are_read_from_the_environment() -> None:
    config = QueryConfig.from_env({"QUERY_PG_WORK_MEM": "64MB", "QUERY_PG_TEMP_FILE_LIMIT": "-1", "QUERY_MYSQL_MAX_MEM_BYTES": "1048576"})
    assert (config.pg_work_mem, config.pg_temp_file_limit, config.mysql_max_mem_bytes) == ("64MB", "-1", 1048576)
