"""The whole system end to end over HTTP: real gateway, session and query processes on real NATS and Redis."""

from __future__ import annotations

import msgpack
import pytest
import redis

from tests.client import browser, login, run_query
from tests.conftest import System, SystemFactory
from tests.metrics import family_names


def rows_of(parts: list) -> list[list]:
    rows: list[list] = []
    for part in parts:
        if part != "[DONE]" and part["type"] == "data-query-rows":
            assert part["data"]["offset"] == len(rows), "a rows part skipped or repeated rows"
            rows.extend(part["data"]["rows"])
    return rows


def types_of(parts: list) -> list[str]:
    return [part if part == "[DONE]" else part["type"] for part in parts]


def counting_sql(n: int) -> str:
    return f"WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < {n}) SELECT i, 'row ' || i AS label FROM n"


async def test_login_me_logout(system: System) -> None:
    async with browser(system.url) as client:
        async with client.get("/api/me") as response:
            assert response.status == 401
            assert (await response.json())["error"]["code"] == "unauthorized"
        async with client.post("/auth/login", json={"email": "ada@example.com", "name": "Ada", "picture": "https://p/a.png"}) as response:
            assert response.status == 200
            body = await response.json()
            cookie = response.headers["Set-Cookie"]
        assert body["user"]["email"] == "ada@example.com" and body["user"]["name"] == "Ada"
        assert set(body["user"]) == {"uid", "email", "name", "picture", "verified"}
        assert cookie.startswith("session=") and "HttpOnly" in cookie and "SameSite=Lax" in cookie and "Path=/" in cookie
        assert "Secure" not in cookie
        async with client.get("/api/me") as response:
            assert response.status == 200
            me = await response.json()
        assert me == body
        async with client.post("/auth/logout") as response:
            assert response.status == 200
        async with client.get("/api/me") as response:
            assert response.status == 401


async def test_session_bytes_in_redis_are_the_flask_session_map_with_ttl(system: System) -> None:
    async with browser(system.url) as client:
        body = await login(client, "grace@example.com", "Grace")
        sid = next(c.value for c in client.cookie_jar if c.key == "session")
    store = redis.Redis.from_url(system.redis_url)
    try:
        raw = store.get(f"session:{sid}")
        ttl = store.ttl(f"session:{sid}")
    finally:
        store.close()
    data = msgpack.unpackb(raw)
    assert data == {"_permanent": True, "user": body["user"], "conversation_id": body["conversation_id"]}
    assert 2678400 - 60 < ttl <= 2678400


async def test_login_rotates_the_sid_and_deletes_the_old_session(system: System) -> None:
    async with browser(system.url) as client:
        await login(client)
        first = next(c.value for c in client.cookie_jar if c.key == "session")
        await login(client)
        second = next(c.value for c in client.cookie_jar if c.key == "session")
    assert first != second
    async with browser(system.url) as stale:
        stale.cookie_jar.update_cookies({"session": first})
        async with stale.get("/api/me") as response:
            assert response.status == 401


async def test_a_tampered_cookie_is_unauthenticated(system: System) -> None:
    async with browser(system.url) as client:
        client.cookie_jar.update_cookies({"session": "not a sid; <script>"})
        async with client.get("/api/me") as response:
            assert response.status == 401
            assert response.content_type == "application/json"


async def test_session_survives_restarts_of_gateway_and_session_service(make_system: SystemFactory) -> None:
    system = make_system()
    async with browser(system.url) as client:
        body = await login(client)
        system.restart("gateway")
        async with client.get("/api/me") as response:
            assert response.status == 200
            assert (await response.json())["user"] == body["user"]
        system.restart("session")
        async with client.get("/api/me") as response:
            assert response.status == 200
            assert (await response.json())["user"] == body["user"]


async def test_in_memory_fallback_without_a_redis_url(make_system: SystemFactory) -> None:
    system = make_system(redis_url=None)
    warnings = [e for e in system.services["session"].events() if e.get("level") == "warning"]
    assert warnings, "the session service must warn that it has no Redis"
    async with browser(system.url) as client:
        body = await login(client)
        async with client.get("/api/me") as response:
            assert response.status == 200
            assert (await response.json())["user"] == body["user"]


async def test_small_query_streams_every_part_in_protocol_order(system: System) -> None:
    async with browser(system.url) as client:
        await login(client)
        response, parts = await run_query(client, counting_sql(12))
    assert response.status == 200
    assert response.headers["Content-Type"].startswith("text/event-stream")
    assert response.headers["x-vercel-ai-ui-message-stream"] == "v1"
    kinds = types_of(parts)
    assert kinds[:3] == ["start", "start-step", "tool-input-available"]
    assert kinds[-3:] == ["finish-step", "finish", "[DONE]"]
    tool_input = parts[2]
    assert tool_input["toolName"] == "execute_query" and tool_input["input"] == {"sql": counting_sql(12)}
    outputs = [p for p in parts if p != "[DONE]" and p["type"] == "tool-output-available"]
    assert len(outputs) == 2
    preliminary, final = outputs
    assert preliminary["preliminary"] is True
    assert kinds.index("tool-output-available") < kinds.index("data-query-rows"), "the preview must come before the rows"
    assert [c["name"] for c in preliminary["output"]["columns"]] == ["i", "label"]
    assert preliminary["output"]["preview"] == [[i, f"row {i}"] for i in range(1, 6)]
    assert "preliminary" not in final
    assert final["output"]["row_count"] == 12 and final["output"]["truncated"] is False
    assert final["output"]["preview"] == preliminary["output"]["preview"]
    assert all(p["toolCallId"] == tool_input["toolCallId"] for p in outputs)
    assert rows_of(parts) == [[i, f"row {i}"] for i in range(1, 13)]


