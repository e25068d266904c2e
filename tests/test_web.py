"""The web app in a real browser: Playwright (pytest-playwright) drives Debian's Chromium against a running system.

Each test signs in through the page's own form and works the page as a person would, with
the keyboard where that is the point. Every page also watches for Content-Security-Policy
violations and uncaught errors: a test fails on any. On failure pytest-playwright keeps a
screenshot under var/test-artifacts.
"""

from __future__ import annotations

import asyncio
import base64
import csv
import io
import json
import os
import re
import sqlite3
import threading
import uuid
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import asyncpg
import pytest
from playwright.sync_api import Browser, BrowserType, Page, Playwright, expect, sync_playwright

from tests import fake_llm
from tests.conftest import Databases, Infra, System, running_system
from tests.harness import Service, free_port, service_env, wait_until
from tests.web_support import ThreadedFakeLLM, axe_violations, ensure_built, launch_args, require_chromium

CHROMIUM = require_chromium()
WEB_ADMIN = "web-admin@example.com"

BIG = 200_000
MAX_ROWS = 250_000
BIG_SQL = f"WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < {BIG}) SELECT i AS id, 'row ' || i AS label, i * 0.5 AS half FROM n"
# Cells that CSV must quote or keep apart: commas, quotes, line breaks, spaces at the ends, NULL, numbers.
TRICKY_SQL = (
    "SELECT 1 AS id, 'plain' AS txt, 1.5 AS num UNION ALL SELECT 2, 'a,b', -2 UNION ALL SELECT 3, 'say \"hi\"', NULL "
    "UNION ALL SELECT 4, 'two' || char(10) || 'lines', 0.25 UNION ALL SELECT 5, ' padded ', 1e21 UNION ALL SELECT 6, NULL, 7 ORDER BY id"
)


# pytest-playwright's playwright, browser_type, launch_browser and browser live for the whole session. Sync
# Playwright keeps its event loop running in the main thread while it lives, which would stop the
# asyncio tests of later modules; here they live for this module only.


@pytest.fixture(scope="module")
def playwright() -> Iterator[Playwright]:
    with sync_playwright() as running:
        yield running


@pytest.fixture(scope="module")
def browser_type(playwright: Playwright) -> BrowserType:
    return playwright.chromium


@pytest.fixture(scope="module")
def launch_browser(browser_type_launch_args: dict[str, Any], browser_type: BrowserType) -> Any:
    return lambda **kwargs: browser_type.launch(**{**browser_type_launch_args, **kwargs})


@pytest.fixture(scope="module")
def browser(launch_browser: Any) -> Iterator[Browser]:
    launched = launch_browser()
    yield launched
    launched.close()


@pytest.fixture(scope="session")
def browser_type_launch_args() -> dict[str, Any]:
    """pytest-playwright: launch Debian's Chromium with flags for a root, offline, headless run."""
    return launch_args(CHROMIUM)


@pytest.fixture(scope="session")
def base_url() -> None:
    """Instead of pytest-playwright's fallback fixture (a class method that pytest 9 warns about): the system's URL comes per test."""
    return None


@pytest.fixture(scope="module")
def built() -> None:
    ensure_built()


@pytest.fixture(scope="module")
def model() -> Iterator[ThreadedFakeLLM]:
    """The fake OpenAI-compatible model (tests/fake_llm.py) the gateway's chat talks to."""
    fake = ThreadedFakeLLM()
    yield fake
    fake.stop()


@pytest.fixture
def fake(model: ThreadedFakeLLM) -> ThreadedFakeLLM:
    model.reset()
    return model


