"""Shared pieces of the chat tests: a read-only PostgreSQL source, the session and query services, and an in-process gateway.

The gateway is built by its factory (`create_app`) in the test's loop and talks to the fake
model (tests/fake_llm.py) through the real openai SDK; session and query run as processes.
"""

from __future__ import annotations

import contextlib
import io
import json
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import aiohttp
import asyncpg
import pytest
from aiohttp import web

from services.gateway.app import create_app
from services.gateway.config import GatewayConfig
from tests.client import browser, login
from tests.conftest import Databases, Infra, System
from tests.fake_llm import FakeLLM
from tests.harness import free_port

API_KEY = "sk-test-" + uuid.uuid4().hex
BIG_ROWS = 100_000


@dataclass
class PgSource:
    """A schema of our own in the shared PostgreSQL, readable by a role of our own that can do nothing else."""

    admin_url: str
    schema: str
    role: str

    @property
    def url(self) -> str:
        parts = urlsplit(self.admin_url)
        netloc = f"{self.role}@{parts.hostname}" + (f":{parts.port}" if parts.port else "")
        return urlunsplit(parts._replace(netloc=netloc))


async def create_pg_source(admin_url: str) -> PgSource:
    suffix = uuid.uuid4().hex[:10]
    source = PgSource(admin_url, f"chat_{suffix}", f"chat_ro_{suffix}")
    s, r = source.schema, source.role
    conn = await asyncpg.connect(admin_url)
    try:
        await conn.execute(f"CREATE SCHEMA {s}")
        await conn.execute(f"CREATE TABLE {s}.customers (id int PRIMARY KEY, name text NOT NULL, country text)")
        await conn.execute(f"CREATE TABLE {s}.orders (id int PRIMARY KEY, customer_id int NOT NULL REFERENCES {s}.customers(id), amount numeric(10,2), placed date)")
        await conn.execute(f"CREATE TABLE {s}.big (id int8 PRIMARY KEY, label text)")
        await conn.execute(f"INSERT INTO {s}.customers VALUES (1, 'Ada', 'UK'), (2, 'Grace', 'US'), (3, 'Linus', 'FI')")
        await conn.execute(f"INSERT INTO {s}.orders SELECT g, 1 + g % 3, g * 10.5, date '2024-01-01' + g FROM generate_series(1, 30) g")
        await conn.execute(f"INSERT INTO {s}.big SELECT g, 'row ' || g FROM generate_series(1, {BIG_ROWS}) g")
        await conn.execute(f"CREATE ROLE {r} LOGIN")
        await conn.execute(f"GRANT USAGE ON SCHEMA {s} TO {r}")
        await conn.execute(f"GRANT SELECT ON ALL TABLES IN SCHEMA {s} TO {r}")
        await conn.execute(f"ALTER ROLE {r} SET search_path = {s}")
    finally:
        await conn.close()
    return source


async def drop_pg_source(source: PgSource) -> None:
    conn = await asyncpg.connect(source.admin_url)
    try:
        # End our role's sessions (the query service's pool) so that the role can go.
        await conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = $1", source.role)
        await conn.execute(f"DROP SCHEMA IF EXISTS {source.schema} CASCADE")
        await conn.execute(f"DROP ROLE IF EXISTS {source.role}")
    finally:
        await conn.close()


async def pg_active(admin_url: str, marker: str) -> int:
    conn = await asyncpg.connect(admin_url)
    try:
        return await conn.fetchval("SELECT count(*) FROM pg_stat_activity WHERE query LIKE $1 AND state <> 'idle' AND pid <> pg_backend_pid()", f"%{marker}%")
    finally:
        await conn.close()


@pytest.fixture(scope="module", name="pg_source")
async def pg_source_fixture(databases: Databases) -> AsyncIterator[PgSource]:
    source = await create_pg_source(databases.postgres)
    yield source
    await drop_pg_source(source)


