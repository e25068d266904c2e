"""search_schema: recall on the bundled 336-table schema, the result budget, the memory bound at 5,000 tables, and a model turn that uses it.

The index is built by the query service's own code (services/query/search.py) over the
real SQLite engine; the turn runs through the real session and query services with the
fake model (tests/fake_llm.py) scripting the calls.
"""

from __future__ import annotations

import json
import tracemalloc
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import orjson
import pytest

from bench.search import synthetic_tables
from evals import enterprise
from evals.harness import load_questions, schema_recall
from services.gateway.chat import prompt
from services.gateway.chat.search import render
from services.query.engines import EngineSettings, Sources
from services.query.search import INDEX_MEMORY_BOUND, SchemaIndex, SchemaSearch, SearchConfig
from tests import fake_llm
from tests.chat_support import API_KEY, gateway, post_chat, signed_in, started_fake, user_message
from tests.conftest import Infra, System, running_system

QUESTIONS = Path(__file__).resolve().parent.parent / "evals" / "questions"


@pytest.fixture(scope="module")
def enterprise_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return enterprise.ensure(tmp_path_factory.mktemp("search") / "enterprise.db")


@pytest.fixture(scope="module")
async def search(enterprise_db: Path) -> AsyncIterator[SchemaSearch]:
    sources = Sources({"enterprise": f"sqlite:///{enterprise_db}"}, EngineSettings())
    searches = SchemaSearch(sources, SearchConfig())
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
    tables = synthetic_tables(5000)
    values = {(t.name, t.columns[1].name): ["open", "closed", "pending"] for t in tables}
    tracemalloc.start()
    try:
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
def services(infra: Infra, enterprise_db: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[System]:
    sample = tmp_path_factory.mktemp("search-sample") / "sample.db"
    with running_system(infra, "ss", start=("session", "query"), QUERY_SOURCES=f"enterprise=sqlite:///{enterprise_db}", QUERY_SAMPLE_PATH=str(sample)) as system:
        yield system


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
