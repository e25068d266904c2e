"""The query service's engines against real SQLite, PostgreSQL and MariaDB: types, read-only, timeouts, cancellation.

PostgreSQL and MariaDB come from testcontainers where a Docker engine answers, else from
the local servers (127.0.0.1:5432 user postgres, 127.0.0.1:3306 user root). Each test run
works in a schema / database of its own, dropped at the end, which the engines read through
the session's reader role (tests/conftest.py), never as the admin that built it.
"""

from __future__ import annotations

import asyncio
import sqlite3
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import nats
import orjson
import pytest

from services.query.engines import Engine, EngineSettings, create_engine
from services.query.values import RowEncoder
from shared.contracts import Subjects
from shared.errors import QUERY_FAILED, QUERY_REFUSED, QUERY_TIMEOUT, ServiceError
from shared.stream import StreamConsumer
from tests.conftest import Databases, Infra, MysqlReader, PostgresReader
from tests.harness import Service, eventually, free_port, service_env
from tests.readers import mariadb_database, postgres_schema


async def read_all(engine: Engine, sql: str, timeout_s: float = 30.0) -> tuple[list[dict[str, str]], list[list]]:
    """Run `sql`; its columns and its rows in their JSON form."""
    async with engine.query(sql, timeout_s) as cursor:
        rows = []
        while batch := await cursor.fetch(5000):
            rows.extend(batch)
        encoder = RowEncoder(cursor.columns)
        return [c.describe() for c in cursor.columns], orjson.loads(encoder.encode(rows))


async def refused(engine: Engine, sql: str) -> ServiceError:
    with pytest.raises(ServiceError) as caught:
        await read_all(engine, sql)
    return caught.value


# --- PostgreSQL ----------------------------------------------------------------------


@pytest.fixture(scope="session")
async def pg_schema(pg_reader: PostgresReader) -> AsyncIterator[str]:
    setup = """
            CREATE TABLE {s}.types (
                i8 bigint, i4 int, num numeric(20, 4), f8 double precision, ts timestamp, tstz timestamptz,
                d date, t time, ttz timetz, iv interval, u uuid, j json, jb jsonb, arr int8[], b bytea,
                bo boolean, tx text, nul text);
            INSERT INTO {s}.types VALUES (
                9007199254740993, 42, 12345.6789, 'NaN', '2024-05-01 12:00:00', '2024-05-01 12:00:00+02',
                '2024-05-01', '13:14:15', '13:14:15+02', '1 year 2 mons 3 days 04:05:06',
                '00000000-0000-0000-0000-000000000001', '{{"a": 1}}', '{{"b": [1, 2]}}', '{{1, 9007199254740993}}',
                '\\x00ff', true, 'hello', NULL);
            CREATE TABLE {s}.big AS SELECT g AS id, md5(g::text) AS label FROM generate_series(1, 200000) g;
            CREATE SEQUENCE {s}.seq;
        """
    async with postgres_schema(pg_reader, setup) as schema:
        yield schema


@pytest.fixture
async def pg(pg_reader: PostgresReader) -> AsyncIterator[Engine]:
    engine = create_engine("pg", pg_reader.url, EngineSettings(pool_size=2))
    await engine.open()
    yield engine
    await engine.close()


async def test_postgres_values_and_column_types(pg: Engine, pg_schema: str) -> None:
    columns, rows = await read_all(pg, f"SELECT * FROM {pg_schema}.types")
    assert [c["type"] for c in columns] == [
        "int8", "int4", "numeric", "float8", "timestamp", "timestamptz", "date", "time", "timetz",
        "interval", "uuid", "json", "jsonb", "int8[]", "bytea", "bool", "text", "text",
    ]  # fmt: skip
    assert rows == [[
        "9007199254740993", 42, "12345.6789", "NaN", "2024-05-01T12:00:00", "2024-05-01T10:00:00+00:00",
        "2024-05-01", "13:14:15", "13:14:15+02:00", "P1Y2M3DT4H5M6S",
        "00000000-0000-0000-0000-000000000001", {"a": 1}, {"b": [1, 2]}, [1, "9007199254740993"],
        "AP8=", True, "hello", None,
    ]]  # fmt: skip