@pytest.fixture(scope="module", name="services")
def services_fixture(infra: Infra, pg_source: PgSource, tmp_path_factory: pytest.TempPathFactory) -> Iterator[System]:
    """Session and query services; the query service has the sample SQLite database (default) and `pg`."""
    prefix = f"c{uuid.uuid4().hex[:10]}"
    sample = tmp_path_factory.mktemp("chat") / "sample.db"
    env = {
        "NATS_URL": infra.nats_url,
        "NATS_SUBJECT_PREFIX": prefix,
        "REDIS_URL": infra.redis_url,
        "SESSION_KV_BUCKET": f"sessions_{prefix}",
        "QUERY_SOURCES": f"pg={pg_source.url}",
        "QUERY_SAMPLE_PATH": str(sample),
    }
    system = System(infra.nats_url, infra.redis_url, prefix, 0, env)
    try:
        system.start("session")
        system.start("query")
        yield system
    finally:
        codes = system.stop()
    assert all(code == 0 for code in codes.values()), f"services did not stop cleanly: {codes}"


@contextlib.asynccontextmanager
async def gateway(env: dict[str, str]) -> AsyncIterator[str]:
    """The gateway app from its factory, served on a free loopback port; yields its base URL."""
    port = free_port()
    config = GatewayConfig.from_env({"GATEWAY_HOST": "127.0.0.1", "GATEWAY_PORT": str(port), "AUTH_MODE": "dev", **env})
    runner = web.AppRunner(create_app(config), access_log=None, shutdown_timeout=1.0)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", port)
    await site.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


def user_message(text: str, mid: str | None = None) -> dict[str, Any]:
    return {"id": mid or f"u_{uuid.uuid4().hex[:8]}", "role": "user", "parts": [{"type": "text", "text": text}]}


@dataclass
class Turn:
    status: int
    headers: dict[str, str]
    parts: list[Any]
    raw: bytes
    body: Any = None

    def types(self) -> list[str]:
        return [p if p == "[DONE]" else p["type"] for p in self.parts]

    def of(self, kind: str) -> list[dict[str, Any]]:
        return [p for p in self.parts if p != "[DONE]" and p["type"] == kind]

    def text(self) -> str:
        return "".join(p["delta"] for p in self.of("text-delta"))

    def rows(self) -> list[list[Any]]:
        rows: list[list[Any]] = []
        for part in self.of("data-query-rows"):
            assert part["data"]["offset"] == len(rows), "a rows part skipped or repeated rows"
            rows.extend(part["data"]["rows"])
        return rows


def parse_sse(raw: bytes) -> list[Any]:
    """Every event of a complete stream; each must be `data: ...` and end in a blank line."""
    assert raw.endswith(b"\n\n"), f"the stream ended inside an event: {raw[-80:]!r}"
    parts: list[Any] = []
    for event in raw[:-2].split(b"\n\n"):
        assert event.startswith(b"data: "), f"not a data event: {event[:80]!r}"
        payload = event[len(b"data: ") :]
        parts.append("[DONE]" if payload == b"[DONE]" else json.loads(payload))
    return parts


async def post_chat(client: aiohttp.ClientSession, messages: list[dict[str, Any]], **extra: Any) -> Turn:
    body = {"id": "chat-" + uuid.uuid4().hex[:8], "messages": messages, "trigger": "submit-message", **extra}
    # A stream, not bytes: aiohttp warns about large bytes bodies (histories with big tool outputs are).
    data = io.BytesIO(json.dumps(body).encode())
    async with client.post("/api/chat", data=data, headers={"Content-Type": "application/json"}) as response:
        if response.status != 200:
            return Turn(response.status, dict(response.headers), [], b"", await response.json())
        raw = await response.read()
        parts = parse_sse(raw)
        return Turn(response.status, dict(response.headers), parts, raw)


@contextlib.asynccontextmanager
async def signed_in(base_url: str) -> AsyncIterator[aiohttp.ClientSession]:
    """A browser signed in as a user of its own (so quotas of different tests never meet)."""
    async with browser(base_url) as client:
        await login(client, f"chat-{uuid.uuid4().hex[:10]}@example.com", "Chat Tester")
        yield client


async def started_fake(*replies: Any) -> FakeLLM:
    return await FakeLLM().then(*replies).start()
