"""Bounded memory under any input: byte limits per value, row and fetch, and the per-replica cap on queries.

The engines are driven as the session's reader role/account (tests/conftest.py). The
system tests run real gateway, session and query processes, and read the query service's
peak RSS (VmHWM) from /proc: they assert memory, not time.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator, Awaitable
from contextlib import asynccontextmanager
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncmy
import asyncpg
import orjson
import pytest

from services.query.config import QueryConfig
from services.query.engines import Engine, EngineSettings, create_engine
from services.query.values import RowEncoder
from services.query.wire import FETCH_ROWS_AT_LIMIT, ByteLimits, memory_bound
from shared.errors import QUERY_FAILED, ConfigError, ServiceError
from shared.stream import DEFAULT_WINDOW
from tests.client import browser, events, login, run_query
from tests.conftest import Databases, MysqlReader, PostgresReader, SystemFactory
from tests.harness import eventually
from tests.readers import mariadb_database

SMALL = ByteLimits(max_cell_bytes=4096, max_row_bytes=8192)


async def read_all(engine: Engine, sql: str, batch: int = 1000) -> list[list]:
    async with engine.query(sql, 60) as cursor:
        rows = []
        while part := await cursor.fetch(batch):
            rows.extend(part)
        return orjson.loads(RowEncoder(cursor.columns).encode(rows))


async def refusal(engine: Engine, sql: str, batch: int = 1000) -> ServiceError:
    with pytest.raises(ServiceError) as caught:
        await read_all(engine, sql, batch)
    return caught.value


# --- The limits on each engine ---------------------------------------------------------


@pytest.fixture(scope="module")
async def pg_small(pg_reader: PostgresReader) -> AsyncIterator[tuple[Engine, str]]:
    engine = create_engine("pg_small", pg_reader.url, EngineSettings(pool_size=2, limits=SMALL))
    await engine.open()
    try:
        yield engine, pg_reader.role
    finally:
        await engine.close()


@pytest.fixture(scope="module")
async def my_small(my_reader: MysqlReader) -> AsyncIterator[tuple[Engine, str]]:
    async with mariadb_database(my_reader) as url:
        engine = create_engine("my_small", url, EngineSettings(pool_size=2, limits=SMALL))
        await engine.open()
        try:
            yield engine, my_reader.user
        finally:
            await engine.close()


@pytest.fixture
async def lite_small(tmp_path: Path) -> AsyncIterator[Engine]:
    path = tmp_path / "limits.db"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE t (a)")
    conn.execute("INSERT INTO t VALUES (zeroblob(9000))")  # a stored value over the row limit
    conn.commit()
    conn.close()
    engine = create_engine("lite_small", f"sqlite:///{path}", EngineSettings(pool_size=1, limits=SMALL))
    await engine.open()
    yield engine
    await engine.close()


async def pg_active(databases: Databases, role: str) -> int:
    conn = await asyncpg.connect(databases.postgres)
    try:
        return await conn.fetchval("SELECT count(*) FROM pg_stat_activity WHERE usename = $1 AND state = 'active'", role)
    finally:
        await conn.close()


async def my_active(databases: Databases, user: str) -> int:
    url = urlsplit(databases.mysql)
    conn = await asyncmy.connect(host=url.hostname, port=url.port or 3306, user=url.username, password=url.password or "")
    try:
        async with conn.cursor() as cur:
            await cur.execute("SELECT count(*) FROM information_schema.processlist WHERE user = %s AND command = 'Query'", (user,))
            return (await cur.fetchone())[0]
    finally:
        conn.close()


@pytest.mark.parametrize(
    ("sql", "variable"),
    [
        ("SELECT repeat('x', 5000)", "QUERY_MAX_CELL_BYTES"),
        ("SELECT repeat('x', 3000), repeat('y', 3000), repeat('z', 3000)", "QUERY_MAX_ROW_BYTES"),
        ("SELECT g, repeat('x', 4000) FROM generate_series(1, 100) g", f"{FETCH_ROWS_AT_LIMIT} x QUERY_MAX_ROW_BYTES"),
        ("SELECT ARRAY[repeat('x', 3000), repeat('y', 3000), repeat('z', 3000)]", "QUERY_MAX_ROW_BYTES"),
        ("SELECT repeat('x', 9000)::int", "QUERY_MAX_ROW_BYTES"),  # the server's error message quotes the whole value
    ],
)
async def test_postgres_refuses_what_is_over_a_limit_before_reading_it(pg_small: tuple[Engine, str], databases: Databases, sql: str, variable: str) -> None:
    engine, role = pg_small
    error = await refusal(engine, sql, batch=100)
    assert error.code == QUERY_FAILED
    assert variable in error.message
    await eventually(lambda: _none(pg_active(databases, role)), "the refused query to end on the server", timeout=20)
    assert await read_all(engine, "SELECT 1") == [[1]]  # the pool replaced the connection it cut


async def test_postgres_values_just_within_the_limits_arrive_whole(pg_small: tuple[Engine, str]) -> None:
    engine, _ = pg_small
    rows = await read_all(engine, "SELECT repeat('x', 4000), repeat('y', 4000), g FROM generate_series(1, 20) g", batch=2)
    assert rows == [["x" * 4000, "y" * 4000, g] for g in range(1, 21)]


@pytest.mark.parametrize(
    ("sql", "variable"),
    [
        ("SELECT REPEAT('x', 5000)", "QUERY_MAX_CELL_BYTES"),
        ("SELECT REPEAT('x', 3000), REPEAT('y', 3000), REPEAT('z', 3000)", "QUERY_MAX_ROW_BYTES"),
        ("SELECT seq, REPEAT('x', 4000) FROM seq_1_to_100", f"{FETCH_ROWS_AT_LIMIT} x QUERY_MAX_ROW_BYTES"),
    ],
)
async def test_mariadb_refuses_what_is_over_a_limit_before_reading_it(my_small: tuple[Engine, str], databases: Databases, sql: str, variable: str) -> None:
    engine, user = my_small
    error = await refusal(engine, sql, batch=100)
    assert error.code == QUERY_FAILED
    assert variable in error.message
    await eventually(lambda: _none(my_active(databases, user)), "the refused query to end on the server", timeout=20)
    assert await read_all(engine, "SELECT 1") == [[1]]


async def test_mariadb_values_just_within_the_limits_arrive_whole(my_small: tuple[Engine, str]) -> None:
    engine, _ = my_small
    rows = await read_all(engine, "SELECT REPEAT('x', 4000), REPEAT('y', 4000), seq FROM seq_1_to_20", batch=2)
    assert rows == [["x" * 4000, "y" * 4000, g] for g in range(1, 21)]


@pytest.mark.parametrize(
    ("sql", "variable"),
    [
        ("SELECT zeroblob(300000000)", "QUERY_MAX_ROW_BYTES"),
        ("SELECT a FROM t", "QUERY_MAX_ROW_BYTES"),
        ("SELECT printf('%.*c', 5000, 'x')", "QUERY_MAX_CELL_BYTES"),
        # 1,400 characters, but 4,200 bytes of UTF-8: counted as bytes, it is over the 4,096-byte limit.
        ("SELECT replace(printf('%.*c', 1400, 'x'), 'x', '€')", "QUERY_MAX_CELL_BYTES"),
        ("SELECT printf('%.*c', 3000, 'x'), printf('%.*c', 3000, 'y'), printf('%.*c', 3000, 'z')", "QUERY_MAX_ROW_BYTES"),
        (
            "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 100) SELECT i, printf('%.*c', 4000, 'x') FROM n",
            f"{FETCH_ROWS_AT_LIMIT} x QUERY_MAX_ROW_BYTES",
        ),
    ],
)
async def test_sqlite_refuses_what_is_over_a_limit(lite_small: Engine, sql: str, variable: str) -> None:
    error = await refusal(lite_small, sql, batch=100)
    assert error.code == QUERY_FAILED
    assert variable in error.message


async def test_sqlite_values_just_within_the_limits_arrive_whole(lite_small: Engine) -> None:
    # 2,000 characters of 2-byte UTF-8 are 4,000 bytes: within the cell limit, measured as bytes.
    sql = "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 20) SELECT printf('%.*c', 4000, 'x'), replace(printf('%.*c', 2000, 'y'), 'y', 'é'), i FROM n"
    rows = await read_all(lite_small, sql, batch=2)
    assert rows == [["x" * 4000, "é" * 2000, i] for i in range(1, 21)]


async def test_sqlite_rows_of_many_numbers_are_not_held_to_the_text_limits(lite_small: Engine) -> None:
    # A row is measured by its MessagePack length first (numbers included); past a quarter of the
    # cell limit it is measured value by value, where only strings and blobs count: 1,000 integers
    # (9,000 bytes of MessagePack, over the 8,192-byte row limit) and 1,000 characters arrive
    # whole, through the first fetch and the encoded ones alike.
    columns = ", ".join(f"i * {2**40 + k}" for k in range(1000))
    sql = f"WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 40) SELECT {columns}, printf('%.*c', 1000, 'x') FROM n"
    expected = [[i * (2**40 + k) for k in range(1000)] + ["x" * 1000] for i in range(1, 41)]
    assert await read_all(lite_small, sql, batch=16) == expected
    async with lite_small.query(sql, 60) as cursor:
        first = await cursor.fetch(16)
        encoder = RowEncoder(cursor.columns)
        rows = orjson.loads(encoder.encode(first))
        while True:
            got, chunks, finished = await cursor.fetch_chunks(100, encoder, 1 << 20, len(rows))
            rows += [row for _, payload in chunks for row in orjson.loads(payload)]
            if finished:
                break
    assert rows == expected


async def _none(count: Awaitable[int]) -> bool:
    return await count == 0


@pytest.mark.parametrize(
    ("env", "variable"),
    [
        ({"QUERY_MAX_CELL_BYTES": "2048", "QUERY_MAX_ROW_BYTES": "1024"}, "QUERY_MAX_CELL_BYTES"),
        ({"QUERY_MAX_ROW_BYTES": str(2**24)}, "QUERY_MAX_ROW_BYTES"),
        ({"QUERY_MAX_ROW_BYTES": "lots"}, "QUERY_MAX_ROW_BYTES"),
        ({"QUERY_MAX_CONCURRENT": "0"}, "QUERY_MAX_CONCURRENT"),
    ],
)
def test_a_bad_limit_fails_naming_the_variable(env: dict[str, str], variable: str) -> None:
    with pytest.raises(ConfigError, match=variable):
        QueryConfig.from_env(env)


# --- One replica, through HTTP -----------------------------------------------------------


def peak_rss(pid: int) -> int:
    """The process's peak resident set size in bytes (VmHWM)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM in /proc status")


