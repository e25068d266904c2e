"""describe_schema (`query.schema`, `GET /api/schema`) over real PostgreSQL, MariaDB and SQLite.

Each source is a database of its own, read by the query service through a read-only role
that these fixtures create (unique names, dropped afterwards) and that may SELECT only
some of its tables.
"""

from __future__ import annotations

import asyncio
import sqlite3
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import asyncmy
import asyncpg
import msgspec
import pytest
from nats.aio.client import Client as NATS

from services.gateway.clients import QueryClient
from shared.bus import request
from shared.contracts import Subjects
from shared.errors import ServiceError
from tests.client import browser, login
from tests.conftest import Databases, Infra, InProcess, InProcessFactory, System, SystemFactory, running_system
from tests.harness import free_port, wait_until

TAG = uuid.uuid4().hex[:10]


@dataclass
class Source:
    name: str
    url: str
    admin: str
    """An admin URL of the same database, for changing it from a test."""


# --- the three databases --------------------------------------------------------------


def _pg_url(admin: str, user: str, db: str) -> str:
    parts = urlsplit(admin)
    return f"postgresql://{user}@{parts.hostname or '127.0.0.1'}:{parts.port or 5432}/{db}"


@pytest.fixture(scope="module")
async def pg(databases: Databases) -> AsyncIterator[Source]:
    db, role = f"sch_{TAG}", f"sch_ro_{TAG}"
    admin = await asyncpg.connect(databases.postgres)
    try:
        await admin.execute(f"CREATE DATABASE {db}")
        await admin.execute(f"CREATE ROLE {role} LOGIN")
        conn = await asyncpg.connect(_pg_url(databases.postgres, urlsplit(databases.postgres).username or "postgres", db))
        try:
            await conn.execute(f"""
                CREATE TABLE customers (id serial PRIMARY KEY, name text NOT NULL, email varchar(200));
                CREATE TABLE orders (
                    id bigserial PRIMARY KEY,
                    customer_id int NOT NULL REFERENCES customers (id),
                    total numeric(12, 2),
                    placed timestamptz NOT NULL DEFAULT now());
                CREATE TABLE secrets (id int PRIMARY KEY, api_key text);
                CREATE TABLE partial (visible int, hidden text);
                CREATE SCHEMA extra;
                CREATE TABLE extra.notes (customer_id int, region text, body text,
                    FOREIGN KEY (customer_id) REFERENCES public.customers (id));
                CREATE VIEW big_orders AS SELECT * FROM orders WHERE total > 100;
                COMMENT ON TABLE orders IS 'Orders placed';
                COMMENT ON COLUMN orders.total IS 'Total in EUR';
                INSERT INTO customers (name) SELECT 'c' || g FROM generate_series(1, 40) g;
                INSERT INTO orders (customer_id, total) SELECT 1 + g % 40, g FROM generate_series(1, 300) g;
                ANALYZE customers; ANALYZE orders;
                GRANT SELECT ON customers, orders, big_orders TO {role};
                GRANT SELECT (visible) ON partial TO {role};
                GRANT USAGE ON SCHEMA extra TO {role};
                GRANT SELECT ON extra.notes TO {role};
            """)
        finally:
            await conn.close()
        yield Source("pg", _pg_url(databases.postgres, role, db), _pg_url(databases.postgres, urlsplit(databases.postgres).username or "postgres", db))
    finally:
        await admin.execute(f"DROP DATABASE IF EXISTS {db} WITH (FORCE)")
        await admin.execute(f"DROP ROLE IF EXISTS {role}")
        await admin.close()


def _my_params(url: str) -> dict[str, Any]:
    parts = urlsplit(url)
    return {"host": parts.hostname or "127.0.0.1", "port": parts.port or 3306, "user": parts.username or "root", "password": parts.password or ""}


