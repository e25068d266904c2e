"""search_schema: recall on the bundled 336-table schema, the result budget, the memory bound at 5,000 tables, and a model turn that uses it.

The index is built by the query service's own code (services/query/search.py) over the
real SQLite engine; the turn runs through the real session and query services with the
fake model (tests/fake_llm.py) scripting the calls.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import sqlite3
import tracemalloc
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import nats
import orjson
import pytest

from bench.search import synthetic_tables
from evals import enterprise
from evals.harness import load_questions, schema_recall
from services.gateway.chat import prompt
from services.gateway.chat.search import render
from services.query import search as search_module
from services.query.config import QueryConfig, SchemaConfig, SearchConfig
from services.query.engines import EngineSettings, Sources
from services.query.search import INDEX_MEMORY_BOUND, SchemaIndex, SchemaSearch
from services.query.service import create_service
from shared.bus import request
from shared.contracts import SchemaSearchReply, SchemaSearchRequest, Subjects
from tests import fake_llm
from tests.chat_support import API_KEY, gateway, post_chat, signed_in, started_fake, user_message
from tests.conftest import Infra, MysqlReader, PostgresReader, System, running_system
from tests.harness import eventually
from tests.readers import mariadb_database, postgres_schema

QUESTIONS = Path(__file__).resolve().parent.parent / "evals" / "questions"
SAMPLE_S = 300.0
"""Time to sample every value of the bundled schema even on a loaded CI machine (the default, 20 s, could cut it short there)."""


@pytest.fixture(scope="module")
def enterprise_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return enterprise.ensure(tmp_path_factory.mktemp("search") / "enterprise.db")


@pytest.fixture(scope="module")
async def search(enterprise_db: Path) -> AsyncIterator[SchemaSearch]:
    sources = Sources({"enterprise": f"sqlite:///{enterprise_db}"}, EngineSettings())
    searches = SchemaSearch(sources, SearchConfig(sample_s=SAMPLE_S), SchemaConfig())
    await searches.rebuild("enterprise")  # with every value sampled; index() serves it from now on
    yield searches
    await searches.close()
    await sources.close()


async def test_recall_at_5_on_the_bundled_schema_is_at_least_0_9(search: SchemaSearch) -> None:
    index = await search.index("enterprise")
    questions = load_questions(QUESTIONS / "enterprise.jsonl")
    assert len(index.names) == len(enterprise.table_names()) >= 300
    recall = schema_recall(index, questions, 5)
    print(f"\nschema-search recall@5 over {len(questions)} questions on {len(index.names)} tables: {recall:.3f}")
    assert recall >= 0.9


async def test_every_result_is_within_the_budget(search: SchemaSearch) -> None:
    index = await search.index("enterprise")
    for max_chars in (8000, 2000, 500):
        for q in load_questions(QUESTIONS / "enterprise.jsonl"):
            result = render(index.search(q.question, 10), max_chars)
            assert len(orjson.dumps(result)) <= max_chars, (q.id, max_chars)
            assert result["tables"], q.id


async def test_a_found_table_has_comments_keys_values_and_join_paths(search: SchemaSearch) -> None:
    index = await search.index("enterprise")
    reply = index.search("overdue invoices per customer account", 5)
    by_name = {t.name: t for t in reply.tables}
    invoices = by_name["invoices"]
    assert invoices.comment == "Invoices sent to customer accounts"
    status = next(c for c in invoices.columns if c.name == "status")
    assert status.comment == "Invoice status"
    assert status.values == ["draft", "overdue", "paid", "sent", "void"]  # sampled through the guard, sorted
    assert next(c for c in invoices.columns if c.name == "id").primary_key
    assert next(c for c in invoices.columns if c.name == "invoice_number").values == []  # 80 distinct numbers: not a category
    assert "customer_accounts" in by_name
    assert any(set(j.tables) == {"invoices", "customer_accounts"} and j.on == ["invoices.account_id = customer_accounts.id"] for j in reply.joins)
    text = render(reply, 8000)["schema"]
    assert "status TEXT -- Invoice status [values: 'draft', 'overdue', 'paid', 'sent', 'void']" in text
    assert "account_id INTEGER -> customer_accounts.id -- Customer billed" in text


async def test_words_that_match_nothing_say_so(search: SchemaSearch) -> None:
    index = await search.index("enterprise")
    reply = index.search("zyzzyva quux", 5)
    assert reply.tables == [] and "no table matches" in (reply.note or "")


def test_an_index_of_5000_tables_stays_within_its_stated_memory() -> None:
    """12 columns a table, 4 of them categories with 5 values each; the values (kept between rebuilds) are counted too."""
    tables = synthetic_tables(5000)
    tracemalloc.start()
    try:
        values = {(t.name, c.name): ["open", "closed", "pending", "on hold", f"archived {i % 7}"] for i, t in enumerate(tables) for c in t.columns[1:5]}
        index = SchemaIndex.build("big", "postgres", tables, values)
        _, python_peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    try:
        used = python_peak + index.database_bytes()
        print(f"\nindex of 5,000 tables: {index.database_bytes() / 2**20:.1f} MiB of SQLite pages + {python_peak / 2**20:.1f} MiB Python peak (bound {INDEX_MEMORY_BOUND / 2**20:.0f} MiB)")
        assert len(index.names) == 5000
        assert used <= INDEX_MEMORY_BOUND
        assert index.search("billing entity 4321", 3).tables[0].name == "billing_entity_4321"
    finally:
        index.close()


# --- a model turn that searches, then queries what it found ----------------------------


@pytest.fixture(scope="module")
def started(infra: Infra, enterprise_db: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[System]:
    sample = tmp_path_factory.mktemp("search-sample") / "sample.db"
    with running_system(infra, "ss", start=("session", "query"), QUERY_SOURCES=f"enterprise=sqlite:///{enterprise_db}", QUERY_SAMPLE_PATH=str(sample), QUERY_SCHEMA_SAMPLE_S=str(SAMPLE_S)) as system:
        yield system


@pytest.fixture(scope="module")
async def services(started: System) -> System:
    """The system once the enterprise index has its values (the first index, served at once, has none)."""
    nc = await nats.connect(started.nats_url)

    async def sampled() -> bool:
        ask = SchemaSearchRequest(query="invoice status", source="enterprise", limit=1)
        reply = await request(nc, Subjects(started.prefix).query_schema_search, ask, timeout=30, reply=SchemaSearchReply)
        return any(c.values for t in reply.tables for c in t.columns)

    try:
        await eventually(sampled, "the enterprise index's values", timeout=SAMPLE_S)
    finally:
        await nc.close()
    return started


async def test_a_turn_searches_the_schema_then_queries_the_tables_found(services: System) -> None:
    sql = "SELECT count(*) AS overdue FROM invoices WHERE status = 'overdue'"
    fake = await started_fake(
        fake_llm.tool_calls(("search_schema", {"query": "How many invoices are overdue?", "source": "enterprise"})),
        fake_llm.tool_calls(("execute_query", {"sql": sql, "source": "enterprise"})),
        fake_llm.text("19 invoices are overdue."),
    )
    env = {"NATS_URL": services.nats_url, "NATS_SUBJECT_PREFIX": services.prefix, "LLM_BASE_URL": fake.base_url, "LLM_MODEL": fake_llm.MODEL, "LLM_API_KEY": API_KEY}
    try:
        async with gateway(env) as url, signed_in(url) as client:
            turn = await post_chat(client, [user_message("How many invoices are overdue?")], source="enterprise")
    finally:
        await fake.stop()
    assert turn.status == 200, turn.body
    # The system prompt could not hold 336 tables: it told the model to search.
    system = fake.requests[0]["messages"][0]["content"]
    assert "too large to list here" in system and prompt.SEARCH_SCHEMA in system
    assert prompt.SEARCH_SCHEMA in [t["function"]["name"] for t in fake.requests[0]["tools"]]
    found = json.loads(fake.requests[1]["messages"][-1]["content"])
    assert found["tables"][0] == "invoices" and "[values: 'draft', 'overdue', 'paid', 'sent', 'void']" in found["schema"]
    assert len(fake.requests[1]["messages"][-1]["content"]) <= 8000
    outputs = [p for p in turn.of("tool-output-available") if not p.get("preliminary")]
    assert outputs[0]["output"] == found  # the person sees what the model saw
    assert outputs[1]["output"]["row_count"] == 1 and turn.rows() == [[19]]
    assert turn.text() == "19 invoices are overdue."


async def test_the_search_settings_come_from_the_config_the_service_is_built_with(infra: Infra, enterprise_db: Path) -> None:
    """The factory's config, not the process environment, sets search_schema's limits (as tests and embedders build it)."""
    assert "QUERY_SCHEMA_INDEX_MAX_TABLES" not in os.environ
    prefix = f"sc{uuid.uuid4().hex[:10]}"
    env = {"NATS_URL": infra.nats_url, "NATS_SUBJECT_PREFIX": prefix, "OPS_PORT": "0", "QUERY_DATABASE_URL": f"sqlite:///{enterprise_db}"}
    assert QueryConfig.from_env(env | {"QUERY_SCHEMA_INDEX_MAX_TABLES": "7"}).search.max_tables == 7
    config = dataclasses.replace(QueryConfig.from_env(env), search=SearchConfig(max_tables=3, sample_values=0))
    async with create_service(config):
        nc = await nats.connect(infra.nats_url)
        try:
            ask = SchemaSearchRequest(query="invoices", limit=5)
            reply = await request(nc, Subjects(prefix).query_schema_search, ask, timeout=30, reply=SchemaSearchReply)
        finally:
            await nc.close()
    assert reply.indexed_tables == 3
    assert f"searched 3 of {len(enterprise.table_names())} tables (QUERY_SCHEMA_INDEX_MAX_TABLES)" in (reply.note or "")


# --- PostgreSQL and MariaDB sources ----------------------------------------------------

PG_SETUP = """
    CREATE TABLE {s}.depot_sites (id int PRIMARY KEY, site_name text, climate text);
    COMMENT ON TABLE {s}.depot_sites IS 'Depots where pallets are stored';
    CREATE TABLE {s}.pallet_moves (id int PRIMARY KEY, site_id int REFERENCES {s}.depot_sites (id), move_kind text, tracking_code text);
    COMMENT ON COLUMN {s}.pallet_moves.move_kind IS 'inbound or outbound';
    INSERT INTO {s}.depot_sites SELECT g, 'site ' || g, CASE WHEN g % 2 = 0 THEN 'frozen' ELSE 'chilled' END FROM generate_series(1, 10) g;
    INSERT INTO {s}.pallet_moves SELECT g, 1 + g % 10, CASE WHEN g % 3 = 0 THEN 'outbound' ELSE 'inbound' END, 'T-' || g FROM generate_series(1, 50) g;