@pytest.fixture(scope="module")
def system(infra: Infra, model: ThreadedFakeLLM, tmp_path_factory: pytest.TempPathFactory) -> Iterator[System]:
    """Session, query and gateway processes; the gateway's chat uses the fake model, the query service the sample database."""
    env = {
        "QUERY_SAMPLE_PATH": str(tmp_path_factory.mktemp("web") / "sample.db"),
        "LLM_BASE_URL": model.base_url,
        "LLM_MODEL": fake_llm.MODEL,
        "LLM_API_KEY": "sk-test-web",
        "LLM_MAX_RETRIES": "0",
        "QUERY_MAX_ROWS": str(MAX_ROWS),
        # Users' own databases (test_a_database_added_in_the_panel_...): on, and loopback allowed, as the test's database is local.
        "CONNECTIONS_KEYS": "k1:" + base64.b64encode(os.urandom(32)).decode(),
        "CONNECTIONS_ALLOWED_NETWORKS": "127.0.0.0/8",
        "ADMIN_EMAILS": WEB_ADMIN,
        "AUDIT_STREAM": f"AUDIT_web{uuid.uuid4().hex[:8]}",
    }
    with running_system(infra, "web", **env) as system:
        yield system


@pytest.fixture
def browser_context_args(system: System, built: None) -> dict[str, Any]:
    """In place of pytest-playwright's (session-scoped, it would hold Playwright for the whole session)."""
    return {"base_url": system.url, "accept_downloads": True, "viewport": {"width": 1400, "height": 900}}


@pytest.fixture
def problems(page: Page) -> Iterator[list[str]]:
    """CSP violations and uncaught errors seen on the page; the test fails if there are any."""
    seen: list[str] = []
    # Every violation, also those Chromium reports without a console line; with where it happened.
    page.add_init_script("document.addEventListener('securitypolicyviolation', (e) => console.error('CSP violation:', e.violatedDirective, e.sample, e.sourceFile, e.lineNumber, e.columnNumber))")
    page.on("console", lambda msg: seen.append(msg.text) if msg.type == "error" and ("Content Security Policy" in msg.text or msg.text.startswith("CSP violation")) else None)
    page.on("pageerror", lambda exc: seen.append(f"uncaught: {exc}"))
    yield seen
    assert not seen, seen


def sign_in(page: Page, name: str = "Ada") -> str:
    email = f"{name.lower()}-{uuid.uuid4().hex[:8]}@example.com"
    page.goto("/")
    page.get_by_label("Email").fill(email)
    page.get_by_label("Name").fill(name)
    page.get_by_label("Name").press("Enter")
    expect(page.get_by_text(f"Signed in as {name}")).to_be_visible()
    return email


def run_sql(page: Page, sql: str) -> None:
    editor = page.locator("#editor .cm-content")
    editor.click()
    editor.fill(sql)
    editor.press("Control+Enter")


def expected_rows(sql: str) -> list[tuple[Any, ...]]:
    """The same query run by Python's own SQLite: what the page must show."""
    with sqlite3.connect(":memory:") as db:
        return db.execute(sql).fetchall()


def csv_text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e21:
        return str(int(value))  # JavaScript prints 2.0 as "2"
    return repr(value) if isinstance(value, float) else str(value)


def test_sign_in_with_the_dev_form_then_sign_out(page: Page, problems: list[str]) -> None:
    page.goto("/")
    expect(page.get_by_role("heading", name="Sign in")).to_be_visible()
    email = sign_in(page, "Grace")
    me = page.request.get("/api/me").json()
    assert me["user"]["email"] == email
    page.get_by_role("button", name="Sign out").click()
    expect(page.get_by_role("heading", name="Sign in")).to_be_visible()
    assert page.request.get("/api/me").status == 401


def test_under_firebase_the_page_offers_google_sign_in_and_loads_nothing_from_elsewhere_until_asked(browser: Browser, system: System) -> None:
    config = {"apiKey": "AIzaSyTest-key", "authDomain": "dbgenie-test.firebaseapp.com", "projectId": "dbgenie-test"}
    port = free_port()
    env = {**system.env, "GATEWAY_PORT": str(port), "AUTH_MODE": "firebase", "FIREBASE_PROJECT_ID": "dbgenie-test", "FIREBASE_WEB_CONFIG": json.dumps(config)}
    gateway = Service("gateway", service_env(**env)).start()
    context = browser.new_context(base_url=f"http://127.0.0.1:{port}")
    try:
        page = context.new_page()
        errors: list[str] = []
        # (The signed-out page's GET /api/me answers 401, which Chromium logs as a failed load: that one is expected.)
        page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" and "status of 401" not in msg.text else None)
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        requested: list[str] = []
        page.on("request", lambda request: requested.append(request.url))
        page.goto("/")
        expect(page.get_by_role("button", name="Sign in with Google")).to_be_visible()
        expect(page.get_by_label("Email")).to_be_hidden()
        # The Firebase SDK is a chunk of its own, fetched only when the button is pressed.
        assert all(url.startswith(f"http://127.0.0.1:{port}/") or url.startswith("data:") for url in requested), requested
        assert axe_violations(page) == []
        assert errors == []
    finally:
        context.close()
        assert gateway.stop() == 0


