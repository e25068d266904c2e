"""Recent queries: the session service keeps each user's last 50 queries per source in Redis; the page and the model's get_recent_queries read them."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis

from tests import fake_llm
from tests.chat_support import API_KEY, gateway, post_chat, user_message
from tests.client import browser, login, run_query
from tests.conftest import System, SystemFactory
from tests.fake_llm import FakeLLM
from tests.harness import RedisServer


@pytest.fixture
async def fake() -> AsyncIterator[FakeLLM]:
    server = await FakeLLM().start()
    yield server
    await server.stop()


async def recent(client, **params: str) -> dict:
    async with client.get("/api/recent-queries", params=params) as response:
        assert response.status == 200, await response.text()
        return await response.json()


async def test_queries_run_from_the_editor_are_kept_newest_first_without_repeats_per_user_and_source(system: System) -> None:
    email = f"recent-{uuid.uuid4().hex[:8]}@example.com"
    async with browser(system.url) as client, browser(system.url) as other:
        me = await login(client, email, "Recent")
        await login(other, f"other-{uuid.uuid4().hex[:8]}@example.com", "Other")
        for sql in ("SELECT 1", "SELECT 2", "SELECT 1", "SELECT 3"):
            response, _ = await run_query(client, sql)
            assert response.status == 200
        got = await recent(client)
        assert [q["sql"] for q in got["queries"]] == ["SELECT 3", "SELECT 1", "SELECT 2"]
        assert got["source"] == "default" and got["local"] is False
        assert got["queries"][0]["at"] >= got["queries"][1]["at"] >= got["queries"][2]["at"]
        # Another user sees none of them; a refused statement is not kept.
        assert (await recent(other))["queries"] == []
        response, parts = await run_query(client, "DELETE FROM customers")
        assert any(p != "[DONE]" and p.get("type") == "tool-output-error" for p in parts)
        assert [q["sql"] for q in (await recent(client, limit="2"))["queries"]] == ["SELECT 3", "SELECT 1"]
    uid = me["user"]["uid"]
    redis = aioredis.from_url(system.redis_url)
    try:
        assert await redis.zcard(f"recent:{uid}:default") == 3
        assert 0 < await redis.ttl(f"recent:{uid}:default")
    finally:
        await redis.aclose()


async def test_only_the_last_50_are_kept(system: System) -> None:
    async with browser(system.url) as client:
        await login(client, f"fifty-{uuid.uuid4().hex[:8]}@example.com", "Fifty")
        for i in range(55):
            response, _ = await run_query(client, f"SELECT {i} AS n")
            assert response.status == 200
        got = await recent(client)
    assert [q["sql"] for q in got["queries"]] == [f"SELECT {i} AS n" for i in range(54, 4, -1)]


@pytest.mark.parametrize("params", [{"limit": "0"}, {"limit": "51"}, {"limit": "x"}, {"source": "no such!"}])
async def test_bad_parameters_are_400(system: System, params: dict[str, str]) -> None:
    async with browser(system.url) as client:
        await login(client, f"bad-{uuid.uuid4().hex[:8]}@example.com", "Bad")
        async with client.get("/api/recent-queries", params=params) as response:
            assert response.status == 400
            assert (await response.json())["error"]["code"] == "bad_request"
    async with browser(system.url) as anonymous, anonymous.get("/api/recent-queries") as response:
        assert response.status == 401


async def test_the_model_reads_them_with_get_recent_queries(system: System, fake: FakeLLM) -> None:
    fake.then(fake_llm.tool_calls(("get_recent_queries", {"limit": 2})), fake_llm.text("You counted customers."))
    env = {"NATS_URL": system.nats_url, "NATS_SUBJECT_PREFIX": system.prefix, "LLM_BASE_URL": fake.base_url, "LLM_MODEL": fake_llm.MODEL, "LLM_API_KEY": API_KEY}
    async with gateway(env) as url, browser(url) as client:
        await login(client, f"tool-{uuid.uuid4().hex[:8]}@example.com", "Tool")
        for sql in ("SELECT COUNT(*) FROM products", "SELECT COUNT(*) FROM customers"):
            response, _ = await run_query(client, sql)
            assert response.status == 200
        turn = await post_chat(client, [user_message("What did I run?")])
    assert turn.status == 200
    [output] = [p["output"] for p in turn.of("tool-output-available")]
    assert [q["sql"] for q in output["queries"]] == ["SELECT COUNT(*) FROM customers", "SELECT COUNT(*) FROM products"]
    seen = json.loads(next(m["content"] for m in fake.requests[1]["messages"] if m["role"] == "tool"))
    assert seen["source"] == "default" and [q["sql"] for q in seen["queries"]] == [q["sql"] for q in output["queries"]]


async def test_while_redis_is_down_a_replica_keeps_them_in_its_memory_and_says_so(make_system: SystemFactory, redis_server: RedisServer) -> None:
    system = make_system(redis_url=redis_server.url)
    redis_server.kill()
    async with browser(system.url) as client:
        await login(client, f"outage-{uuid.uuid4().hex[:8]}@example.com", "Outage")
        for sql in ("SELECT 1", "SELECT 2", "SELECT 1"):
            response, _ = await run_query(client, sql)
            assert response.status == 200
        got = await recent(client)
    assert [q["sql"] for q in got["queries"]] == ["SELECT 1", "SELECT 2"]
    assert got["local"] is True
