"""The evaluation harness (`make eval`, evals/): its scoring proved against the fake model, with right, wrong and failing answers scripted.

The harness runs as `make eval --gateway URL` would, against a real gateway, session and
query service; the fake model (tests/fake_llm.py) answers each question as scripted, so the
report must show exactly the accuracy, tags, steps and tokens the script implies.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from evals import enterprise
from evals.__main__ import QUESTION_SETS, main_async, parse_overrides
from evals.harness import gold_tables, load_questions, orders, same_result
from services.query.guard import check_read_only
from services.query.sample import ensure_sample
from tests import fake_llm
from tests.chat_support import API_KEY, gateway, started_fake
from tests.conftest import Infra, System, running_system

# --- scoring without a model -----------------------------------------------------------


def test_results_compare_as_multisets_unless_the_gold_sql_orders() -> None:
    assert same_result([[1, "a"], [2, "b"]], [[2, "b"], [1, "a"]], ordered=False)
    assert not same_result([[1, "a"], [2, "b"]], [[2, "b"], [1, "a"]], ordered=True)
    assert not same_result([[1], [1], [2]], [[1], [2], [2]], ordered=False)  # a multiset, not a set
    assert not same_result([[1, "a"]], [[1, "a", None]], ordered=False)


def test_floats_match_within_the_tolerance_and_numbers_match_across_types() -> None:
    assert same_result([[0.1 + 0.2]], [[0.3]], ordered=False)
    assert same_result([[19]], [[19.0]], ordered=False)
    assert same_result([["1234.50"]], [[1234.5]], ordered=False)  # NUMERIC arrives as a string
    assert not same_result([[0.3]], [[0.31]], ordered=False)
    assert not same_result([["0012"]], [["12a"]], ordered=False)


def test_only_a_top_level_order_by_orders_the_result() -> None:
    assert orders("SELECT a FROM t ORDER BY a")
    assert not orders("SELECT a FROM (SELECT a FROM t ORDER BY a LIMIT 3)")
    assert gold_tables("WITH x AS (SELECT * FROM orders) SELECT * FROM x JOIN customers c ON c.id = x.customer_id") == {"orders", "customers"}


def test_a_malformed_question_line_is_refused_with_its_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "q.jsonl"
    path.write_text('{"question": "ok?", "gold_sql": "SELECT 1"}\n{"question": "no gold"}\n')
    with pytest.raises(ValueError, match=r"q\.jsonl:2: needs string fields"):
        load_questions(path)
    with pytest.raises(ValueError, match="KEY=VALUE"):
        parse_overrides("LLM_MODEL")
    assert parse_overrides("LLM_MODEL=a,LLM_EXAMPLES=0") == {"LLM_MODEL": "a", "LLM_EXAMPLES": "0"}


def test_the_bundled_sets_hold_60_questions_whose_gold_sql_is_read_only_and_runs(tmp_path: Path) -> None:
    questions = load_questions(*QUESTION_SETS.values())
    assert len(questions) >= 60
    assert len({q.id for q in questions}) == len(questions)
    assert {q.source for q in questions} == {"default", "enterprise"}
    assert len(enterprise.table_names()) >= 300
    ensure_sample(tmp_path / "sample.db")
    databases = {"default": tmp_path / "sample.db", "enterprise": enterprise.ensure(tmp_path / "enterprise.db")}
    for q in questions:
        check_read_only(q.gold_sql, "sqlite")
        conn = sqlite3.connect(f"file:{databases[q.source or 'default']}?mode=ro", uri=True)
        try:
            conn.execute(q.gold_sql).fetchall()
        finally:
            conn.close()
        assert q.tags, q.id


# --- the harness against the fake model ------------------------------------------------

QUESTIONS = [
    {"id": "q1", "question": "How many customers are there?", "gold_sql": "SELECT count(*) FROM customers", "tags": ["count"]},
    {"id": "q2", "question": "Products per category", "gold_sql": "SELECT category, count(*) FROM products GROUP BY category", "tags": ["group"]},
    {"id": "q3", "question": "The 5 most expensive products", "gold_sql": "SELECT name FROM products ORDER BY price DESC LIMIT 5", "tags": ["order"]},
    {"id": "q4", "question": "How many orders were cancelled?", "gold_sql": "SELECT count(*) FROM orders WHERE status = 'cancelled'", "tags": ["count"]},
    {"id": "q5", "question": "How many invoices are overdue?", "gold_sql": "SELECT count(*) FROM invoices WHERE status = 'overdue'", "source": "enterprise", "tags": ["count", "search"]},
    {"id": "q6", "question": "Average product price", "gold_sql": "SELECT avg(price) FROM products", "tags": ["float"]},
    {"id": "q7", "question": "Which country has the most customers?", "gold_sql": "SELECT country FROM customers GROUP BY country ORDER BY count(*) DESC LIMIT 1", "tags": ["order"]},
]


def _first_run() -> list[fake_llm.Reply]:
    """Right: q1 (other SQL), q2 (other order), q5 (after a search and a failed query), q6 (float by another route). Wrong: q3, q4, q7."""
    q = fake_llm.tool_calls
    say = fake_llm.text
    return [
        q(("execute_query", {"sql": "SELECT COUNT(id) AS n FROM customers"})),
        say("There are 2000 customers."),
        q(("execute_query", {"sql": "SELECT category, count(*) AS n FROM products GROUP BY category ORDER BY n DESC"})),
        say("Here they are."),
        # The same five names, but not in the order the question asks for.
        q(("execute_query", {"sql": "SELECT name FROM (SELECT name, price FROM products ORDER BY price DESC LIMIT 5) ORDER BY name"})),
        say("These five."),
        q(("execute_query", {"sql": "SELECT count(*) FROM order_status"})),  # no such table: fails
        say("I could not find it."),
        q(("search_schema", {"query": "overdue invoices", "source": "enterprise"})),
        q(("execute_query", {"sql": "SELECT count(*) FROM invoices WHERE state = 'overdue'", "source": "enterprise"})),  # no such column
        q(("execute_query", {"sql": "SELECT count(*) FROM invoices WHERE status = 'overdue'", "source": "enterprise"})),
        say("19."),
        q(("execute_query", {"sql": "SELECT sum(price) / count(*) FROM products"})),
        say("About 123."),
        say("Probably the US."),  # no query at all
    ]


def _second_run() -> list[fake_llm.Reply]:
    """Every question answered with its gold SQL."""
    replies: list[fake_llm.Reply] = []
    for question in QUESTIONS:
        args = {"sql": question["gold_sql"], **({"source": question["source"]} if "source" in question else {})}
        replies += [fake_llm.tool_calls(("execute_query", args)), fake_llm.text("Done.")]
    return replies


@pytest.fixture(scope="module")
def services(infra: Infra, tmp_path_factory: pytest.TempPathFactory) -> Iterator[System]:
    workdir = tmp_path_factory.mktemp("eval")
    db = enterprise.ensure(workdir / "enterprise.db")
    with running_system(infra, "ev", start=("session", "query"), QUERY_SOURCES=f"enterprise=sqlite:///{db}", QUERY_SAMPLE_PATH=str(workdir / "sample.db")) as system:
        yield system


async def test_make_eval_reports_exactly_the_scripted_accuracy(services: System, tmp_path: Path) -> None:
    questions = tmp_path / "questions.jsonl"
    questions.write_text("".join(json.dumps(q) + "\n" for q in QUESTIONS))
    fake = await started_fake(*_first_run(), *_second_run())
    env = {
        "NATS_URL": services.nats_url,
        "NATS_SUBJECT_PREFIX": services.prefix,
        "LLM_BASE_URL": fake.base_url,
        "LLM_MODEL": fake_llm.MODEL,
        "LLM_API_KEY": API_KEY,
        "CHAT_QUOTA_PER_MINUTE": "0",
    }
    try:
        async with gateway(env) as url:
            text = await main_async(["--questions", str(questions), "--gateway", url, "--gateway", url, "--label", "fake", "--compare", "LLM_MODEL=gold"])
    finally:
        await fake.stop()
    print("\n" + text)
    first, second, side_by_side = text.split("\n\n")
    lines = first.splitlines()
    assert lines[0] == "== fake"
    assert lines[1] == "execution accuracy: 4/7 = 57.1%"
    # Steps: 2 per question, 4 for q5, 1 for q7; tokens: 80 in / 20 out per tool step (8), 50 / 7 per text step (7).
    assert lines[2].startswith("mean steps: 2.14   tokens: 990 in, 209 out   latency: mean ")
    assert lines[4:9] == [
        "  count        2/3 = 66.7%",
        "  float        1/1 = 100.0%",
        "  group        1/1 = 100.0%",
        "  order        0/2 = 0.0%",
        "  search       1/1 = 100.0%",
    ]
    assert lines[9] == "failing (3):"
    assert "  [q3] The 5 most expensive products" in lines
    assert "    gold:  SELECT name FROM products ORDER BY price DESC LIMIT 5" in lines
    assert "    model: SELECT name FROM (SELECT name, price FROM products ORDER BY price DESC LIMIT 5) ORDER BY name" in lines
    assert "    why:   different result: 5 rows, the gold SQL gives 5" in lines
    assert "    model: (none)" in lines  # q4, whose only query failed, and q7, which asked none
    assert second.splitlines()[1] == "execution accuracy: 7/7 = 100.0%"
    assert ["accuracy", "4/7", "=", "57.1%", "7/7", "=", "100.0%"] in [line.split() for line in side_by_side.splitlines()]
    for question_id in ("q3", "q4", "q7"):
        assert f"[{question_id}] right only with LLM_MODEL=gold" in side_by_side