def error_texts(parts: list) -> list[str]:
    return [p["errorText"] for p in parts if isinstance(p, dict) and p.get("type") == "tool-output-error"]


async def test_five_concurrent_oversized_cells_stay_within_the_stated_memory_bound(
    make_system: SystemFactory, databases: Databases, pg_reader: PostgresReader, my_reader: MysqlReader, tmp_path: Path
) -> None:
    lite = tmp_path / "lite.db"
    sqlite3.connect(lite).close()
    env = {"QUERY_MAX_CONCURRENT": "5", "QUERY_MAX_ROW_BYTES": str(64 * 1024), "QUERY_MAX_CELL_BYTES": str(32 * 1024)}
    role, user, pg_url = pg_reader.role, my_reader.user, pg_reader.url
    async with mariadb_database(my_reader) as my_url:
        system = make_system(QUERY_DATABASE_URL=pg_url, QUERY_SOURCES=f"my={my_url},lite=sqlite:///{lite}", **env)
        query = system.services["query"]
        assert query.proc is not None
        config = QueryConfig.from_env(env | {"QUERY_DATABASE_URL": pg_url})
        bound = memory_bound(
            max_concurrent=config.max_concurrent,
            max_row_bytes=config.max_row_bytes,
            message_bytes=min(config.chunk_bytes * 4, 1024 * 1024),
            window=DEFAULT_WINDOW,
        )
        async with browser(system.url) as client:
            await login(client)
            for source in (None, "my", "lite"):  # every source opened and every code path warmed up
                _, parts = await run_query(client, "SELECT 1", source=source)
                assert not error_texts(parts)
            idle = peak_rss(query.proc.pid)
            # Sizes from a subquery, not literal: the guard refuses literal ones before they run
            # (docs/query-guard.md); these reach the server, and the wire check is what stops them.
            cases = [
                # 60 MB: one cell alone is over the bound, five are six times it, and PostgreSQL builds each in seconds less.
                (None, "SELECT repeat('x', (SELECT 60000000))"),
                # MariaDB sends nothing over its max_allowed_packet (16 MB here; REPEAT returns NULL beyond it).
                ("my", "SELECT REPEAT('x', (SELECT 15000000))"),
                ("lite", "SELECT zeroblob((SELECT 300000000))"),
            ]
            for source, sql in cases:
                results = await asyncio.gather(*(run_query(client, sql, source=source) for _ in range(5)))
                for response, parts in results:
                    assert response.status == 200
                    (text,) = error_texts(parts)
                    assert "QUERY_MAX_ROW_BYTES" in text
        peak = peak_rss(query.proc.pid)
        assert peak - idle <= bound, f"peak RSS grew by {(peak - idle) >> 20} MiB, over the {bound >> 20} MiB bound"
        await eventually(lambda: _none(pg_active(databases, role)), "the PostgreSQL queries to end", timeout=20)
        await eventually(lambda: _none(my_active(databases, user)), "the MariaDB queries to end", timeout=20)