async def test_postgres_batches_of_plain_types_keep_big_ints_and_nan_exact(pg: Engine) -> None:
    """Columns orjson writes itself take a faster path; its checks still apply."""
    sql = "SELECT g AS n, CASE WHEN g = 3 THEN 9007199254740993 ELSE g END AS big, CASE WHEN g = 2 THEN 'NaN'::float8 END AS f FROM generate_series(1, 3) g"
    columns, rows = await read_all(pg, sql)
    assert [c["type"] for c in columns] == ["int4", "int8", "float8"]
    assert rows == [[1, 1, None], [2, 2, "NaN"], [3, "9007199254740993", None]]


@pytest.mark.parametrize(
    ("sql", "code"),
    [
        ("INSERT INTO {s}.types (i4) VALUES (1) RETURNING i4", QUERY_REFUSED),
        ("WITH x AS (DELETE FROM {s}.types RETURNING *) SELECT * FROM x", QUERY_REFUSED),
        ("SELECT nextval('{s}.seq')", QUERY_REFUSED),
        ("CREATE TABLE {s}.evil (a int)", QUERY_REFUSED),
        ("DROP TABLE {s}.types", QUERY_REFUSED),
        ("COMMIT", QUERY_REFUSED),
        ("COPY (SELECT 1) TO STDOUT", QUERY_REFUSED),
        ("SELECT 1; DROP TABLE {s}.types", QUERY_FAILED),
        ("SELECT set_config('transaction_read_only', 'off', true)", QUERY_FAILED),
    ],
)
async def test_postgres_refuses_writes_without_the_guard(pg: Engine, pg_schema: str, sql: str, code: str) -> None:
    error = await refused(pg, sql.format(s=pg_schema))
    assert error.code == code
    _, rows = await read_all(pg, f"SELECT count(*) FROM {pg_schema}.types")
    assert rows == [[1]]


async def test_postgres_timeout_stops_the_query(pg: Engine) -> None:
    error = await refused_with_timeout(pg, "SELECT pg_sleep(5)", 1.0)
    assert error.code == QUERY_TIMEOUT
    assert "1s" in error.message


async def refused_with_timeout(engine: Engine, sql: str, timeout_s: float) -> ServiceError:
    with pytest.raises(ServiceError) as caught:
        await read_all(engine, sql, timeout_s)
    return caught.value


async def test_postgres_streams_a_large_result_in_order(pg: Engine, pg_schema: str) -> None:
    expected = 1
    async for row in pg.iterate(f"SELECT id, label FROM {pg_schema}.big ORDER BY id", 30, batch=7000):
        assert row[0] == expected
        expected += 1
    assert expected == 200_001


async def _pg_active(databases: Databases, marker: str) -> int:
    conn = await asyncpg.connect(databases.postgres)
    try:
        return await conn.fetchval("SELECT count(*) FROM pg_stat_activity WHERE query LIKE $1 AND state <> 'idle' AND pid <> pg_backend_pid()", f"%{marker}%")
    finally:
        await conn.close()


async def test_postgres_cancelled_query_stops_on_the_server(pg: Engine, databases: Databases) -> None:
    marker = f"cancel_{uuid.uuid4().hex[:8]}"

    async def run() -> None:
        async for _ in pg.iterate(f"SELECT pg_sleep(30) AS {marker}", 60):
            pass

    task = asyncio.create_task(run())
    await eventually(lambda: _has(databases, marker), "the query to run on the server")
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await eventually(lambda: _gone(databases, marker), "the server to stop the query")
    _, rows = await read_all(pg, "SELECT 1")  # the pool still serves
    assert rows == [[1]]


async def _has(databases: Databases, marker: str) -> bool:
    return await _pg_active(databases, marker) > 0


async def _gone(databases: Databases, marker: str) -> bool:
    return await _pg_active(databases, marker) == 0