@pytest.fixture(scope="module")
async def my(databases: Databases) -> AsyncIterator[Source]:
    db, other, user = f"sch_{TAG}", f"sch_other_{TAG}", f"sch_ro_{TAG}"
    params = _my_params(databases.mysql)
    conn = await asyncmy.connect(**params, autocommit=True)
    try:
        async with conn.cursor() as cur:
            for statement in (
                f"CREATE DATABASE {db}",
                f"CREATE DATABASE {other}",
                f"CREATE TABLE {db}.customers (id INT AUTO_INCREMENT PRIMARY KEY, name VARCHAR(100) NOT NULL, email VARCHAR(200)) ENGINE=InnoDB",
                f"""CREATE TABLE {db}.orders (id BIGINT AUTO_INCREMENT PRIMARY KEY, customer_id INT NOT NULL, total DECIMAL(12,2),
                    FOREIGN KEY (customer_id) REFERENCES {db}.customers (id)) ENGINE=InnoDB""",
                f"ALTER TABLE {db}.orders COMMENT = 'Orders placed', MODIFY total DECIMAL(12,2) COMMENT 'Total in EUR'",
                f"CREATE TABLE {db}.secrets (id INT PRIMARY KEY, api_key TEXT) ENGINE=InnoDB",
                f"CREATE TABLE {other}.notes (id INT PRIMARY KEY, body TEXT) ENGINE=InnoDB",
                f"CREATE VIEW {db}.big_orders AS SELECT * FROM {db}.orders WHERE total > 100",
                f"INSERT INTO {db}.customers (name) VALUES " + ", ".join(f"('c{i}')" for i in range(40)),
                f"INSERT INTO {db}.orders (customer_id, total) VALUES " + ", ".join(f"({1 + i % 40}, {i})" for i in range(300)),
                f"ANALYZE TABLE {db}.customers, {db}.orders",
                f"CREATE USER '{user}'@'%'",
                f"GRANT SELECT ON {db}.customers TO '{user}'@'%'",
                f"GRANT SELECT ON {db}.orders TO '{user}'@'%'",
                f"GRANT SELECT ON {db}.big_orders TO '{user}'@'%'",
                f"GRANT SELECT ON {other}.notes TO '{user}'@'%'",
            ):
                await cur.execute(statement)
                if cur.description:
                    await cur.fetchall()
        host = f"{params['host']}:{params['port']}"
        yield Source("my", f"mysql://{user}@{host}/{db}", f"mysql://{params['user']}:{params['password']}@{host}/{db}")
    finally:
        async with conn.cursor() as cur:
            await cur.execute(f"DROP DATABASE IF EXISTS {db}")
            await cur.execute(f"DROP DATABASE IF EXISTS {other}")
            await cur.execute(f"DROP USER IF EXISTS '{user}'@'%'")
        conn.close()


@pytest.fixture(scope="module")
def lite(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Source]:
    path = tmp_path_factory.mktemp("schema") / "shop.db"
    conn = sqlite3.connect(path)
    conn.executescript("""
        CREATE TABLE customers (id INTEGER PRIMARY KEY, name TEXT NOT NULL, email TEXT);
        CREATE TABLE orders ( -- Orders placed
            id INTEGER PRIMARY KEY, customer_id INTEGER NOT NULL REFERENCES customers,
            total REAL -- Total in EUR
        );
        CREATE VIEW big_orders AS SELECT * FROM orders WHERE total > 100;
    """)
    conn.executemany("INSERT INTO customers (name) VALUES (?)", [(f"c{i}",) for i in range(40)])
    conn.executemany("INSERT INTO orders (customer_id, total) VALUES (?, ?)", [(1 + i % 40, i) for i in range(300)])
    conn.commit()
    conn.close()
    yield Source("lite", f"sqlite:///{path}", f"sqlite:///{path}")


def _sources_env(*sources: Source, **extra: str) -> dict[str, str]:
    default, *others = sources
    env = {"QUERY_DATABASE_URL": default.url, "QUERY_SOURCES": ",".join(f"{s.name}={s.url}" for s in others)}
    env.update(extra)
    return env


@pytest.fixture(scope="module")
def shop(infra: Infra, pg: Source, my: Source, lite: Source) -> Iterator[System]:
    """Gateway, session and query service; the default source is SQLite, `pg` and `my` the others. Cache: 300 s."""
    with running_system(infra, "sch", **_sources_env(lite, pg, my, QUERY_SCHEMA_CACHE_S="300")) as system:
        yield system


async def describe(nc: NATS, system: System | InProcess, source: str | None = None, tables: list[str] | None = None) -> dict[str, Any]:
    return msgspec.to_builtins(await QueryClient(nc, Subjects(system.prefix)).schema(source, tables, timeout=20.0))