"""
MY_SETUP = (
    "CREATE TABLE depot_sites (id INT PRIMARY KEY, site_name VARCHAR(50), climate VARCHAR(20)) COMMENT = 'Depots where pallets are stored'",
    "CREATE TABLE pallet_moves (id INT PRIMARY KEY, site_id INT, move_kind VARCHAR(20) COMMENT 'inbound or outbound', tracking_code VARCHAR(20), FOREIGN KEY (site_id) REFERENCES depot_sites (id))",
    "INSERT INTO depot_sites VALUES " + ", ".join(f"({i}, 'site {i}', '{'frozen' if i % 2 == 0 else 'chilled'}')" for i in range(1, 11)),
    "INSERT INTO pallet_moves VALUES " + ", ".join(f"({i}, {1 + i % 10}, '{'outbound' if i % 3 == 0 else 'inbound'}', 'T-{i}')" for i in range(1, 51)),
)


@pytest.mark.parametrize("engine", ["postgres", "mariadb"])
async def test_postgres_and_mariadb_tables_are_found_with_comments_values_and_joins(engine: str, pg_reader: PostgresReader, my_reader: MysqlReader) -> None:
    async with contextlib.AsyncExitStack() as stack:
        if engine == "postgres":
            schema = await stack.enter_async_context(postgres_schema(pg_reader, PG_SETUP))
            url, prefix = pg_reader.url, f"{schema}."
        else:
            url, prefix = await stack.enter_async_context(mariadb_database(my_reader, MY_SETUP)), ""
        sources = Sources({"db": url}, EngineSettings(pool_size=2))
        searches = SchemaSearch(sources, SearchConfig(sample_s=SAMPLE_S), SchemaConfig())
        stack.push_async_callback(sources.close)
        stack.push_async_callback(searches.close)
        reply = (await searches.rebuild("db")).search("Which frozen depots had outbound pallet moves?", 5)
    found = {t.name: t for t in reply.tables}
    sites, moves = found[f"{prefix}depot_sites"], found[f"{prefix}pallet_moves"]
    assert sites.comment == "Depots where pallets are stored"
    assert {c.name: c.values for c in sites.columns}["climate"] == ["chilled", "frozen"]  # sampled on the source's own role, through the guard
    columns = {c.name: c for c in moves.columns}
    assert columns["move_kind"].comment == "inbound or outbound" and columns["move_kind"].values == ["inbound", "outbound"]
    assert columns["tracking_code"].values == []  # 50 distinct codes: not a category
    assert any(set(j.tables) == {sites.name, moves.name} and j.on == [f"{moves.name}.site_id = {sites.name}.id"] for j in reply.joins)


async def test_a_bad_search_call_gives_the_model_an_error_to_correct(services: System) -> None:
    fake = await started_fake(
        fake_llm.tool_calls(("search_schema", {"source": "enterprise"})),
        fake_llm.tool_calls(("search_schema", {"query": "invoices", "source": "nope"})),
        fake_llm.text("I cannot search that."),
    )
    env = {"NATS_URL": services.nats_url, "NATS_SUBJECT_PREFIX": services.prefix, "LLM_BASE_URL": fake.base_url, "LLM_MODEL": fake_llm.MODEL, "LLM_API_KEY": API_KEY}
    try:
        async with gateway(env) as url, signed_in(url) as client:
            turn = await post_chat(client, [user_message("Find invoices")])
    finally:
        await fake.stop()
    assert turn.status == 200
    first = json.loads(fake.requests[1]["messages"][-1]["content"])
    assert first == {"error": "'query' must be a non-empty string: the question, or keywords"}
    assert turn.of("tool-input-error")[0]["toolName"] == "search_schema"
    second = json.loads(fake.requests[2]["messages"][-1]["content"])
    assert second["error"].startswith("unknown source 'nope'")
    assert turn.of("tool-output-error")[0]["errorText"] == second["error"]
    assert turn.text() == "I cannot search that."


async def test_a_rebuild_samples_only_new_or_changed_tables_until_the_values_are_old(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "depot.db"
    conn = sqlite3.connect(path)
    conn.executescript("CREATE TABLE crates (id INTEGER PRIMARY KEY, colour TEXT); INSERT INTO crates (colour) VALUES ('red'), ('blue');")
    conn.close()
    sources = Sources({"depot": f"sqlite:///{path}"}, EngineSettings())
    searches = SchemaSearch(sources, SearchConfig(), SchemaConfig(cache_s=0))
    try:
        at_once = await searches.index("depot")  # a first index comes without values, before the sampling
        assert at_once.search("crates colour", 1).tables[0].columns[1].values == []
        first = await searches.rebuild("depot")  # the same build, to its end
        assert first is not at_once
        assert first.search("crates colour", 1).tables[0].columns[1].values == ["blue", "red"]
        conn = sqlite3.connect(path)
        conn.executescript("INSERT INTO crates (colour) VALUES ('green'); CREATE TABLE lids (id INTEGER PRIMARY KEY, size TEXT); INSERT INTO lids (size) VALUES ('S'), ('L');")
        conn.close()
        second = await searches.rebuild("depot")
        assert second.search("crates colour", 1).tables[0].columns[1].values == ["blue", "red"]  # kept: the table did not change
        assert second.search("lids size", 1).tables[0].columns[1].values == ["L", "S"]  # a new table is sampled
        monkeypatch.setattr(search_module, "VALUES_REFRESH_S", 0.0)
        third = await searches.rebuild("depot")
        assert third.search("crates colour", 1).tables[0].columns[1].values == ["blue", "green", "red"]  # old values are read again
        assert await searches.index("depot") is third
    finally:
        await searches.close()
        await sources.close()
