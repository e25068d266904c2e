"""The page's first hour in a real browser: final tool cards, a clean console, safe CSV, charts, show_chart, the schema panel, recent queries.

Same setup as tests/test_web.py (its Playwright fixtures), with a system of this module whose
query service also has a `big` SQLite source of 500 tables linked by foreign keys.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Page, expect

from tests import fake_llm, test_web
from tests.conftest import Infra, System, running_system
from tests.harness import Service, free_port, service_env
from tests.test_web import ask, sign_in
from tests.web_support import BIG_TABLES, ThreadedFakeLLM, axe_violations, make_big_schema

# The Playwright, build and fake-model fixtures of tests/test_web.py, by the same names.
playwright, browser_type, launch_browser, browser = test_web.playwright, test_web.browser_type, test_web.launch_browser, test_web.browser
browser_type_launch_args, base_url, built, model, fake = test_web.browser_type_launch_args, test_web.base_url, test_web.built, test_web.model, test_web.fake


@pytest.fixture(scope="module")
def system(infra: Infra, model: ThreadedFakeLLM, tmp_path_factory: pytest.TempPathFactory) -> Iterator[System]:
    directory = tmp_path_factory.mktemp("webpage")
    make_big_schema(directory / "big.db")
    env = {
        "QUERY_SAMPLE_PATH": str(directory / "sample.db"),
        "QUERY_SOURCES": f"big=sqlite:///{directory / 'big.db'}",
        "QUERY_SCHEMA_MAX_TABLES": "600",
        "QUERY_SCHEMA_MAX_COLUMNS": "3000",
        "LLM_BASE_URL": model.base_url,
        "LLM_MODEL": fake_llm.MODEL,
        "LLM_API_KEY": "sk-test-web",
        "LLM_MAX_RETRIES": "0",
    }
    with running_system(infra, "wp", **env) as system:
        yield system


@pytest.fixture
def browser_context_args(system: System, built: None) -> dict[str, Any]:
    return {"base_url": system.url, "accept_downloads": True, "viewport": {"width": 1400, "height": 900}}


@pytest.fixture
def console(page: Page) -> Iterator[list[str]]:
    """Everything a person would see go wrong in the console: any error line, CSP report, uncaught error, or request that failed or answered >= 400."""
    seen: list[str] = []
    page.add_init_script("document.addEventListener('securitypolicyviolation', (e) => console.error('CSP violation:', e.violatedDirective, e.sample, e.sourceFile, e.lineNumber))")
    page.on("console", lambda msg: seen.append(f"console: {msg.text}") if msg.type == "error" else None)
    page.on("pageerror", lambda exc: seen.append(f"uncaught: {exc}"))
    page.on("requestfailed", lambda request: seen.append(f"failed: {request.method} {request.url} {request.failure}"))
    page.on("response", lambda response: seen.append(f"{response.status}: {response.request.method} {response.url}") if response.status >= 400 else None)
    yield seen
    assert not seen, seen


def run_sql(page: Page, sql: str) -> None:
    """Replace the editor's text as a person would (select all, type) and run it.

    Not Playwright's fill(): on a contenteditable it runs the browser's own editing command, which
    re-creates the line with an inline style that the page's CSP refuses.
    """
    editor = page.locator("#editor .cm-content")
    editor.click()
    page.keyboard.press("Control+A")
    page.keyboard.insert_text(sql)
    editor.press("Control+Enter")


def messages_log(page: Page) -> Any:
    return page.get_by_role("log", name="Conversation messages")


# --- chat ------------------------------------------------------------------------------------------


def test_every_tool_card_ends_in_a_final_state_and_describe_schema_lists_its_tables(page: Page, console: list[str], fake: ThreadedFakeLLM) -> None:
    fake.then(
        fake_llm.tool_calls(("describe_schema", {})),
        fake_llm.tool_calls(("execute_query", {"sql": "SELECT name FROM customers LIMIT 3"})),
        fake_llm.text("Three customers."),
    )
    sign_in(page)
    ask(page, "Who are the customers?")
    log = messages_log(page)
    expect(log.get_by_text("Three customers.")).to_be_visible()
    schema = log.get_by_role("article", name="describe_schema")
    expect(schema.locator(".state")).to_have_text("Described 4 tables")
    expect(schema.locator("li code")).to_have_text(["customers", "order_items", "orders", "products"])
    expect(log.get_by_role("article", name="execute_query").locator(".state")).to_have_text("3 rows")
    expect(log.get_by_text("Receiving rows…")).to_have_count(0)
    expect(log.get_by_text("Running…")).to_have_count(0)


def test_a_message_can_be_copied_and_the_last_answer_regenerated(page: Page, console: list[str], fake: ThreadedFakeLLM) -> None:
    page.context.grant_permissions(["clipboard-read", "clipboard-write"])
    fake.then(fake_llm.text("First take."), fake_llm.text("Second take."))
    sign_in(page)
    ask(page, "Say something")
    log = messages_log(page)
    expect(log.get_by_text("First take.")).to_be_visible()
    answer = log.get_by_role("article", name="Assistant")
    answer.get_by_role("button", name="Copy", exact=True).click()
    expect(answer.get_by_role("button", name="Copied")).to_be_visible()
    assert page.evaluate("navigator.clipboard.readText()") == "First take."
    page.get_by_role("group", name="Last answer").get_by_role("button", name="Regenerate").click()
    expect(log.get_by_text("Second take.")).to_be_visible()
    expect(log.get_by_text("First take.")).to_have_count(0)
    expect(log.get_by_role("article", name="Assistant")).to_have_count(1)


def test_show_chart_from_the_model_draws_in_the_card_and_an_invalid_proposal_does_not(page: Page, console: list[str], fake: ThreadedFakeLLM) -> None:
    sql = "SELECT name, SUM(quantity) AS units FROM order_items JOIN products ON products.id = product_id GROUP BY name ORDER BY name LIMIT 8"
    fake.then(
        fake_llm.tool_calls(("execute_query", {"sql": sql})),
        fake_llm.tool_calls(("show_chart", {"type": "bar", "x": "name", "y": "name", "title": "Wrong"})),
        fake_llm.tool_calls(("show_chart", {"type": "bar", "x": "name", "y": "units", "title": "Units sold"})),
        fake_llm.text("Charted."),
    )
    sign_in(page)
    ask(page, "Chart units per product")
    log = messages_log(page)
    expect(log.get_by_text("Charted.")).to_be_visible()
    cards = log.get_by_role("article", name="show_chart")
    expect(cards).to_have_count(2)
    expect(cards.nth(0).locator(".state")).to_contain_text("Failed: 'y' must be a numeric column")
    expect(cards.nth(0).locator("svg")).to_have_count(0)
    products = len(sqlite_rows(page, sql))
    chart = cards.nth(1).get_by_role("img", name=f"Units sold: bar chart of {products} values")
    expect(chart).to_be_visible()
    expect(chart.locator("rect")).to_have_count(products)


def sqlite_rows(page: Page, sql: str) -> list[Any]:
    """The rows of `sql` as the server returns them (through the page's own session)."""
    response = page.request.post("/api/query", data={"sql": sql}, headers={"Origin": page.url.split("/", 3)[0] + "//" + page.url.split("/", 3)[2]})
    assert response.ok, response.text()
    rows: list[Any] = []
    for line in response.text().split("\n\n"):
        if '"data-query-rows"' in line:
            import json

            rows.extend(json.loads(line.removeprefix("data: "))["data"]["rows"])
    return rows


# --- CSV -------------------------------------------------------------------------------------------

FORMULA_SQL = (
    "SELECT 1 AS id, '=1+1' AS cell UNION ALL SELECT 2, '+SUM(A1:A2)' UNION ALL SELECT 3, '-2+3' UNION ALL SELECT 4, '@cmd' "
    "UNION ALL SELECT 5, char(9) || '=tab' UNION ALL SELECT 6, '-5' UNION ALL SELECT 7, 'a=b' UNION ALL SELECT 8, '=\"q\"' UNION ALL SELECT -9, '1e+21' ORDER BY id"
)


def test_a_csv_with_formula_like_cells_opens_as_text_and_numbers_stay_exact(page: Page, console: list[str]) -> None:
    sign_in(page)
    run_sql(page, FORMULA_SQL)
    expect(page.get_by_role("status")).to_have_text("9 rows")
    with page.expect_download() as download_info:
        page.get_by_role("button", name="Download CSV").click()
    with open(download_info.value.path(), newline="", encoding="utf-8") as handle:
        raw = handle.read()
    got = list(csv.reader(raw.splitlines(keepends=True)))
    assert got == [
        ["id", "cell"],
        ["-9", "1e+21"],
        ["1", "'=1+1"],
        ["2", "'+SUM(A1:A2)"],
        ["3", "'-2+3"],
        ["4", "'@cmd"],
        ["5", "'\t=tab"],
        ["6", "-5"],
        ["7", "a=b"],
        ["8", '\'="q"'],
    ]
    # Every neutralised cell is also quoted, as OWASP advises.
    assert '"\'=1+1"' in raw and '"\'@cmd"' in raw


# --- charts ----------------------------------------------------------------------------------------

SALES_SQL = "SELECT date(ordered_at) AS day, COUNT(*) AS orders, SUM(id) AS id_sum FROM orders GROUP BY day ORDER BY day"


@pytest.mark.parametrize(("kind", "mark"), [("bar", "rect"), ("line", "path"), ("area", "path"), ("scatter", "circle"), ("pie", "path")])
def test_each_chart_type_draws_from_a_real_result(page: Page, console: list[str], kind: str, mark: str) -> None:
    sign_in(page)
    run_sql(page, "SELECT c.name AS customer, c.id AS id, COUNT(o.id) AS orders FROM customers c JOIN orders o ON o.customer_id = c.id GROUP BY c.id ORDER BY c.id LIMIT 8")
    expect(page.get_by_role("status")).to_have_text("8 rows")
    # The defaults: the text column on X, the first numeric column that is not a key on Y.
    expect(page.get_by_label("X", exact=True)).to_have_value("customer")
    expect(page.get_by_label("Y (numeric)")).to_have_value("orders")
    expect(page.get_by_label("Type")).to_have_value("bar")
    page.get_by_label("Type").select_option(kind)
    noun = "values" if kind in ("bar", "pie") else "points"
    chart = page.locator("#chart").get_by_role("img", name=f"orders by customer: {kind} chart of 8 {noun}")
    expect(chart).to_be_visible()
    assert chart.locator(mark).count() >= (8 if kind in ("bar", "scatter", "pie") else 1)


def test_a_date_column_gets_a_time_axis_and_the_chart_downloads_as_png_and_svg(page: Page, console: list[str]) -> None:
    sign_in(page)
    run_sql(page, SALES_SQL)
    expect(page.get_by_role("status")).to_contain_text("rows")
    expect(page.get_by_label("X", exact=True)).to_have_value("day")
    expect(page.get_by_label("Y (numeric)")).to_have_value("orders")
    expect(page.get_by_label("Type")).to_have_value("line")
    chart = page.locator("#chart").get_by_role("img")
    expect(chart).to_have_attribute("aria-label", re.compile(r"^orders by day: line chart of \d+ points$"))
    # A time axis: ticks are dates (a month name or a year), not the ISO strings of the rows.
    ticks = chart.locator("[data-plot-label='x-axis tick label'] text").all_text_contents()
    assert ticks and not any(t.count("-") == 2 for t in ticks), ticks
    with page.expect_download() as svg_download:
        page.get_by_role("button", name="Download SVG").click()
    svg = Path(svg_download.value.path()).read_text()
    assert svg_download.value.suggested_filename == "chart.svg"
    assert svg.startswith("<?xml") and "<svg" in svg and 'xmlns="http://www.w3.org/2000/svg"' in svg
    with page.expect_download() as png_download:
        page.get_by_role("button", name="Download PNG").click()
    assert png_download.value.suggested_filename == "chart.png"
    assert Path(png_download.value.path()).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_chart_panel_and_chat_cards_pass_axe_core(page: Page, console: list[str], fake: ThreadedFakeLLM) -> None:
    fake.then(
        fake_llm.tool_calls(("describe_schema", {})),
        fake_llm.tool_calls(("execute_query", {"sql": "SELECT name, price FROM products LIMIT 5"})),
        fake_llm.tool_calls(("show_chart", {"type": "pie", "x": "name", "y": "price"})),
        fake_llm.text("Done."),
    )
    sign_in(page)
    ask(page, "Prices?")
    expect(messages_log(page).get_by_text("Done.")).to_be_visible()
    run_sql(page, SALES_SQL)
    expect(page.locator("#chart").get_by_role("img")).to_be_visible()
    assert axe_violations(page) == []


# --- schema panel ----------------------------------------------------------------------------------


def open_schema(page: Page, source: str) -> Any:
    page.get_by_role("region", name="SQL editor").get_by_label("Source").select_option(source)
    page.locator("#schema-panel > summary").click()
    return page.locator("#schema-panel")


def test_the_schema_panel_at_500_tables_searches_and_draws_one_neighbourhood(page: Page, console: list[str]) -> None:
    sign_in(page)
    panel = open_schema(page, "big")
    expect(panel.get_by_text(f"{BIG_TABLES} tables; the first 100 are listed, search to narrow")).to_be_visible()
    tables = panel.get_by_role("list", name="Tables").get_by_role("button")
    expect(tables).to_have_count(100)
    panel.get_by_label("Search tables").fill("t25")
    expect(panel.get_by_text(f"10 of {BIG_TABLES} tables match")).to_be_visible()
    expect(tables).to_have_count(10)
    tables.filter(has_text="t250").click()
    expect(panel).to_have_attribute("data-keys-loaded", "true", timeout=30_000)
    # t250 references t249 and t000, and t251 references it: four tables, three foreign keys, no more.
    diagram = panel.get_by_role("img", name="ER diagram of t250: 4 tables, 3 foreign keys")
    expect(diagram).to_be_visible()
    assert sorted(diagram.locator(".er-node").evaluate_all("nodes => nodes.map(n => n.dataset.table)")) == ["t000", "t249", "t250", "t251"]
    # A node of the diagram selects its own neighbourhood; t000 has 499 and only some are drawn.
    diagram.locator('.er-node[data-table="t000"]').click()
    expect(panel.get_by_role("img", name="ER diagram of t000: 25 tables, 25 foreign keys")).to_be_visible()
    expect(panel.get_by_text("475 more related tables not drawn")).to_be_visible()
    assert panel.locator(".er-node").count() == 25


def test_clicking_a_table_or_column_in_the_schema_panel_inserts_its_name(page: Page, console: list[str]) -> None:
    sign_in(page)
    panel = open_schema(page, "default")
    panel.get_by_role("button", name="orders", exact=True).click()
    expect(panel.get_by_role("img", name="ER diagram of orders: 3 tables, 2 foreign keys")).to_be_visible()
    editor = page.locator("#editor .cm-content")
    editor.click()
    page.keyboard.type("SELECT  FROM ")
    panel.get_by_role("button", name="Insert table orders").click()
    page.keyboard.press("Control+Home")
    for _ in range(len("SELECT ")):
        page.keyboard.press("ArrowRight")
    panel.get_by_role("button", name="Insert column customer_id").click()
    expect(editor).to_have_text("SELECT customer_id FROM orders")
    expect(panel.get_by_text("(FK → customers.id)")).to_be_visible()
    assert axe_violations(page) == []


# --- recent queries --------------------------------------------------------------------------------


def test_recent_queries_survive_a_reload_and_a_pick_fills_the_editor(page: Page, console: list[str]) -> None:
    sign_in(page)
    for sql in ("SELECT 1 AS one", "SELECT 2 AS two", "SELECT 1 AS one"):
        run_sql(page, sql)
        expect(page.get_by_role("status")).to_have_text("1 row")
    picker = page.get_by_label("Recent queries")
    expect(picker.locator("option")).to_have_text(["Recent queries (2)", "SELECT 1 AS one", "SELECT 2 AS two"])
    page.reload()
    expect(picker.locator("option")).to_have_text(["Recent queries (2)", "SELECT 1 AS one", "SELECT 2 AS two"])
    picker.select_option(label="SELECT 2 AS two")
    expect(page.locator("#editor .cm-content")).to_have_text("SELECT 2 AS two")
    # Per source: the other source has its own (empty) list.
    page.get_by_role("region", name="SQL editor").get_by_label("Source").select_option("big")
    expect(picker.locator("option")).to_have_text(["No recent queries"])
    assert axe_violations(page) == []


def test_a_card_still_receiving_rows_when_the_answer_is_stopped_ends_interrupted(page: Page, console: list[str], fake: ThreadedFakeLLM) -> None:
    slow = "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 900000) SELECT i, 'row ' || i AS label FROM n"
    fake.then(fake_llm.tool_calls(("execute_query", {"sql": slow})), fake_llm.text("unused"))
    sign_in(page)
    ask(page, "Count slowly")
    card = messages_log(page).get_by_role("article", name="execute_query")
    expect(card.locator(".state")).to_have_text("Receiving rows…", timeout=30_000)
    page.get_by_role("group", name="Last answer").get_by_role("button", name="Stop").click()
    expect(card.locator(".state")).to_have_text("Interrupted: the answer ended before the result was complete")
    expect(page.get_by_role("button", name="Send")).to_be_enabled()
    # Stop aborts the chat request on purpose: that one abort is expected, and nothing else.
    aborted = [line for line in console if line.startswith("failed: POST") and "/api/chat" in line and "ERR_ABORTED" in line]
    assert len(aborted) == 1, console
    console.remove(aborted[0])


def test_without_a_model_the_chat_says_how_to_configure_one(browser: Any, system: System) -> None:
    port = free_port()
    env = {k: v for k, v in system.env.items() if not k.startswith("LLM_")}
    gateway = Service("gateway", service_env(**env, GATEWAY_PORT=str(port))).start()
    context = browser.new_context(base_url=f"http://127.0.0.1:{port}")
    try:
        page = context.new_page()
        errors: list[str] = []
        page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
        sign_in(page)
        guidance = page.locator("#no-model")
        expect(guidance).to_be_visible()
        expect(guidance).to_contain_text("No language model is configured")
        expect(guidance).to_contain_text("LLM_BASE_URL=http://127.0.0.1:11434/v1")
        expect(page.get_by_role("button", name="Send")).to_be_disabled()
        assert errors == []
    finally:
        context.close()
        assert gateway.stop() == 0


def test_a_whole_session_leaves_the_console_clean(page: Page, console: list[str], fake: ThreadedFakeLLM) -> None:
    """Sign in, chat with every tool, run queries, chart, browse the schema, pick a recent query, reload, start a new conversation, sign out."""
    fake.then(
        fake_llm.tool_calls(("describe_schema", {"tables": ["orders"]})),
        fake_llm.tool_calls(("execute_query", {"sql": "SELECT status, COUNT(*) AS n FROM orders GROUP BY status"})),
        fake_llm.tool_calls(("show_chart", {"type": "pie", "x": "status", "y": "n", "title": "Orders by status"})),
        fake_llm.tool_calls(("get_recent_queries", {})),
        fake_llm.text("All done."),
    )
    sign_in(page)
    run_sql(page, SALES_SQL)
    expect(page.locator("#chart").get_by_role("img")).to_be_visible()
    ask(page, "Show me the orders")
    log = messages_log(page)
    expect(log.get_by_text("All done.")).to_be_visible()
    expect(log.get_by_role("img", name=re.compile("^Orders by status: pie chart"))).to_be_visible()
    expect(log.locator("details.tool-card summary")).to_have_text(["get_recent_queries: 1 recent query"])
    page.get_by_label("Type").select_option("area")
    panel = open_schema(page, "default")
    panel.get_by_role("button", name="customers", exact=True).click()
    expect(panel.get_by_role("img", name="ER diagram of customers: 2 tables, 1 foreign key")).to_be_visible()
    page.get_by_label("Recent queries").select_option(index=1)  # long queries are listed cut to 90 characters
    expect(page.locator("#editor .cm-content")).to_have_text(SALES_SQL)
    page.reload()
    expect(log.get_by_text("All done.")).to_be_visible()
    page.get_by_role("button", name="New conversation").click()
    expect(log.get_by_text("All done.")).to_have_count(0)
    page.get_by_role("button", name="Sign out").click()
    expect(page.get_by_role("heading", name="Sign in")).to_be_visible()