def by_name(reply: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {t["name"]: t for t in reply["tables"]}


# --- overview ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("source", "dialect", "expected"),
    [
        ("pg", "postgres", {"big_orders", "customers", "orders", "partial", "extra.notes"}),
        ("my", "mysql", {"big_orders", "customers", "orders", f"sch_other_{TAG}.notes"}),
        (None, "sqlite", {"big_orders", "customers", "orders"}),
    ],
)
async def test_overview_lists_every_readable_table_with_column_names_and_types(shop: System, nc: NATS, source: str | None, dialect: str, expected: set[str]) -> None:
    reply = await describe(nc, shop, source)

    assert reply["source"] == (source or "default") and reply["dialect"] == dialect
    assert set(by_name(reply)) == expected
    assert reply["truncated"] is False and reply["note"] is None
    customers = by_name(reply)["customers"]
    assert [c["name"] for c in customers["columns"]] == ["id", "name", "email"]
    assert all(set(c) == {"name", "type"} and c["type"] for c in customers["columns"])
    assert set(customers) == {"name", "columns"}  # no keys, estimates or nullability in the overview


async def test_overview_types_are_the_databases_own(shop: System, nc: NATS) -> None:
    pg_types = {c["name"]: c["type"] for c in by_name(await describe(nc, shop, "pg"))["orders"]["columns"]}
    my_types = {c["name"]: c["type"] for c in by_name(await describe(nc, shop, "my"))["orders"]["columns"]}
    lite_types = {c["name"]: c["type"] for c in by_name(await describe(nc, shop))["orders"]["columns"]}

    assert pg_types == {"id": "bigint", "customer_id": "integer", "total": "numeric(12,2)", "placed": "timestamp with time zone"}
    assert my_types["id"] == "bigint(20)" and my_types["total"] == "decimal(12,2)"
    assert lite_types == {"id": "INTEGER", "customer_id": "INTEGER", "total": "REAL"}


# --- details ----------------------------------------------------------------------------


@pytest.mark.parametrize("source", ["pg", "my", None])
async def test_details_have_nullability_keys_foreign_keys_and_a_row_estimate(shop: System, nc: NATS, source: str | None) -> None:
    reply = await describe(nc, shop, source, ["orders", "customers"])

    tables = by_name(reply)
    assert list(tables) == ["orders", "customers"]  # in the order asked
    orders = tables["orders"]
    columns = {c["name"]: c for c in orders["columns"]}
    assert columns["id"]["primary_key"] is True and columns["id"]["nullable"] is False
    assert columns["customer_id"]["primary_key"] is False and columns["customer_id"]["nullable"] is False
    assert columns["total"]["nullable"] is True
    assert orders["foreign_keys"] == [{"columns": ["customer_id"], "references": {"table": "customers", "columns": ["id"]}}]
    assert tables["customers"]["foreign_keys"] == []
    # PostgreSQL's reltuples and MariaDB's TABLE_ROWS after ANALYZE; SQLite counts a small file.
    assert orders["row_estimate"] == 300 and tables["customers"]["row_estimate"] == 40
    assert reply["truncated"] is False and reply["note"] is None


@pytest.mark.parametrize("source", ["pg", "my", None])
async def test_details_carry_the_catalogs_comments(shop: System, nc: NATS, source: str | None) -> None:
    """PostgreSQL COMMENT ON, MariaDB COMMENT, and SQLite's `-- comments` in the CREATE statement (search_schema indexes them)."""
    tables = by_name(await describe(nc, shop, source, ["orders", "customers"]))
    assert tables["orders"]["comment"] == "Orders placed"
    comments = {c["name"]: c["comment"] for c in tables["orders"]["columns"] if "comment" in c}
    assert comments == {"total": "Total in EUR"}
    assert "comment" not in tables["customers"] and all("comment" not in c for c in tables["customers"]["columns"])


async def test_details_name_tables_outside_the_default_schema_qualified(shop: System, nc: NATS) -> None:
    reply = await describe(nc, shop, "pg", ["extra.notes", "BIG_ORDERS"])

    notes, view = reply["tables"]
    assert notes["name"] == "extra.notes"
    assert notes["foreign_keys"] == [{"columns": ["customer_id"], "references": {"table": "customers", "columns": ["id"]}}]
    assert view["name"] == "big_orders" and view["row_estimate"] is None  # a view has no estimate
    assert [c["name"] for c in view["columns"]] == ["id", "customer_id", "total", "placed"]