async def test_client_disconnect_stops_the_postgres_query(infra: Infra, databases: Databases, pg_reader: PostgresReader, pg_schema: str) -> None:
    """Through a real query service: a consumer that cancels mid-stream, or while the database works, frees the backend."""
    prefix = f"q{uuid.uuid4().hex[:10]}"
    service = Service(
        "query",
        service_env(NATS_URL=infra.nats_url, NATS_SUBJECT_PREFIX=prefix, QUERY_DATABASE_URL=pg_reader.url, OPS_PORT=str(free_port())),
    ).start()
    nc = await nats.connect(infra.nats_url)
    try:
        subjects = Subjects(prefix)
        # Mid-stream: read the meta and one rows message, acknowledge nothing more, then go away.
        marker = f"stream_{uuid.uuid4().hex[:8]}"
        consumer = StreamConsumer(nc, subjects, window=1)
        await consumer.start(f"SELECT id, label AS {marker} FROM {pg_schema}.big", None)
        messages = consumer.messages()
        kinds = [(await anext(messages)).t, (await anext(messages)).t]
        await messages.aclose()  # stop reading: the second rows message is never acknowledged
        assert kinds == ["meta", "rows"]
        assert await _pg_active(databases, marker) == 1  # holding its cursor, idle in transaction
        await consumer.close()
        await eventually(lambda: _gone(databases, marker), "the streaming query's cursor to be freed")

        # While the database works: no rows yet, the cancel must reach the server.
        marker = f"sleep_{uuid.uuid4().hex[:8]}"
        consumer = StreamConsumer(nc, subjects)
        await consumer.start(f"SELECT pg_sleep(30) AS {marker}", None)
        await eventually(lambda: _has(databases, marker), "the query to run on the server")
        await consumer.close()
        await eventually(lambda: _gone(databases, marker), "the server to stop the query")
        service.wait_for_line(lambda line: '"query_cancelled"' in line and marker in line)
        assert [e["reason"] for e in service.events("query_cancelled")] == ["the client cancelled the stream"] * 2
    finally:
        await nc.close()
        assert service.stop() == 0


# --- MariaDB / MySQL ---------------------------------------------------------------


@pytest.fixture(scope="session")
async def my_url(my_reader: MysqlReader) -> AsyncIterator[str]:
    """A MariaDB database of this test run, with a types table, as the reader account's URL."""
    setup = (
        """CREATE TABLE types (
                ub BIGINT UNSIGNED, i INT, dec_ DECIMAL(20, 4), dbl DOUBLE, dt DATETIME(3), ts TIMESTAMP NULL, d DATE,
                t TIME, bt BIT(8), bl BLOB, js JSON, e ENUM('a', 'b'), vc VARCHAR(20), nul VARCHAR(5))""",
        """INSERT INTO types VALUES (
                18446744073709551615, 42, 12345.6789, 1.5, '2024-05-01 12:00:00.250', '2024-05-01 12:00:00',
                '2024-05-01', '-01:02:03', b'00000101', x'00ff', '{"a": 1}', 'b', 'hello', NULL)""",
    )
    async with mariadb_database(my_reader, setup) as url:
        yield url


@pytest.fixture
async def my(my_url: str) -> AsyncIterator[Engine]:
    engine = create_engine("my", my_url, EngineSettings(pool_size=2))
    await engine.open()
    yield engine
    await engine.close()


async def test_mariadb_values_and_column_types(my: Engine) -> None:
    columns, rows = await read_all(my, "SELECT * FROM types")
    assert [c["type"] for c in columns] == [
        "BIGINT", "INT", "DECIMAL", "DOUBLE", "DATETIME", "TIMESTAMP", "DATE", "TIME", "BIT", "BLOB", "TEXT", "ENUM", "VARCHAR", "VARCHAR",
    ]  # fmt: skip
    assert rows == [[
        "18446744073709551615", 42, "12345.6789", 1.5, "2024-05-01T12:00:00.250000", "2024-05-01T12:00:00", "2024-05-01",
        "-01:02:03", 5, "AP8=", '{"a": 1}', "b", "hello", None,
    ]]  # fmt: skip


@pytest.mark.parametrize(
    ("sql", "code"),
    [
        ("INSERT INTO types (i) VALUES (1)", QUERY_REFUSED),
        ("DELETE FROM types", QUERY_REFUSED),
        ("CREATE TABLE evil (a INT)", QUERY_REFUSED),
        ("CREATE TEMPORARY TABLE evil (a INT)", QUERY_REFUSED),
        ("DROP TABLE types", QUERY_REFUSED),
        ("SELECT 1; DROP TABLE types", QUERY_FAILED),
    ],
)
async def test_mariadb_refuses_writes_without_the_guard(my: Engine, sql: str, code: str) -> None:
    error = await refused(my, sql)
    assert error.code == code
    _, rows = await read_all(my, "SELECT count(*) FROM types")
    assert rows == [[1]]


async def test_mariadb_timeout_stops_the_query(my: Engine) -> None:
    error = await refused_with_timeout(my, "SELECT SLEEP(5)", 1.0)
    assert error.code == QUERY_TIMEOUT


async def test_mariadb_streams_a_large_result_in_order(my: Engine) -> None:
    expected = 1
    async for row in my.iterate("SELECT seq, MD5(seq) FROM seq_1_to_200000", 30, batch=7000):
        assert row[0] == expected
        expected += 1
    assert expected == 200_001