def test_a_query_of_200000_rows_scrolls_to_its_last_row_with_the_keyboard(page: Page, problems: list[str]) -> None:
    sign_in(page)
    run_sql(page, BIG_SQL)
    expect(page.get_by_role("status")).to_have_text(f"{BIG:,} rows", timeout=60_000)
    grid = page.get_by_role("grid", name="Query result")
    expect(grid).to_have_attribute("aria-rowcount", str(BIG + 1))  # the grid paints on the next frame after the status
    grid.focus()
    page.keyboard.press("End")
    last = grid.locator(f'[role="row"][aria-rowindex="{BIG + 1}"]')
    expect(last).to_be_visible()
    expect(last.get_by_role("gridcell")).to_have_text([str(BIG), f"row {BIG}", str(BIG * 0.5).removesuffix(".0")])
    # Only the rows in view are in the document, not 200,000.
    assert grid.locator('[role="row"]').count() < 100
    page.keyboard.press("Home")
    expect(grid.locator('[role="row"][aria-rowindex="2"]').get_by_role("gridcell")).to_have_text(["1", "row 1", "0.5"])


def test_a_result_cut_at_query_max_rows_says_it_was_truncated(page: Page, problems: list[str]) -> None:
    sign_in(page)
    run_sql(page, f"WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < {MAX_ROWS + 10}) SELECT i FROM n")
    expect(page.get_by_role("status")).to_have_text(f"{MAX_ROWS:,} rows. Truncated: the result had more rows than the server returns (QUERY_MAX_ROWS).", timeout=60_000)
    expect(page.get_by_role("grid", name="Query result")).to_have_attribute("aria-rowcount", str(MAX_ROWS + 1))  # painted on the next frame


def test_the_editor_completes_table_names_from_the_schema_of_the_picked_source(page: Page, problems: list[str]) -> None:
    sign_in(page)
    picker = page.get_by_label("Source")
    expect(picker.locator("option")).to_have_text(["default (sqlite)"])
    editor = page.locator("#editor .cm-content")
    editor.click()
    page.keyboard.type("SELECT * FROM cust")
    completion = page.locator(".cm-tooltip-autocomplete")
    option = completion.get_by_role("option", name="customers")
    expect(option).to_be_visible()
    # A click: CodeMirror ignores Enter for 75 ms after the list opens (against accidental picks), and tests do not wait on time.
    option.click()
    expect(editor).to_have_text("SELECT * FROM customers")


def test_the_csv_download_holds_exactly_the_rows(page: Page, problems: list[str]) -> None:
    sign_in(page)
    run_sql(page, TRICKY_SQL)
    expect(page.get_by_role("status")).to_have_text("6 rows")
    with page.expect_download() as download_info:
        page.get_by_role("button", name="Download CSV").click()
    download = download_info.value
    assert download.suggested_filename == "result.csv"
    with open(download.path(), newline="", encoding="utf-8") as handle:
        raw = handle.read()
    got = list(csv.reader(io.StringIO(raw)))
    want = [["id", "txt", "num"]] + [[csv_text(cell) for cell in row] for row in expected_rows(TRICKY_SQL)]
    assert got == want
    assert raw.endswith("\r\n")