async def test_100k_row_query_delivers_every_row_once_in_order(system: System) -> None:
    n = 100_000
    async with browser(system.url) as client:
        await login(client)
        response, parts = await run_query(client, counting_sql(n))
    assert response.status == 200
    rows = rows_of(parts)
    assert len(rows) == n
    assert all(row[0] == i + 1 for i, row in enumerate(rows))
    final = [p for p in parts if p != "[DONE]" and p["type"] == "tool-output-available"][-1]
    assert final["output"]["row_count"] == n and final["output"]["truncated"] is False
    assert len(final["output"]["preview"]) == 5


@pytest.mark.parametrize(
    "sql",
    [
        "DELETE FROM customers",
        "INSERT INTO t VALUES (1)",
        "CREATE TABLE evil (x int)",
        "SELECT 1; DROP TABLE customers",
        "SELECT 1; SELECT 2",
        "ATTACH DATABASE '/tmp/x.db' AS x",
    ],
)
async def test_writes_and_multiple_statements_end_in_tool_output_error(system: System, sql: str) -> None:
    async with browser(system.url) as client:
        await login(client)
        response, parts = await run_query(client, sql)
    assert response.status == 200
    kinds = types_of(parts)
    assert "tool-output-error" in kinds and "tool-output-available" not in kinds
    error = parts[kinds.index("tool-output-error")]
    assert error["errorText"] and "Traceback" not in error["errorText"]
    assert kinds[-3:] == ["finish-step", "finish", "[DONE]"]


async def test_bad_sql_ends_in_tool_output_error_with_a_clear_message(system: System) -> None:
    async with browser(system.url) as client:
        await login(client)
        response, parts = await run_query(client, "SELEC nonsense FROM")
    kinds = types_of(parts)
    assert "tool-output-error" in kinds
    text = parts[kinds.index("tool-output-error")]["errorText"]
    assert "Traceback" not in text and len(text) < 1000


async def test_query_without_a_session_is_401(system: System) -> None:
    async with browser(system.url) as client:
        async with client.post("/api/query", json={"sql": "SELECT 1"}) as response:
            assert response.status == 401
            assert (await response.json())["error"]["code"] == "unauthorized"


@pytest.mark.parametrize("body", [b"{not json", b"[1, 2]", b"", b'{"sql": 5}', b'{"sql": ""}'])
async def test_malformed_query_body_is_400_with_json(system: System, body: bytes) -> None:
    async with browser(system.url) as client:
        await login(client)
        async with client.post("/api/query", data=body, headers={"Content-Type": "application/json"}) as response:
            assert response.status == 400
            assert (await response.json())["error"]["code"] == "bad_request"


@pytest.mark.parametrize("body", [b"{not json", b'{"name": "No Email"}', b'{"email": "x@example.com", "name": 3}'])
async def test_malformed_login_is_400_with_json(system: System, body: bytes) -> None:
    async with browser(system.url) as client:
        async with client.post("/auth/login", data=body, headers={"Content-Type": "application/json"}) as response:
            assert response.status == 400
            assert (await response.json())["error"]["code"] == "bad_request"


async def test_health_readiness_and_metrics(system: System) -> None:
    async with browser(system.url) as client:
        async with client.get("/healthz") as response:
            assert response.status == 200
        async with client.get("/readyz") as response:
            assert response.status == 200
            assert (await response.json())["checks"] == {"accepting": True, "nats": True, "session": True, "query": True}
        async with client.get("/metrics") as response:
            assert response.status == 200
            assert "gateway_http_requests" in family_names(await response.text())
        async with client.get("/no/such/route") as response:
            assert response.status == 404
            assert (await response.json())["error"]["code"] == "not_found"


async def test_login_is_refused_when_dev_auth_is_off(make_system: SystemFactory) -> None:
    system = make_system(start=("session", "gateway"), AUTH_MODE="off")
    async with browser(system.url) as client:
        async with client.post("/auth/login", json={"email": "a@example.com", "name": "A"}) as response:
            assert response.status == 403
            assert (await response.json())["error"]["code"] == "forbidden"


async def test_the_request_id_crosses_nats_into_the_query_service_log(system: System) -> None:
    async with browser(system.url) as client:
        await login(client)
        async with client.post("/api/query", json={"sql": counting_sql(3)}, headers={"X-Request-Id": "trace-e2e-42"}) as response:
            assert response.headers["X-Request-Id"] == "trace-e2e-42"
            await response.read()
        async with client.get("/api/me", headers={"X-Request-Id": "bad id with spaces"}) as response:
            assert response.headers["X-Request-Id"] != "bad id with spaces"
    query = system.services["query"]
    query.wait_for_line(lambda line: '"trace-e2e-42"' in line and '"query_done"' in line, timeout=10)
    done = [e for e in query.events("query_done") if e.get("request_id") == "trace-e2e-42"]
    assert len(done) == 1 and done[0]["row_count"] == 3
