"""The gateway's handlers in-process: `create_app(config)` under pytest-aiohttp's client, with the
session and query services started in this process by their own factories, on the test NATS and Redis.

The same code as the real-process system tests (tests/test_e2e.py) runs here without process
start-ups, so these tests take milliseconds; signals, restarts and outages stay with the system tests.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import msgpack
import pytest
import redis.asyncio as aioredis
from aiohttp.test_utils import TestClient

from services.gateway.app import create_app
from services.gateway.config import GatewayConfig
from services.session.config import SessionConfig
from services.session.service import create_service as create_session_service
from tests.client import events
from tests.conftest import Infra, InProcess, inprocess_services

Client = TestClient[Any, Any]
ClientFactory = Callable[..., Awaitable[Client]]


@pytest.fixture(scope="module")
async def services(infra: Infra, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[InProcess]:
    sample: Path = tmp_path_factory.mktemp("inprocess") / "sample.db"
    async with inprocess_services(infra, QUERY_SAMPLE_PATH=str(sample)) as running:
        yield running


@pytest.fixture
async def client(services: InProcess, aiohttp_client: ClientFactory) -> Client:
    # Sec-Fetch-Site as a browser sends it on its own pages' requests (the CSRF check needs it).
    return await aiohttp_client(create_app(GatewayConfig.from_env(services.env)), headers={"Sec-Fetch-Site": "same-origin"})


async def login(client: Client) -> None:
    async with client.post("/auth/login", json={"email": "ada@example.com", "name": "Ada"}) as response:
        assert response.status == 200, await response.text()


async def sid_of(client: Client) -> str:
    return next(cookie.value for cookie in client.session.cookie_jar if cookie.key == "session")


async def test_login_me_and_logout_keep_the_flask_session_map_in_redis(client: Client, infra: Infra) -> None:
    async with client.get("/api/me") as response:
        assert response.status == 401
        assert (await response.json())["error"]["code"] == "unauthorized"
    async with client.post("/auth/login", json={"email": "ada@example.com", "name": "Ada"}) as response:
        assert response.status == 200
        body = await response.json()
    sid = await sid_of(client)
    store = aioredis.Redis.from_url(infra.redis_url)
    try:
        assert msgpack.unpackb(await store.get(f"session:{sid}")) == {"_permanent": True, "user": body["user"], "conversation_id": body["conversation_id"]}
        async with client.get("/api/me") as response:
            assert response.status == 200
            assert await response.json() == body
        async with client.post("/auth/logout") as response:
            assert response.status == 200
        assert await store.exists(f"session:{sid}") == 0
    finally:
        await store.aclose()
    async with client.get("/api/me") as response:
        assert response.status == 401


async def test_a_query_streams_preview_rows_and_end_through_the_in_process_query_service(client: Client) -> None:
    await login(client)
    sql = "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 300) SELECT i FROM n"
    async with client.post("/api/query", json={"sql": sql}) as response:
        assert response.status == 200
        parts = [part async for part in events(response)]
    kinds = [part if part == "[DONE]" else part["type"] for part in parts]
    assert kinds[:3] == ["start", "start-step", "tool-input-available"]
    assert kinds[-3:] == ["finish-step", "finish", "[DONE]"]
    rows = [row for part in parts if part != "[DONE]" and part["type"] == "data-query-rows" for row in part["data"]["rows"]]
    assert rows == [[i] for i in range(1, 301)]
    final = [part for part in parts if part != "[DONE]" and part["type"] == "tool-output-available"][-1]
    assert final["output"]["row_count"] == 300 and final["output"]["truncated"] is False


async def test_a_write_ends_in_a_tool_output_error_without_a_traceback(client: Client) -> None:
    await login(client)
    async with client.post("/api/query", json={"sql": "DELETE FROM customers"}) as response:
        assert response.status == 200
        parts = [part async for part in events(response)]
    errors = [part for part in parts if part != "[DONE]" and part["type"] == "tool-output-error"]
    assert len(errors) == 1 and errors[0]["errorText"] and "Traceback" not in errors[0]["errorText"]


@pytest.mark.parametrize(
    ("body", "content_type", "status", "code"),
    [
        (b"{not json", "application/json", 400, "bad_request"),
        (b'{"sql": 5}', "application/json", 400, "bad_request"),
        (b"sql=SELECT 1", "application/x-www-form-urlencoded", 415, "unsupported_media_type"),
    ],
)
async def test_a_malformed_query_body_gets_a_json_error(client: Client, body: bytes, content_type: str, status: int, code: str) -> None:
    await login(client)
    async with client.post("/api/query", data=body, headers={"Content-Type": content_type}) as response:
        assert response.status == status
        assert (await response.json())["error"]["code"] == code


async def test_readyz_sees_the_in_process_session_and_query_replicas(client: Client) -> None:
    async with client.get("/readyz") as response:
        assert response.status == 200
        assert (await response.json())["checks"] == {"accepting": True, "nats": True, "session": True, "query": True}


async def test_a_drained_session_service_is_not_ready_and_takes_no_more_calls(infra: Infra) -> None:
    prefix = f"i{uuid.uuid4().hex[:10]}"
    config = SessionConfig.from_env({"NATS_URL": infra.nats_url, "NATS_SUBJECT_PREFIX": prefix, "REDIS_URL": infra.redis_url, "SESSION_KV_BUCKET": f"sessions_{prefix}", "OPS_PORT": "0"})
    async with create_session_service(config) as service:
        assert await service.readiness() == {"accepting": True, "nats": True}
        await service.drain()
        assert await service.readiness() == {"accepting": False, "nats": True}
        assert service.server.in_flight == 0