def test_the_csv_of_200000_rows_equals_them(page: Page, problems: list[str]) -> None:
    sign_in(page)
    run_sql(page, BIG_SQL)
    expect(page.get_by_role("status")).to_have_text(f"{BIG:,} rows", timeout=60_000)
    with page.expect_download() as download_info:
        page.get_by_role("button", name="Download CSV").click()
    with open(download_info.value.path(), newline="", encoding="utf-8") as handle:
        got = list(csv.reader(handle))
    assert got[0] == ["id", "label", "half"]
    assert got[1:] == [[csv_text(cell) for cell in row] for row in expected_rows(BIG_SQL)]


def test_a_refused_query_shows_the_servers_message(page: Page, problems: list[str]) -> None:
    sign_in(page)
    run_sql(page, "DELETE FROM customers")
    expect(page.get_by_role("alert").filter(has_text=re.compile("read-only|not allowed|only", re.I))).to_be_visible()


def test_the_chart_draws_a_numeric_column_against_another(page: Page, problems: list[str]) -> None:
    sign_in(page)
    run_sql(page, "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 50) SELECT i AS x, i * i AS y FROM n")
    expect(page.get_by_role("status")).to_have_text("50 rows")
    chart = page.get_by_role("img", name="y by x: scatter chart of 50 points")
    expect(chart).to_be_visible()
    expect(chart.locator("circle")).to_have_count(50)
    page.get_by_label("Y (numeric)").select_option(label="x")
    expect(page.get_by_role("img", name="x by x: scatter chart of 50 points")).to_be_visible()


def test_the_pages_pass_axe_core(page: Page, problems: list[str], fake: ThreadedFakeLLM) -> None:
    page.goto("/")
    expect(page.get_by_role("heading", name="Sign in")).to_be_visible()
    assert axe_violations(page) == []
    fake.then(fake_llm.tool_calls(("execute_query", {"sql": "SELECT 1 AS one"})), fake_llm.text("It is **one**.", reasoning=["Easy."]))
    sign_in(page)
    ask(page, "What is one?")
    expect(page.get_by_role("log", name="Conversation messages").get_by_text("It is")).to_be_visible()
    expect(page.get_by_role("navigation", name="Conversations").get_by_role("listitem")).to_have_count(1)
    run_sql(page, TRICKY_SQL)
    expect(page.get_by_role("status")).to_have_text("6 rows")
    assert axe_violations(page) == []


# --- chat ------------------------------------------------------------------------------------------

CHAT_ROWS = 1234
CHAT_SQL = f"WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < {CHAT_ROWS}) SELECT i AS id, i * 2 AS doubled FROM n"


def ask(page: Page, text: str) -> None:
    page.get_by_label("Ask about your data").fill(text)
    page.get_by_role("button", name="Send").click()


def test_a_chat_turn_shows_the_text_the_query_card_and_opens_the_rows_in_the_editor_without_a_request(page: Page, problems: list[str], fake: ThreadedFakeLLM) -> None:
    fake.then(
        fake_llm.tool_calls(("execute_query", {"sql": CHAT_SQL})),
        fake_llm.text("There are ", "**1,234** numbers. <img src=x onerror=alert(1)><script>alert(2)</script>", reasoning=["Count them first."]),
    )
    sign_in(page)
    ask(page, "How many numbers are there?")
    messages = page.get_by_role("log", name="Conversation messages")
    expect(messages.locator("strong", has_text="1,234")).to_be_visible()
    # The model's HTML is shown as text, never made into elements (an alert would be a page error or dialog).
    expect(messages.get_by_text("<img src=x onerror=alert(1)><script>alert(2)</script>")).to_be_visible()
    assert messages.locator("img, script").count() == 0
    reasoning = messages.locator("details.reasoning")
    expect(reasoning).to_have_count(1)
    assert reasoning.get_attribute("open") is None
    expect(reasoning.get_by_text("Count them first.")).to_be_hidden()
    card = messages.get_by_role("article", name="execute_query")
    expect(card.locator("code")).to_have_text(CHAT_SQL)
    expect(card.get_by_text(f"{CHAT_ROWS:,} rows")).to_be_visible()
    expect(card.locator("tbody tr")).to_have_count(5)
    expect(card.locator("tbody tr").first.locator("td")).to_have_text(["1", "2"])

    queries: list[str] = []
    page.on("request", lambda request: queries.append(request.url) if "/api/query" in request.url else None)
    card.get_by_role("button", name="Open in editor").click()
    expect(page.get_by_role("status")).to_have_text(f"{CHAT_ROWS:,} rows")
    grid = page.get_by_role("grid", name="Query result")
    assert grid.get_attribute("aria-rowcount") == str(CHAT_ROWS + 1)
    assert page.locator("#editor .cm-content").inner_text() == CHAT_SQL
    grid.focus()
    page.keyboard.press("End")
    expect(grid.locator(f'[role="row"][aria-rowindex="{CHAT_ROWS + 1}"]').get_by_role("gridcell")).to_have_text([str(CHAT_ROWS), str(2 * CHAT_ROWS)])
    assert queries == []