async def test_mariadb_query_left_early_is_killed_and_the_pool_still_serves(my: Engine, my_url: str) -> None:
    marker = f"cancel_{uuid.uuid4().hex[:8]}"

    async def running() -> int:
        _, rows = await read_all(my, f"SELECT count(*) FROM information_schema.processlist WHERE info LIKE '%SLEEP(30) AS {marker}%' AND id <> CONNECTION_ID()")
        return rows[0][0]

    async def run() -> None:
        async for _ in my.iterate(f"SELECT SLEEP(30) AS {marker}", 60):
            pass

    task = asyncio.create_task(run())

    async def started() -> bool:
        return await running() == 1

    async def stopped() -> bool:
        return await running() == 0

    await eventually(started, "the query to run on the server")
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await eventually(stopped, "the server to stop the query")
    async with my.query("SELECT seq FROM seq_1_to_1000000", 30) as cursor:
        assert len(await cursor.fetch(10)) == 10  # left with most rows unread
    _, rows = await read_all(my, "SELECT 1")
    assert rows == [[1]]


# --- SQLite ----------------------------------------------------------------------------


@pytest.fixture
def sqlite_file(tmp_path: Path) -> Path:
    path = tmp_path / "types.db"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE t (i INTEGER, r REAL, s TEXT, b BLOB, n)")
    conn.execute("INSERT INTO t VALUES (?, ?, ?, ?, ?)", (2**62, float("inf"), "x", b"\x01", None))
    conn.commit()
    conn.close()
    return path


@pytest.fixture
async def lite(sqlite_file: Path) -> AsyncIterator[Engine]:
    # One worker thread: a query that kept running after its cancel would block the next one.
    engine = create_engine("lite", f"sqlite:///{sqlite_file}", EngineSettings(pool_size=1))
    await engine.open()
    yield engine
    await engine.close()


async def test_sqlite_values_and_inferred_types(lite: Engine) -> None:
    columns, rows = await read_all(lite, "SELECT * FROM t")
    assert columns == [
        {"name": "i", "type": "INTEGER"}, {"name": "r", "type": "REAL"}, {"name": "s", "type": "TEXT"},
        {"name": "b", "type": "BLOB"}, {"name": "n", "type": "NULL"},
    ]  # fmt: skip
    assert rows == [[str(2**62), "Infinity", "x", "AQ==", None]]


@pytest.mark.parametrize(
    "sql",
    [
        "INSERT INTO t (i) VALUES (1)",
        "DELETE FROM t",
        "CREATE TABLE evil (a)",
        "DROP TABLE t",
        "ATTACH DATABASE ':memory:' AS evil",
        "PRAGMA query_only = OFF",
        "PRAGMA journal_mode = DELETE",
        "BEGIN",
    ],
)
async def test_sqlite_refuses_writes_without_the_guard(lite: Engine, sqlite_file: Path, sql: str) -> None:
    error = await refused(lite, sql)
    assert error.code == QUERY_REFUSED
    _, rows = await read_all(lite, "SELECT count(*) FROM t")
    assert rows == [[1]]


async def test_sqlite_timeout_interrupts_the_query(lite: Engine) -> None:
    error = await refused_with_timeout(lite, "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n) SELECT count(*) FROM n", 1.0)
    assert error.code == QUERY_TIMEOUT


async def test_sqlite_streams_a_large_result_in_order(lite: Engine) -> None:
    expected = 1
    sql = "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 200000) SELECT i, 'row ' || i FROM n"
    async for row in lite.iterate(sql, 30, batch=7000):
        assert row == (expected, f"row {expected}")
        expected += 1
    assert expected == 200_001


async def test_sqlite_cancelled_query_is_interrupted(lite: Engine) -> None:
    started = asyncio.Event()

    # Two rows at once, then a scan that finds nothing more for hours (sqlite3 reads one row ahead).
    endless = "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n) SELECT i FROM n WHERE i <= 2 OR i > 1e15"

    async def run() -> None:
        async with lite.query(endless, 60) as cursor:
            assert await cursor.fetch(1) == [(1,)]
            started.set()
            await cursor.fetch(1)  # scans for hours

    task = asyncio.create_task(run())
    await asyncio.wait_for(started.wait(), 10)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    _, rows = await asyncio.wait_for(read_all(lite, "SELECT 1"), 10)  # the only worker was freed
    assert rows == [[1]]
