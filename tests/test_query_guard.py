"""The SQL guard (services/query/guard/): one read-only query passes, every known bypass is refused with a reason.

PostgreSQL cases are checked against the function catalog of the real test server, read
the way the engine reads it when a pool opens.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import asyncpg
import pytest

from services.query.config import parse_allowed_functions
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
    assert caught.value.code == QUERY_REFUSED
    assert caught.value.message.startswith("the guard cannot analyse this statement")
    assert "line 1" in caught.value.message and "not valid" in caught.value.message


@pytest.mark.parametrize("sql", ["", ";", "  -- only a comment"])
def test_sql_without_a_statement_is_a_bad_request(sql: str) -> None:
    with pytest.raises(ServiceError) as caught:
        check_read_only(sql, "postgres")
    assert caught.value.code == BAD_REQUEST