def test_stop_ends_a_turn_midway_and_keeps_what_was_streamed(page: Page, problems: list[str], fake: ThreadedFakeLLM) -> None:
    fake.then(fake_llm.Stream(fake_llm.text("Thinking about ", "it").chunks[:3], hang=True))
    sign_in(page)
    ask(page, "Take your time")
    messages = page.get_by_role("log", name="Conversation messages")
    expect(messages.get_by_text("Thinking about it")).to_be_visible()
    stop = page.get_by_role("button", name="Stop")
    expect(stop).to_be_enabled()
    stop.click()
    # The gateway closed its request to the model: the turn really ended, not just the page's view of it.
    wait_until(fake.closed_set, timeout=15, what="the model request to be closed")
    # Under the last answer, Stop gives way to Regenerate once the turn has ended.
    expect(stop).to_be_hidden()
    expect(page.get_by_role("group", name="Last answer").get_by_role("button", name="Regenerate")).to_be_visible()
    expect(page.get_by_role("button", name="Send")).to_be_enabled()
    expect(messages.get_by_text("Thinking about it")).to_be_visible()


def conversations(page: Page) -> list[dict[str, Any]]:
    return page.request.get("/api/conversations").json()["conversations"]


def test_after_a_reload_the_conversation_is_in_the_sidebar_and_shows_again(page: Page, problems: list[str], fake: ThreadedFakeLLM) -> None:
    fake.then(fake_llm.text("Hello, ", "Ada."))
    sign_in(page)
    ask(page, "Which tables are there?")
    messages = page.get_by_role("log", name="Conversation messages")
    expect(messages.get_by_text("Hello, Ada.")).to_be_visible()
    expect(page.get_by_role("button", name="Send")).to_be_enabled()
    page.reload()
    sidebar = page.get_by_role("navigation", name="Conversations")
    expect(sidebar.get_by_role("button", name="Which tables are there?", exact=True)).to_have_attribute("aria-current", "true")
    expect(messages.get_by_text("Which tables are there?")).to_be_visible()
    expect(messages.get_by_text("Hello, Ada.")).to_be_visible()


def test_the_sidebar_makes_switches_renames_and_deletes_conversations_by_keyboard(page: Page, problems: list[str], fake: ThreadedFakeLLM) -> None:
    fake.then(fake_llm.text("First answer."), fake_llm.text("Second answer."))
    sign_in(page)
    messages = page.get_by_role("log", name="Conversation messages")
    sidebar = page.get_by_role("navigation", name="Conversations")
    ask(page, "First question")
    expect(messages.get_by_text("First answer.")).to_be_visible()
    sidebar.get_by_role("button", name="New conversation").focus()
    page.keyboard.press("Enter")
    expect(messages.get_by_text("First answer.")).to_have_count(0)
    ask(page, "Second question")
    expect(messages.get_by_text("Second answer.")).to_be_visible()
    expect(sidebar.get_by_role("listitem")).to_have_count(2)
    assert [c["title"] for c in conversations(page)] == ["Second question", "First question"]

    # Switch back to the first.
    sidebar.get_by_role("button", name="First question", exact=True).focus()
    page.keyboard.press("Enter")
    expect(messages.get_by_text("First answer.")).to_be_visible()
    expect(messages.get_by_text("Second answer.")).to_have_count(0)

    # Rename it: the inline form, typed and sent with Enter.
    sidebar.get_by_role("button", name="Rename First question").focus()
    page.keyboard.press("Enter")
    title = sidebar.get_by_label("New title")
    expect(title).to_be_focused()
    page.keyboard.type("Tables, renamed")
    page.keyboard.press("Enter")
    expect(sidebar.get_by_role("button", name="Tables, renamed", exact=True)).to_be_visible()
    assert [c["title"] for c in conversations(page)] == ["Second question", "Tables, renamed"]

    # Delete the second: gone from the list and from the server.
    second = next(c["id"] for c in conversations(page) if c["title"] == "Second question")
    sidebar.get_by_role("button", name="Delete Second question").focus()
    page.keyboard.press("Enter")
    expect(sidebar.get_by_role("button", name="Second question", exact=True)).to_have_count(0)
    assert [c["title"] for c in conversations(page)] == ["Tables, renamed"]
    assert page.request.get(f"/api/conversations/{second}").status == 404


