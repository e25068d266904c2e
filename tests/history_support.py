"""Shared pieces of the history tests: a private Redis, two session replicas, a query service, and chat turns by id."""

from __future__ import annotations

import io
import json
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest
import redis

from tests import fake_llm
from tests.chat_support import API_KEY, Turn, parse_sse
from tests.conftest import Infra, System
from tests.fake_llm import FakeLLM
from tests.harness import RedisServer, Service

MAX_MESSAGES = 8
MAX_MESSAGE_BYTES = 16384


@dataclass
class Stack:
    """Session replicas (two), a query service on the sample SQLite database, one NATS, one Redis of their own."""

    system: System
    redis_server: RedisServer
    sessions: list[Service] = field(default_factory=list)

    @property
    def redis(self) -> redis.Redis:
        return redis.Redis.from_url(self.redis_server.url)

    def gateway_env(self, fake: FakeLLM, **extra: str) -> dict[str, str]:
        return {
            "NATS_URL": self.system.nats_url,
            "NATS_SUBJECT_PREFIX": self.system.prefix,
            "LLM_BASE_URL": fake.base_url,
            "LLM_MODEL": fake_llm.MODEL,
            "LLM_API_KEY": API_KEY,
            "CHAT_QUOTA_PER_MINUTE": "0",
            **extra,
        }

    def stop(self) -> dict[str, int]:
        codes = {f"session{i}": s.stop() for i, s in enumerate(self.sessions)}
        codes.update(self.system.stop())
        return codes


def build_stack(infra: Infra, redis_server: RedisServer, sample_path: str) -> Stack:
    prefix = f"h{uuid.uuid4().hex[:10]}"
    env = {
        "NATS_URL": infra.nats_url,
        "NATS_SUBJECT_PREFIX": prefix,
        "REDIS_URL": redis_server.url,
        "SESSION_KV_BUCKET": f"sessions_{prefix}",
        "QUERY_SAMPLE_PATH": sample_path,
        "CONVERSATION_MAX_MESSAGES": str(MAX_MESSAGES),
        "CONVERSATION_MAX_MESSAGE_BYTES": str(MAX_MESSAGE_BYTES),
    }
    stack = Stack(System(infra.nats_url, redis_server.url, prefix, 0, env), redis_server)
    try:
        for _ in range(2):
            stack.sessions.append(Service("session", stack.system.service_env("session")).start())
        stack.system.start("query")
    except BaseException:
        stack.stop()
        raise
    return stack


@pytest.fixture(scope="module", name="stack")
def stack_fixture(infra: Infra, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    server = RedisServer().start()
    built = build_stack(infra, server, str(tmp_path_factory.mktemp("history") / "sample.db"))
    try:
        yield built
    finally:
        codes = built.stop()
        server.stop()
    assert all(code == 0 for code in codes.values()), f"services did not stop cleanly: {codes}"


@pytest.fixture(name="fake")
async def fake_fixture() -> AsyncIterator[FakeLLM]:
    server = await FakeLLM().start()
    yield server
    await server.stop()


def user(text: str) -> dict[str, Any]:
    return {"id": f"u_{uuid.uuid4().hex[:12]}", "role": "user", "parts": [{"type": "text", "text": text}]}


async def send(client: aiohttp.ClientSession, body: dict[str, Any]) -> Turn:
    """POST /api/chat with this body (as useChat with prepareSendMessagesRequest sends it)."""
    data = io.BytesIO(json.dumps(body).encode())
    async with client.post("/api/chat", data=data, headers={"Content-Type": "application/json"}) as response:
        if response.status != 200:
            return Turn(response.status, dict(response.headers), [], b"", await response.json())
        raw = await response.read()
        return Turn(response.status, dict(response.headers), parse_sse(raw), raw)


async def ask(client: aiohttp.ClientSession, cid: str, message: dict[str, Any], **extra: Any) -> Turn:
    return await send(client, {"id": cid, "message": message, "trigger": "submit-message", **extra})


async def stored(client: aiohttp.ClientSession, cid: str) -> tuple[int, Any]:
    async with client.get(f"/api/conversations/{cid}") as response:
        return response.status, await response.json()


def commandstats(client: redis.Redis) -> dict[str, int]:
    return {name.removeprefix("cmdstat_"): int(v["calls"]) for name, v in client.info("commandstats").items()}