async def test_unknown_tables_are_named_in_the_note(shop: System, nc: NATS) -> None:
    for source in ("pg", "my", None):
        reply = await describe(nc, shop, source, ["customers", "no_such_table", "orders; DROP TABLE customers"])

        assert [t["name"] for t in reply["tables"]] == ["customers"]
        assert reply["truncated"] is False
        assert "no_such_table" in reply["note"] and "orders; DROP TABLE customers" in reply["note"]


# --- privileges: checked in the database itself -------------------------------------------


async def test_a_table_the_role_cannot_read_is_not_listed(shop: System, nc: NATS, pg: Source, my: Source) -> None:
    # The roles really cannot read these (checked in the databases, as those roles).
    conn = await asyncpg.connect(pg.url)
    try:
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await conn.fetch("SELECT * FROM secrets")
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await conn.fetch("SELECT hidden FROM partial")
    finally:
        await conn.close()
    my_conn = await asyncmy.connect(**_my_params(my.url), db=urlsplit(my.url).path.lstrip("/"))
    try:
        async with my_conn.cursor() as cur:
            with pytest.raises(asyncmy.errors.MySQLError) as denied:
                await cur.execute("SELECT * FROM secrets")
            assert denied.value.args[0] == 1142  # ER_TABLEACCESS_DENIED_ERROR
    finally:
        my_conn.close()

    pg_overview, my_overview = await describe(nc, shop, "pg"), await describe(nc, shop, "my")
    pg_details = await describe(nc, shop, "pg", ["secrets", "partial"])
    my_details = await describe(nc, shop, "my", ["secrets"])

    assert "secrets" not in by_name(pg_overview) and "secrets" not in by_name(my_overview)
    assert [c["name"] for c in by_name(pg_overview)["partial"]["columns"]] == ["visible"]  # a column grant shows that column only
    assert [t["name"] for t in pg_details["tables"]] == ["partial"] and "'secrets'" in pg_details["note"]
    assert my_details["tables"] == [] and "'secrets'" in my_details["note"]


# --- bounds and cache ---------------------------------------------------------------------


async def test_a_big_schema_is_cut_with_a_note(start_inprocess: InProcessFactory, nc: NATS, pg: Source, lite: Source) -> None:
    system = await start_inprocess(("query",), **_sources_env(pg, lite, QUERY_SCHEMA_MAX_TABLES="2", QUERY_SCHEMA_MAX_COLUMNS="6"))

    overview = await describe(nc, system)
    details = await describe(nc, system, None, ["orders", "customers", "big_orders", "extra.notes"])

    # Default schema first, then by name: big_orders (4 columns), customers (3, cut to 2).
    assert [(t["name"], len(t["columns"])) for t in overview["tables"]] == [("big_orders", 4), ("customers", 2)]
    assert overview["truncated"] is True
    assert "showing 2 of 5 tables" in overview["note"] and "1 column(s) of customers left out" in overview["note"]
    assert [t["name"] for t in details["tables"]] == ["orders", "customers"]
    assert [len(t["columns"]) for t in details["tables"]] == [4, 2]
    assert details["truncated"] is True and "showing 2 of 4 tables" in details["note"]


async def test_a_description_is_cached_per_source_for_the_configured_time(shop: System, start_inprocess: InProcessFactory, nc: NATS, pg: Source) -> None:
    table = f"later_{uuid.uuid4().hex[:6]}"
    before = await describe(nc, shop, "pg")
    conn = await asyncpg.connect(pg.admin)
    try:
        await conn.execute(f"CREATE TABLE {table} (id int)")
        await conn.execute(f"GRANT SELECT ON {table} TO {urlsplit(pg.url).username}")

        # Within QUERY_SCHEMA_CACHE_S (300 s here) the overview is the cached one...
        assert await describe(nc, shop, "pg") == before
        assert table not in by_name(before)
        # ...while a request not seen before reads the catalog.
        assert [t["name"] for t in (await describe(nc, shop, "pg", [table]))["tables"]] == [table]

        # With a short cache the new table shows up once the entry expires (polled with a deadline).
        short = await start_inprocess(("query",), **_sources_env(pg, QUERY_SCHEMA_CACHE_S="0.2"))
        await describe(nc, short)
        await conn.execute(f"CREATE TABLE {table}_2 (id int)")
        await conn.execute(f"GRANT SELECT ON {table}_2 TO {urlsplit(pg.url).username}")
        deadline = asyncio.get_running_loop().time() + 15
        while f"{table}_2" not in by_name(await describe(nc, short)):
            assert asyncio.get_running_loop().time() < deadline, "the cached description never expired"
    finally:
        await conn.execute(f"DROP TABLE IF EXISTS {table}, {table}_2")
        await conn.close()