def test_a_thumbs_up_teaches_the_answer_and_a_thumbs_down_saves_nothing(page: Page, problems: list[str], fake: ThreadedFakeLLM) -> None:
    """Dev sign-in needs no approval: the 👍 answer's SQL is in the next similar question's system prompt."""
    sql = "SELECT count(*) AS customers FROM customers WHERE country = 'SE'"
    fake.then(
        fake_llm.tool_calls(("execute_query", {"sql": sql})),
        fake_llm.text("189 customers are in Sweden."),
        fake_llm.text("I do not know."),
        fake_llm.text("Still 189."),
    )
    sign_in(page)
    messages = page.get_by_role("log", name="Conversation messages")
    ask(page, "How many Swedish customers are there?")
    expect(messages.get_by_text("189 customers are in Sweden.")).to_be_visible()
    answer = messages.get_by_role("article", name="Assistant").first
    answer.get_by_role("button", name="Good answer").click()
    expect(answer.get_by_text("Thanks: this answer is now a verified example.")).to_be_visible()
    expect(answer.get_by_role("button", name="Good answer")).to_be_disabled()

    ask(page, "What is the meaning of life?")
    second = messages.get_by_role("article", name="Assistant").nth(1)
    expect(second.get_by_text("I do not know.")).to_be_visible()
    assert sql not in fake.fake.requests[-1]["messages"][0]["content"]  # unrelated question: no example
    second.get_by_role("button", name="Bad answer").click()
    expect(second.get_by_text("Thanks for the feedback.")).to_be_visible()

    ask(page, "Number of customers from Sweden?")
    expect(messages.get_by_text("Still 189.")).to_be_visible()
    system = fake.fake.requests[-1]["messages"][0]["content"]
    assert "Verified examples" in system and f"SQL: {sql}" in system and "How many Swedish customers are there?" in system
    assert "meaning of life" not in system  # the 👎 answer taught nothing


# --- the audit view ----------------------------------------------------------------------------------