async def test_a_full_replica_answers_503_with_retry_after_and_runs_nothing(make_system: SystemFactory, databases: Databases, pg_reader: PostgresReader) -> None:
    admin = await asyncpg.connect(databases.postgres)
    try:
        started = await admin.fetchval("SELECT clock_timestamp()")
    finally:
        await admin.close()
    system = make_system(QUERY_DATABASE_URL=pg_reader.url, QUERY_MAX_CONCURRENT="1", QUERY_QUEUE_MAX="0")  # no queue: past the one slot is 503
    async with browser(system.url) as reader, browser(system.url) as other:
        await login(reader)
        await login(other, email="grace@example.com", name="Grace")
        # A result far larger than the socket buffers, never read: its stream holds the one slot.
        holder = await reader.post("/api/query", json={"sql": "SELECT g, repeat('x', 1000) AS held FROM generate_series(1, 2000000) g"})
        try:
            assert holder.status == 200
            async with other.post("/api/query", json={"sql": "SELECT 1 AS refused_marker"}) as refused:
                assert refused.status == 503
                assert refused.headers["Retry-After"].isdigit()
                body = await refused.json()
            assert body["error"]["code"] == "busy"
            assert "QUERY_MAX_CONCURRENT" in body["error"]["message"] and "QUERY_QUEUE_MAX" in body["error"]["message"]
            # By effect: the refused query never reached the database. The one backend this
            # system opened is the holder's, still running its query; a second query would
            # have needed a second connection.
            conn = await asyncpg.connect(databases.postgres)
            try:
                backends = await conn.fetch("SELECT query FROM pg_stat_activity WHERE usename = $1 AND backend_start >= $2", pg_reader.role, started)
            finally:
                await conn.close()
            assert ["held" in b["query"] for b in backends] == [True]
        finally:
            holder.close()

        async def slot_free() -> bool:
            async with other.post("/api/query", json={"sql": "SELECT 2 AS n"}) as response:
                if response.status == 503:
                    return False
                parts = [part async for part in events(response)]
            return any(isinstance(p, dict) and p.get("type") == "tool-output-available" and not p.get("preliminary") for p in parts)

        await eventually(slot_free, "the slot to come free once the first client went away", timeout=30)