async def test_a_source_that_cannot_be_reached_gets_an_error_reply(make_system: SystemFactory, nc: NATS, lite: Source) -> None:
    down = Source("down", f"postgresql://nobody:s3cret-pw@127.0.0.1:{free_port()}/nothing", "")
    gone = Source("gone", f"sqlite:///{uuid.uuid4().hex}/missing.db", "")
    system = make_system(start=("query",), **_sources_env(lite, down, gone))

    for name in ("down", "gone"):
        with pytest.raises(ServiceError) as raised:
            await describe(nc, system, name)
        assert raised.value.code == "unavailable", raised.value
        assert name in raised.value.message or "does not exist" in raised.value.message
        assert "s3cret-pw" not in raised.value.message
    assert by_name(await describe(nc, system))  # the service still serves the others
    query = system.services["query"]
    await asyncio.to_thread(wait_until, lambda: len(query.events("schema_failed")) >= 2, 10, "two schema_failed lines")  # lines are held up to 50 ms
    failed = query.events("schema_failed")
    assert [(e["source"], e["code"]) for e in failed] == [("down", "unavailable"), ("gone", "unavailable")]
    assert "s3cret-pw" not in "\n".join(system.services["query"].lines)  # the password is in no log line


# --- ping, bad requests, HTTP -------------------------------------------------------------


async def test_ping_names_each_sources_dialect(shop: System, nc: NATS) -> None:
    reply = await request(nc, Subjects(shop.prefix).query_ping, {}, timeout=5.0)

    assert reply["dialects"] == {"default": "sqlite", "my": "mysql", "pg": "postgres"}


BAD_REQUESTS: list[tuple[dict[str, Any], str, str]] = [
    ({"tables": []}, "bad_request", "$.tables"),
    ({"tables": [""]}, "bad_request", "$.tables[0]"),
    ({"tables": ["t"] * 51}, "bad_request", "$.tables"),
    ({"tables": "customers"}, "bad_request", "$.tables"),
    ({"tables": [7]}, "bad_request", "$.tables[0]"),
    ({"source": 3}, "bad_request", "$.source"),
    ({"source": "nope"}, "unknown_source", "unknown source 'nope'"),
]


async def test_bad_requests_get_a_clear_error(shop: System, nc: NATS) -> None:
    for payload, code, text in BAD_REQUESTS:
        with pytest.raises(ServiceError) as raised:
            await request(nc, Subjects(shop.prefix).query_schema, payload, timeout=5.0)
        assert (raised.value.code, text in raised.value.message) == (code, True), (payload, raised.value)


async def test_http_schema_needs_a_session_and_answers_the_reply(shop: System, nc: NATS) -> None:
    async with aiohttp.ClientSession(shop.url) as anonymous:
        async with anonymous.get("/api/schema") as response:
            assert response.status == 401
            assert (await response.json())["error"]["code"] == "unauthorized"

    async with browser(shop.url) as client:
        await login(client)
        async with client.get("/api/schema", params={"source": "pg"}) as response:
            assert response.status == 200
            assert await response.json() == await describe(nc, shop, "pg")
        async with client.get("/api/schema", params={"source": "my", "tables": "orders, nope"}) as response:
            body = await response.json()
            assert response.status == 200
            assert [t["name"] for t in body["tables"]] == ["orders"] and "'nope'" in body["note"]
            assert body["tables"][0]["foreign_keys"][0]["references"]["table"] == "customers"


@pytest.mark.parametrize(
    ("query", "status", "code"),
    [
        ("tables=a,,b", 400, "bad_request"),
        ("tables=" + ",".join(["t"] * 51), 400, "bad_request"),
        ("source=" + "s" * 65, 400, "bad_request"),
        ("source=a%20b", 400, "bad_request"),
        ("table=orders", 400, "bad_request"),
        ("source=pg&source=my", 400, "bad_request"),
        ("source=nope", 404, "unknown_source"),
    ],
)
async def test_http_bad_parameters_get_our_json_errors(shop: System, query: str, status: int, code: str) -> None:
    async with browser(shop.url) as client:
        await login(client)
        async with client.get(f"/api/schema?{query}") as response:
            assert response.status == status
            body = await response.json()
            assert body["error"]["code"] == code and body["error"]["message"]
