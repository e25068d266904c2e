"""Shared pieces of the browser tests: finding Debian's Chromium, the pytest-playwright launch settings, the built page, axe-core.

Playwright drives Debian's `chromium-headless-shell` (found through CHROMIUM_PATH or on PATH)
rather than a browser it downloads. Under CI=true a missing browser fails the run; elsewhere
the browser tests are skipped with one message that says how to get it.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest

from tests.fake_llm import FakeLLM
from tests.harness import ROOT

WEB = ROOT / "services" / "gateway" / "web"
STATIC = ROOT / "services" / "gateway" / "static"
AXE = WEB / "node_modules" / "axe-core" / "axe.min.js"
BROWSER_NAMES = ("chromium-headless-shell", "chromium", "chromium-browser")
LAUNCH_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-dev-shm-usage"]
MISSING = "browser tests need Debian's Chromium: `apt-get install chromium-headless-shell` (as .ci/run does), or set CHROMIUM_PATH to a Chromium binary; under CI=true a missing browser fails the run"


def chromium_path() -> str | None:
    """CHROMIUM_PATH, else the first of BROWSER_NAMES on PATH."""
    given = os.environ.get("CHROMIUM_PATH")
    if given:
        return given if Path(given).is_file() else None
    return next((found for name in BROWSER_NAMES if (found := shutil.which(name))), None)


def require_chromium() -> str:
    """The browser's path; otherwise fail under CI=true, or skip the calling module elsewhere."""
    path = chromium_path()
    if path is None:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(MISSING, pytrace=False)
        pytest.skip(MISSING, allow_module_level=True)
    return path


def _newest_source() -> float:
    files = [WEB / "package.json", WEB / "package-lock.json", WEB / "build.mjs", *(WEB / "src").iterdir()]
    return max(path.stat().st_mtime for path in files)


def ensure_built() -> None:
    """Build the page as `make` would when a test is run without make and the build is missing or older than its sources."""
    index = STATIC / "index.html"
    if not index.exists() or index.stat().st_mtime < _newest_source() or not AXE.exists():
        subprocess.run([sys.executable, str(ROOT / "scripts" / "build_web.py")], cwd=ROOT, check=True, timeout=600)


def launch_args(executable: str) -> dict[str, Any]:
    return {"executable_path": executable, "args": LAUNCH_FLAGS, "headless": True}


def axe_violations(page: Any) -> list[dict[str, Any]]:
    """Run axe-core (npm, from the local file) on the page as it is; the violations, each with the nodes it names.

    The script is evaluated through the DevTools protocol, which the page's CSP does not govern.
    """
    page.evaluate(AXE.read_text())
    result = page.evaluate("axe.run(document, {resultTypes: ['violations']})")
    return [{"id": v["id"], "impact": v["impact"], "help": v["help"], "nodes": [n["target"] for n in v["nodes"]]} for v in result["violations"]]


class ThreadedFakeLLM:
    """tests/fake_llm.FakeLLM on an event loop of its own thread, for the synchronous Playwright tests.

    Script it with `then(...)` from the test; read `requests`, and `closed_set()` / `streaming_set()`
    (the fake's events, read across threads).
    """

    def __init__(self) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="fake-llm", daemon=True)
        self._thread.start()
        self.fake = asyncio.run_coroutine_threadsafe(FakeLLM().start(), self._loop).result(30)

    def _call(self, function: Any, *args: Any) -> Any:
        async def call() -> Any:
            return function(*args)

        return asyncio.run_coroutine_threadsafe(call(), self._loop).result(30)

    def then(self, *replies: Any) -> ThreadedFakeLLM:
        self._call(self.fake.then, *replies)
        return self

    def reset(self) -> None:
        """Forget what earlier tests left: their script, requests and events."""

        def clear() -> None:
            self.fake.script.clear()
            self.fake.requests.clear()
            self.fake.closed.clear()
            self.fake.streaming.clear()

        self._call(clear)

    def closed_set(self) -> bool:
        return self.fake.closed.is_set()

    def streaming_set(self) -> bool:
        return self.fake.streaming.is_set()

    @property
    def base_url(self) -> str:
        return self.fake.base_url

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self.fake.stop(), self._loop).result(30)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(30)
        self._loop.close()


BIG_TABLES = 500


def make_big_schema(path: Path, tables: int = BIG_TABLES) -> None:
    """A SQLite schema of `tables` tables t000, t001, ...: each (but the first) references the one before it and t000."""
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE t000 (id INTEGER PRIMARY KEY, name TEXT)")
        for i in range(1, tables):
            db.execute(f"CREATE TABLE t{i:03d} (id INTEGER PRIMARY KEY, prev_id INTEGER REFERENCES t{i - 1:03d}(id), root_id INTEGER REFERENCES t000(id), c{i:03d} TEXT)")
