"""How the gateway serves the web app: the page and its hashed assets, caching, the security headers and CSP, and the page's JSON.

The gateway is built by its factory and served on loopback; session and query services run
as processes. The page must be built (`make web`; the tests build it when it is missing).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path

import pytest

from services.gateway import webapp
from services.gateway.config import GatewayConfig
from shared.errors import ConfigError
from tests.auth_issuer import running_gateway
from tests.client import browser, login
from tests.conftest import Infra, System, running_system
from tests.harness import ROOT
from tests.web_support import STATIC, WEB, ensure_built, require_chromium

FIREBASE_WEB = {"apiKey": "AIzaSyTest-key", "authDomain": "dbgenie-test.firebaseapp.com", "projectId": "dbgenie-test", "appId": "1:2:web:3"}
HASHED = re.compile(r"^/assets/[a-z]+-[A-Z0-9]{8}\.(js|css)$")


@pytest.fixture(scope="module")
def services(infra: Infra) -> Iterator[System]:
    ensure_built()
    with running_system(infra, "w", start=("session", "query")) as system:
        yield system


class PageScan(HTMLParser):
    """What index.html holds that a CSP could object to: scripts with a body, style elements and attributes, handlers."""

    def __init__(self) -> None:
        super().__init__()
        self.scripts: list[dict[str, str | None]] = []
        self.stylesheets: list[str] = []
        self.inline: list[str] = []
        self._in_script = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        named = dict(attrs)
        if tag == "script":
            self.scripts.append(named)
            self._in_script = True
        if tag == "style":
            self.inline.append("<style>")
        if tag == "link" and named.get("rel") == "stylesheet":
            self.stylesheets.append(named.get("href") or "")
        self.inline += [f"{tag} {name}" for name, _ in attrs if name == "style" or name.startswith("on")]

    def handle_endtag(self, tag: str) -> None:
        self._in_script = False if tag == "script" else self._in_script

    def handle_data(self, data: str) -> None:
        if self._in_script and data.strip():
            self.inline.append("script body")


def csp(header: str) -> dict[str, list[str]]:
    return {name: values for name, *values in (part.split() for part in header.split(";") if part.strip())}


async def test_the_page_names_hashed_assets_and_has_no_inline_script_or_style(services: System) -> None:
    async with running_gateway(services.env) as url, browser(url) as client, client.get("/") as response:
        assert response.status == 200
        assert response.content_type == "text/html"
        assert response.headers["Cache-Control"] == "no-cache"
        scan = PageScan()
        scan.feed(await response.text())
    assert scan.inline == []
    assert [s.get("type") for s in scan.scripts] == ["module"]
    assert all(HASHED.match(s.get("src") or "") for s in scan.scripts), scan.scripts
    assert all(HASHED.match(href) for href in scan.stylesheets) and scan.stylesheets


async def test_every_built_asset_is_served_immutable_and_names_outside_assets_are_not(services: System) -> None:
    built = json.loads((STATIC / "manifest.json").read_text())["files"]
    assert any(name.endswith(".js") for name in built) and any(name.endswith(".css") for name in built)
    async with running_gateway(services.env) as url, browser(url) as client:
        for name in built:
            async with client.get(name) as response:
                assert response.status == 200, name
                assert response.headers["Cache-Control"] == "public, max-age=31536000, immutable"
                assert response.headers["X-Content-Type-Options"] == "nosniff"
                assert (await response.read()) == (STATIC / name.removeprefix("/")).read_bytes()
        for bad in ("/assets/nope-12345678.js", "/assets/..%2Fmanifest.json", "/assets/.hidden", "/assets/%2e%2e%2findex.html"):
            async with client.get(bad) as response:
                assert response.status == 404, bad
                assert (await response.json())["error"]["code"] == "not_found"


async def test_scripts_and_styles_go_compressed_to_browsers_that_accept_it(services: System) -> None:
    built = [name for name in json.loads((STATIC / "manifest.json").read_text())["files"] if name.endswith((".js", ".css"))]
    async with running_gateway(services.env) as url, browser(url) as client:
        for name in built:
            async with client.get(name, headers={"Accept-Encoding": "gzip"}) as response:
                assert response.headers["Content-Encoding"] == "gzip", name
                assert response.headers["Vary"] == "Accept-Encoding"
                assert response.headers["Cache-Control"] == "public, max-age=31536000, immutable"
                assert await response.read() == (STATIC / name.removeprefix("/")).read_bytes()  # aiohttp decompressed it
            async with client.get(name, headers={"Accept-Encoding": "identity"}) as response:
                assert "Content-Encoding" not in response.headers


async def test_every_response_carries_a_strict_csp_and_the_security_headers(services: System) -> None:
    async with running_gateway(services.env) as url, browser(url) as client:
        for path, status in (("/", 200), ("/auth/config", 200), ("/api/me", 401), ("/no/such/page", 404)):
            async with client.get(path) as response:
                assert response.status == status, path
                headers = response.headers
                policy = csp(headers["Content-Security-Policy"])
                assert policy["default-src"] == ["'none'"]
                assert policy["script-src"] == ["'self'"]
                assert policy["style-src"] == ["'self'"]
                assert policy["connect-src"] == ["'self'"]
                assert policy["frame-ancestors"] == ["'none'"]
                assert not any("unsafe" in value or value == "*" for values in policy.values() for value in values)
                assert headers["X-Content-Type-Options"] == "nosniff"
                assert headers["X-Frame-Options"] == "DENY"
                assert headers["Referrer-Policy"] == "same-origin"
                assert headers["Cross-Origin-Opener-Policy"] == "same-origin"


async def test_the_page_learns_the_dev_sign_in_and_lists_the_sources_once_signed_in(services: System) -> None:
    async with running_gateway(services.env) as url, browser(url) as client:
        async with client.get("/auth/config") as response:
            assert await response.json() == {"auth_mode": "dev", "firebase": None, "chat": False, "signed_in": False, "connections": False}
        async with client.get("/api/sources") as response:
            assert response.status == 401
        await login(client)
        async with client.get("/api/sources") as response:
            assert response.status == 200
            assert await response.json() == {"sources": [{"name": "default", "dialect": "sqlite", "role": None, "kind": "operator"}], "default": "default", "connections": False}


async def test_under_firebase_the_page_gets_the_web_config_and_the_csp_lets_google_sign_in_through(services: System) -> None:
    env = {**services.env, "AUTH_MODE": "firebase", "FIREBASE_PROJECT_ID": "dbgenie-test", "FIREBASE_WEB_CONFIG": json.dumps(FIREBASE_WEB)}
    async with running_gateway(env) as url, browser(url) as client, client.get("/auth/config") as response:
        assert await response.json() == {"auth_mode": "firebase", "firebase": FIREBASE_WEB, "chat": False, "signed_in": False, "connections": False}
        policy = csp(response.headers["Content-Security-Policy"])
    assert policy["script-src"] == ["'self'", "https://apis.google.com"]
    assert "https://identitytoolkit.googleapis.com" in policy["connect-src"] and "https://securetoken.googleapis.com" in policy["connect-src"]
    assert "https://dbgenie-test.firebaseapp.com" in policy["frame-src"]
    assert response.headers["Cross-Origin-Opener-Policy"] == "same-origin-allow-popups"
    assert not any("unsafe" in value for values in policy.values() for value in values)


@pytest.mark.parametrize(
    ("raw", "says"),
    [
        ("not json", "must be the Firebase web app's config as JSON"),
        ("[1, 2]", "must be a JSON object of strings"),
        (json.dumps({**FIREBASE_WEB, "apiKey": ""}), "needs apiKey"),
        (json.dumps({k: v for k, v in FIREBASE_WEB.items() if k != "authDomain"}), "needs authDomain"),
        (json.dumps({**FIREBASE_WEB, "authDomain": "evil.example'; script-src *"}), "authDomain must be a host name"),
        (json.dumps({**FIREBASE_WEB, "projectId": "someone-else"}), "is not FIREBASE_PROJECT_ID"),
        (json.dumps({**FIREBASE_WEB, "extra": "x"}), "unknown keys ['extra']"),
    ],
)
def test_a_bad_firebase_web_config_stops_the_gateway_at_start_naming_the_variable(raw: str, says: str) -> None:
    env = {"NATS_URL": "nats://127.0.0.1:4222", "AUTH_MODE": "firebase", "FIREBASE_PROJECT_ID": "dbgenie-test", "FIREBASE_WEB_CONFIG": raw}
    with pytest.raises(ConfigError, match="FIREBASE_WEB_CONFIG") as caught:
        GatewayConfig.from_env(env)
    assert says in str(caught.value)


async def test_an_unbuilt_page_is_a_clear_503_not_a_crash(services: System, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(webapp, "STATIC_DIR", tmp_path)
    async with running_gateway(services.env) as url, browser(url) as client, client.get("/") as response:
        assert response.status == 503
        assert "make web" in (await response.json())["error"]["message"]


def web_sources() -> list[Path]:
    return [WEB / "package.json", WEB / "package-lock.json", WEB / "build.mjs", *sorted((WEB / "src").iterdir())]


@pytest.mark.parametrize("source", web_sources(), ids=lambda p: str(p.relative_to(WEB)))
def test_make_rebuilds_the_page_when_any_of_its_sources_changes(source: Path) -> None:
    """`make -n -W <file>`: what make would run if that file had just changed (nothing is touched)."""
    ensure_built()
    found = shutil.which("make")
    assert found is not None, "make is required"
    target = str((STATIC / "index.html").relative_to(ROOT))
    # -o: leave the venv's install stamp alone (a checkout may leave it older than pyproject.toml).
    make = [found, "-o", ".venv/.installed"]
    up_to_date = subprocess.run([*make, "-q", target], cwd=ROOT, capture_output=True, text=True)
    assert up_to_date.returncode == 0, up_to_date.stdout + up_to_date.stderr
    would = subprocess.run([*make, "-n", "-W", str(source.relative_to(ROOT)), target], cwd=ROOT, capture_output=True, text=True, check=True)
    assert "scripts/build_web.py" in would.stdout


@pytest.mark.parametrize(("ci", "outcome"), [("true", pytest.fail.Exception), ("", pytest.skip.Exception)])
def test_a_missing_browser_fails_the_browser_tests_under_ci_and_skips_them_elsewhere(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, ci: str, outcome: type[BaseException]) -> None:
    monkeypatch.setenv("CHROMIUM_PATH", str(tmp_path / "no-such-chromium"))
    monkeypatch.setenv("CI", ci)
    with pytest.raises(outcome, match="apt-get install chromium-headless-shell"):
        require_chromium()


def test_the_browser_is_found_through_chromium_path(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    binary = tmp_path / "my-chromium"
    binary.write_text("")
    monkeypatch.setenv("CHROMIUM_PATH", str(binary))
    assert require_chromium() == str(binary)