def test_an_admin_sees_the_audit_trail_as_a_filterable_table_and_csv(page: Page, problems: list[str]) -> None:
    marker = f"audit_{uuid.uuid4().hex[:8]}"
    email = sign_in(page)
    expect(page.get_by_role("button", name="Audit trail")).to_be_hidden()  # not an admin
    run_sql(page, f"SELECT 42 AS {marker}")
    expect(page.get_by_role("status")).to_have_text("1 row")
    page.get_by_role("button", name="Sign out").click()
    page.get_by_label("Email").fill(WEB_ADMIN)
    page.get_by_label("Name").fill("Boss")
    page.get_by_label("Name").press("Enter")
    page.get_by_role("button", name="Audit trail").click()
    page.get_by_label("User").fill(email)
    page.get_by_label("Kind").select_option("query")
    table = page.get_by_role("table")

    def listed() -> bool:
        page.get_by_role("button", name="Show").click()
        expect(page.get_by_role("status")).not_to_have_text("Loading…")
        return table.get_by_role("cell", name=f"SELECT 42 AS {marker}").count() == 1

    wait_until(listed, what="the query's audit event in the table")
    expect(table.get_by_role("row")).to_have_count(2)  # the header and the one query
    expect(table.get_by_role("cell", name=email)).to_be_visible()
    with page.expect_download() as download_info:
        page.get_by_role("button", name="Download CSV").click()
    download = download_info.value
    assert download.suggested_filename == "audit.csv"
    with open(download.path(), newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert [(r["kind"], r["email"], r["sql"], r["outcome"], r["rows"]) for r in rows] == [("query", email, f"SELECT 42 AS {marker}", "ok", "1")]


# --- the Databases panel ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def own_database(databases: Databases) -> Iterator[dict[str, str]]:
    """A PostgreSQL reader role with a password and a schema of its own, made in a thread (sync Playwright holds this one's loop)."""
    suffix = uuid.uuid4().hex[:10]
    role, password, schema = f"web_ro_{suffix}", uuid.uuid4().hex, f"web_{suffix}"

    async def admin(*statements: str) -> None:
        conn = await asyncpg.connect(databases.postgres)
        try:
            for statement in statements:
                await conn.execute(statement)
        finally:
            await conn.close()

    def run(*statements: str) -> None:
        failure: list[BaseException] = []
        thread = threading.Thread(target=lambda: _capture(failure, lambda: asyncio.run(admin(*statements))))
        thread.start()
        thread.join()
        if failure:
            raise failure[0]

    run(
        f"CREATE ROLE {role} LOGIN PASSWORD '{password}'",
        f"CREATE SCHEMA {schema}",
        f"CREATE TABLE {schema}.stars (name text)",
        f"INSERT INTO {schema}.stars VALUES ('Sun'), ('Vega'), ('Sirius')",
        f"GRANT USAGE ON SCHEMA {schema} TO {role}",
        f"GRANT SELECT ON ALL TABLES IN SCHEMA {schema} TO {role}",
    )
    parts = urlsplit(databases.postgres)
    yield {"host": parts.hostname or "127.0.0.1", "port": str(parts.port or 5432), "database": parts.path.lstrip("/"), "user": role, "password": password, "schema": schema}
    run(f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = '{role}'", f"DROP SCHEMA {schema} CASCADE", f"DROP ROLE {role}")


def _capture(failure: list[BaseException], call: Any) -> None:
    try:
        call()
    except BaseException as exc:
        failure.append(exc)


def test_a_database_added_in_the_panel_is_picked_and_queried(page: Page, problems: list[str], own_database: dict[str, str]) -> None:
    sign_in(page)
    page.get_by_text("Databases", exact=True).click()
    page.get_by_label("Alias").fill("stars")
    page.get_by_label("Engine").select_option("postgresql")
    page.get_by_label("Host").fill(own_database["host"])
    page.get_by_label("Port").fill(own_database["port"])
    page.get_by_label("Database", exact=True).fill(own_database["database"])
    page.get_by_label("Login").fill(own_database["user"])
    page.get_by_label("Password").fill(own_database["password"])
    page.get_by_label("TLS").select_option("disable")
    page.get_by_role("button", name="Test and add").click()
    expect(page.locator("#database-status")).to_contain_text("Connected to stars")
    expect(page.get_by_label("Password")).to_have_value("")
    expect(page.get_by_role("list", name="Your databases").get_by_role("listitem")).to_have_count(1)
    expect(page.locator("#source")).to_have_value("stars")
    run_sql(page, f"SELECT name FROM {own_database['schema']}.stars ORDER BY name")
    expect(page.get_by_role("status")).to_have_text("3 rows")
    grid = page.get_by_role("grid", name="Query result")
    expect(grid.locator('[role="row"][aria-rowindex="2"]').get_by_role("gridcell")).to_have_text(["Sirius"])
    page.get_by_role("button", name="Remove database stars").click()
    expect(page.get_by_role("list", name="Your databases").get_by_role("listitem")).to_have_count(0)
    expect(page.locator("#source")).to_have_value("default")
