"""`python -m bench.web`: the web app in a real browser reading a 1,000,000-row x 5-column result, beside a raw HTTP client.

One run, on Debian's Chromium (chromium-headless-shell, or CHROMIUM_PATH) driven by Playwright,
with nats-server, session, query and gateway processes running here:

- Run -> first rows painted: from the Run click to the first frame in which the grid drew rows
  (the page's `query-run` and `query-first-rows` performance marks);
- Run -> all rows received: to the `query-done` mark, after the last row is stored;
- the tab's JS heap after all rows, after a garbage collection (CDP `Runtime.getHeapUsage`;
  goal < 300 MB), and before it;
- beside them, the same query read by the bench's raw HTTP client (bench.query.stream_query):
  time to the preview and to the last row;
- chart draw time of each chart type on the 1,000,000-row result (the page's `chart-draw`
  measure), beside the same chart of a 1,000-row result;
- the schema panel at 500 tables (tests/web_support.make_big_schema): open -> table list painted
  and open -> every foreign key loaded, beside the same for the 4-table sample database.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp

from bench.query import build_sqlite, login, stream_query
from bench.stack import http_ok, running_stack
from tests.harness import wait_until
from tests.web_support import BIG_TABLES, chromium_path, ensure_built, launch_args, make_big_schema

TARGET_HEAP_MB = 300.0
SQL = "SELECT id, qty, price, name, created FROM t"
SMALL_ROWS = 1000
CHART_TYPES = ("bar", "line", "area", "scatter", "pie")


async def raw_client(base_url: str, rows: int) -> tuple[float, float]:
    """(ms to the preview, seconds to the last row) for POST /api/query read by aiohttp."""
    async with aiohttp.ClientSession(headers={"Origin": base_url}, cookie_jar=aiohttp.CookieJar(unsafe=True)) as http:
        await login(http, base_url)
        _, seconds, preview_ms = await stream_query(http, base_url, SQL, "bench_web", rows)
    return preview_ms, seconds


def in_browser(base_url: str, executable: str, rows: int) -> dict[str, float]:
    from playwright.sync_api import expect, sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(**launch_args(executable))
        try:
            page = browser.new_page(base_url=base_url, viewport={"width": 1400, "height": 900})
            page.goto("/")
            page.get_by_label("Email").fill("bench@example.com")
            page.get_by_label("Name").fill("Bench")
            page.get_by_label("Name").press("Enter")
            expect(page.get_by_text("Signed in as Bench")).to_be_visible()
            page.get_by_role("region", name="SQL editor").get_by_label("Source").select_option("bench_web")
            editor = page.locator("#editor .cm-content")
            editor.fill(SQL)
            page.get_by_role("button", name="Run").click()
            expect(page.get_by_role("status")).to_have_text(f"{rows:,} rows", timeout=600_000)
            marks = page.evaluate("Object.fromEntries(performance.getEntriesByType('mark').map((m) => [m.name, m.startTime]))")
            cdp = page.context.new_cdp_session(page)
            before = cdp.send("Runtime.getHeapUsage")["usedSize"]
            cdp.send("HeapProfiler.collectGarbage")
            after = cdp.send("Runtime.getHeapUsage")["usedSize"]
            shown = page.get_by_role("grid", name="Query result").get_attribute("aria-rowcount")
            if shown != str(rows + 1):
                raise RuntimeError(f"the grid shows aria-rowcount={shown}, expected {rows + 1}")
            charts = chart_times(page)
            editor.fill(f"{SQL} LIMIT {SMALL_ROWS}")
            page.get_by_role("button", name="Run").click()
            expect(page.get_by_role("status")).to_have_text(f"{SMALL_ROWS:,} rows", timeout=60_000)
            small_charts = chart_times(page)
            schema = {source: schema_times(page, source) for source in ("default", "bench_schema")}
        finally:
            browser.close()
    return {
        "first_rows_ms": marks["query-first-rows"] - marks["query-run"],
        "all_rows_s": (marks["query-done"] - marks["query-run"]) / 1000,
        "heap_mb": after / 2**20,
        "heap_before_gc_mb": before / 2**20,
        "charts": charts,
        "small_charts": small_charts,
        "schema": schema,
    }


def chart_times(page: Any) -> dict[str, float]:
    """ms of the page's `chart-draw` measure for each chart type of the shown result (x: name, y: qty)."""
    from playwright.sync_api import expect

    page.get_by_label("X", exact=True).select_option("name")
    page.get_by_label("Y (numeric)").select_option("qty")
    times = {}
    for kind in CHART_TYPES:
        page.evaluate("performance.clearMeasures('chart-draw')")
        page.get_by_label("Type").select_option(kind)
        expect(page.locator("#chart").get_by_role("img")).to_have_attribute("aria-label", re.compile(f"^qty by name: {kind} chart"))
        times[kind] = page.evaluate("performance.getEntriesByName('chart-draw').at(-1).duration")
    return times


