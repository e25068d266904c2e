"""CSRF: state-changing requests authenticated by the cookie need the gateway's own (or an allowed) Origin.

Refusals are checked by effect: the session in Redis is exactly as it was.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager

import msgspec
import pytest
import redis

from tests.auth_issuer import Issuer, gateway_env, running_gateway, running_issuer, session_service
from tests.client import browser
from tests.conftest import Infra, System

EVIL = "https://evil.example"


@pytest.fixture(scope="module")
def sessions(infra: Infra) -> Iterator[System]:
    yield from session_service(infra)


@pytest.fixture
def store(sessions: System) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(sessions.redis_url or "")
    yield client
    client.close()


@asynccontextmanager
async def signed_in(sessions: System, **env: str) -> AsyncIterator[tuple[str, str, Issuer]]:
    """A gateway, and a session opened on it by a same-origin login: yields (url, sid, issuer)."""
    async with running_issuer() as issuer, running_gateway(gateway_env(sessions, issuer, **env)) as url:
        async with browser(url, origin=env.get("PUBLIC_ORIGIN", "same")) as client, client.post("/auth/login", json={"idToken": issuer.token()}) as response:
            assert response.status == 200, await response.text()
            sid = next(c.value for c in client.cookie_jar if c.key == "session")
        yield url, sid, issuer


def session_of(store: redis.Redis, sid: str) -> dict | None:
    raw = store.get(f"session:{sid}")
    return None if raw is None else msgspec.msgpack.decode(raw)


async def post(url: str, sid: str | None, path: str, *, origin: str | None, headers: dict[str, str] | None = None, json: object = None) -> tuple[int, dict]:
    async with browser(url, origin=origin) as client:
        if sid is not None:
            client.cookie_jar.update_cookies({"session": sid})
        async with client.post(path, headers=headers or {}, json=json) as response:
            body = await response.json() if response.content_type == "application/json" else {}
            return response.status, body


@pytest.mark.parametrize("path", ["/api/conversations", "/api/query", "/auth/logout"])
async def test_a_cross_origin_post_with_the_cookie_is_refused_and_changes_nothing(sessions: System, store: redis.Redis, path: str) -> None:
    async with signed_in(sessions) as (url, sid, _):
        before = session_of(store, sid)
        status, body = await post(url, sid, path, origin=EVIL, json={"sql": "SELECT 1"})
        assert status == 403 and body["error"]["code"] == "forbidden"
        assert session_of(store, sid) == before


async def test_a_same_origin_post_is_accepted(sessions: System, store: redis.Redis) -> None:
    async with signed_in(sessions) as (url, sid, _):
        before = session_of(store, sid)
        status, body = await post(url, sid, "/api/conversations", origin="same")
        assert status == 200, body
        assert session_of(store, sid)["conversation_id"] == body["conversation_id"] != before["conversation_id"]
        status, _ = await post(url, sid, "/auth/logout", origin="same")
        assert status == 200 and session_of(store, sid) is None


@pytest.mark.parametrize(
    ("headers", "allowed"),
    [({"Sec-Fetch-Site": "same-origin"}, True), ({}, False), ({"Sec-Fetch-Site": "cross-site"}, False), ({"Sec-Fetch-Site": "same-site"}, False)],
    ids=["same-origin", "no header", "cross-site", "same-site"],
)
async def test_without_origin_only_sec_fetch_site_same_origin_passes(sessions: System, store: redis.Redis, headers: dict, allowed: bool) -> None:
    async with signed_in(sessions) as (url, sid, _):
        before = session_of(store, sid)
        status, _ = await post(url, sid, "/api/conversations", origin=None, headers=headers)
        assert status == (200 if allowed else 403)
        assert (session_of(store, sid) != before) is allowed


async def test_allowed_origins_and_public_origin_are_accepted(sessions: System, store: redis.Redis) -> None:
    env = {"ALLOWED_ORIGINS": "https://app.example.com, http://localhost:3000", "PUBLIC_ORIGIN": "https://dbgenie.example.com"}
    async with signed_in(sessions, **env) as (url, sid, _):
        for origin in ("https://app.example.com", "https://APP.example.com:443", "http://localhost:3000", "https://dbgenie.example.com"):
            status, body = await post(url, sid, "/api/conversations", origin=origin)
            assert status == 200, (origin, body)
        # With PUBLIC_ORIGIN set, the Host the request came to no longer counts.
        status, _ = await post(url, sid, "/api/conversations", origin="same")
        assert status == 403


async def test_forwarded_host_and_proto_count_only_from_trusted_proxies(sessions: System) -> None:
    forwarded = {"X-Forwarded-Proto": "https", "X-Forwarded-Host": "dbgenie.example.com"}
    async with signed_in(sessions) as (url, sid, _):
        status, _ = await post(url, sid, "/api/conversations", origin="https://dbgenie.example.com", headers=forwarded)
        assert status == 403, "X-Forwarded-* from a peer that is not a trusted proxy must be ignored"
    async with signed_in(sessions, TRUSTED_PROXIES="127.0.0.0/8") as (url, sid, _):
        status, body = await post(url, sid, "/api/conversations", origin="https://dbgenie.example.com", headers=forwarded)
        assert status == 200, body


async def test_a_login_from_a_foreign_origin_is_refused(sessions: System, store: redis.Redis) -> None:
    async with running_issuer() as issuer, running_gateway(gateway_env(sessions, issuer)) as url:
        before = {key for key in store.scan_iter(match="session:*")}
        status, body = await post(url, None, "/auth/login", origin=EVIL, json={"idToken": issuer.token()})
        assert status == 403 and body["error"]["code"] == "forbidden"
        assert {key for key in store.scan_iter(match="session:*")} == before
        # A script without Origin (curl) may sign in.
        status, body = await post(url, None, "/auth/login", origin=None, json={"idToken": issuer.token()})
        assert status == 200, body


async def test_bearer_requests_are_exempt_and_leave_the_cookie_session_alone(sessions: System, store: redis.Redis) -> None:
    async with signed_in(sessions) as (url, sid, issuer):
        before = session_of(store, sid)
        status, body = await post(url, sid, "/api/conversations", origin=EVIL, headers={"Authorization": f"Bearer {issuer.token()}"})
        assert status == 200, body
        assert session_of(store, sid) == before, "a bearer request does not write the cookie's session"


async def test_reads_are_not_checked(sessions: System) -> None:
    async with signed_in(sessions) as (url, sid, _), browser(url, origin=EVIL) as client:
        client.cookie_jar.update_cookies({"session": sid})
        async with client.get("/api/me") as me:
            assert me.status == 200