# --- The framing holds whatever the socket reads look like ---------------------------------


@asynccontextmanager
async def dribbling_proxy(target_url: str, chunk: int) -> AsyncIterator[str]:
    """A TCP relay in front of the database that passes the server's bytes on `chunk` at a time,
    so message headers and values arrive split at every offset; yields the URL through it."""
    target = urlsplit(target_url)
    writers: list[asyncio.StreamWriter] = []

    async def pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, step: int) -> None:
        try:
            while data := await reader.read(65536):
                for start in range(0, len(data), step):
                    writer.write(data[start : start + step])
                    await writer.drain()
                    await asyncio.sleep(0)  # let the receiving protocol see this piece on its own
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.close()

    async def relay(client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        server_reader, server_writer = await asyncio.open_connection(target.hostname, target.port)
        writers.extend([client_writer, server_writer])
        await asyncio.gather(pump(client_reader, server_writer, 65536), pump(server_reader, client_writer, chunk))

    server = await asyncio.start_server(relay, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield urlunsplit(target._replace(netloc=f"{target.netloc.rpartition('@')[0]}@127.0.0.1:{port}"))
    finally:
        server.close()
        for writer in writers:
            writer.close()
        await server.wait_closed()


@pytest.mark.parametrize("chunk", [1, 3, 7])
async def test_postgres_limits_hold_when_every_message_arrives_in_pieces(pg_reader: PostgresReader, chunk: int) -> None:
    async with dribbling_proxy(pg_reader.url, chunk) as url:
        engine = create_engine("pg_dribble", url, EngineSettings(pool_size=1, limits=SMALL))
        await engine.open()
        try:
            rows = await read_all(engine, "SELECT repeat('x', 4000), NULL::text, g FROM generate_series(1, 3) g", batch=2)
            assert rows == [["x" * 4000, None, g] for g in range(1, 4)]
            assert "QUERY_MAX_CELL_BYTES" in (await refusal(engine, "SELECT 1, repeat('x', 5000)")).message
            assert "QUERY_MAX_ROW_BYTES" in (await refusal(engine, "SELECT repeat('x', 3000), repeat('y', 3000), repeat('z', 3000)")).message
            assert await read_all(engine, "SELECT 'after'") == [["after"]]
        finally:
            await engine.close()


@pytest.mark.parametrize("chunk", [1, 5])
async def test_mariadb_limits_hold_when_every_packet_arrives_in_pieces(my_reader: MysqlReader, chunk: int) -> None:
    async with mariadb_database(my_reader) as direct, dribbling_proxy(direct, chunk) as url:
        engine = create_engine("my_dribble", url, EngineSettings(pool_size=1, limits=SMALL))
        await engine.open()
        try:
            rows = await read_all(engine, "SELECT REPEAT('x', 4000), NULL, seq FROM seq_1_to_3", batch=2)
            assert rows == [["x" * 4000, None, g] for g in range(1, 4)]
            assert "QUERY_MAX_CELL_BYTES" in (await refusal(engine, "SELECT 1, REPEAT('x', 5000)")).message
            assert "QUERY_MAX_ROW_BYTES" in (await refusal(engine, "SELECT REPEAT('x', 3000), REPEAT('y', 3000), REPEAT('z', 3000)")).message
            assert await read_all(engine, "SELECT 'after'") == [["after"]]
        finally:
            await engine.close()