def schema_times(page: Any, source: str) -> tuple[float, float]:
    """(ms open -> table list painted, ms open -> every foreign key loaded) of the schema panel on `source`."""
    from playwright.sync_api import expect

    panel = page.locator("#schema-panel")
    if panel.get_attribute("open") is not None:
        panel.locator("summary").click()
    page.get_by_role("region", name="SQL editor").get_by_label("Source").select_option(source)
    page.evaluate("performance.clearMarks('schema-open'); performance.clearMarks('schema-first-paint'); performance.clearMarks('schema-keys-loaded')")
    panel.locator("summary").click()
    expect(panel).to_have_attribute("data-keys-loaded", "true", timeout=120_000)
    marks = page.evaluate("Object.fromEntries(performance.getEntriesByType('mark').map((m) => [m.name, m.startTime]))")
    return marks["schema-first-paint"] - marks["schema-open"], marks["schema-keys-loaded"] - marks["schema-open"]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.web", description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=int(os.environ.get("BENCH_WEB_ROWS", "1000000")), help="rows in the result (BENCH_WEB_ROWS)")
    args = p.parse_args(argv or [])
    executable = chromium_path()
    if executable is None:
        print("web bench: no Chromium (apt-get install chromium-headless-shell, or set CHROMIUM_PATH)", file=sys.stderr)
        return 1
    ensure_built()
    print(f"web bench: {args.rows:,} rows x 5 columns, {executable}, {os.cpu_count()} CPUs shared by everything", flush=True)
    workdir = Path(tempfile.mkdtemp(prefix="bench-web-"))
    build_sqlite(workdir / "bench.db", args.rows)
    make_big_schema(workdir / "schema.db")
    sources = {"bench_web": f"sqlite:///{workdir / 'bench.db'}", "bench_schema": f"sqlite:///{workdir / 'schema.db'}"}
    try:
        with running_stack(sources, workdir / "sample.db", {"QUERY_SCHEMA_MAX_TABLES": str(BIG_TABLES + 100)}) as stack:
            base_url = stack.base_url
            wait_until(lambda: http_ok(f"{base_url}/healthz"), timeout=30, what="the gateway")
            started = time.perf_counter()
            browser = in_browser(base_url, executable, args.rows)
            raw_preview_ms, raw_s = asyncio.run(raw_client(base_url, args.rows))
            print(f"  measured in {time.perf_counter() - started:.1f}s", flush=True)
    finally:
        for path in workdir.iterdir():
            path.unlink()
        workdir.rmdir()

    heap_ok = browser["heap_mb"] < TARGET_HEAP_MB
    print()
    print("| measure | browser (the page) | raw HTTP client |")
    print("| --- | ---: | ---: |")
    print(f"| Run -> first rows painted (raw: preview part) | {browser['first_rows_ms']:.0f} ms | {raw_preview_ms:.0f} ms |")
    print(f"| Run -> all {args.rows:,} rows received | {browser['all_rows_s']:.2f} s | {raw_s:.2f} s |")
    print(f"| rows/s | {args.rows / browser['all_rows_s']:,.0f} | {args.rows / raw_s:,.0f} |")
    print(f"| tab JS heap after all rows, after GC (goal < {TARGET_HEAP_MB:.0f} MB) | {browser['heap_mb']:.1f} MB {'ok' if heap_ok else 'MISSED'} | |")
    print(f"| tab JS heap before GC | {browser['heap_before_gc_mb']:.1f} MB | |")
    print()
    print(f"| chart (x: name, y: qty) | draw, {args.rows:,} rows | draw, {SMALL_ROWS:,} rows (baseline) |")
    print("| --- | ---: | ---: |")
    for kind in CHART_TYPES:
        print(f"| {kind} | {browser['charts'][kind]:.0f} ms | {browser['small_charts'][kind]:.0f} ms |")
    print()
    big, sample = browser["schema"]["bench_schema"], browser["schema"]["default"]
    print(f"| schema panel | {BIG_TABLES} tables | 4 tables (sample, baseline) |")
    print("| --- | ---: | ---: |")
    print(f"| open -> table list painted | {big[0]:.0f} ms | {sample[0]:.0f} ms |")
    print(f"| open -> every foreign key loaded | {big[1]:.0f} ms | {sample[1]:.0f} ms |")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
