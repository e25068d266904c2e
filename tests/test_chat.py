"""POST /api/chat end to end: the gateway's real openai SDK against a fake model on loopback, real NATS, Redis and PostgreSQL."""

from __future__ import annotations

import asyncio
import json
import socket
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
import structlog

from services.gateway.chat import prompt
from services.gateway.chat.handlers import NOT_CONFIGURED
from tests import fake_llm
from tests.chat_support import (  # noqa: F401 (fixtures)
    API_KEY,
    BIG_ROWS,
    PgSource,
    Turn,
    gateway,
    pg_active,
    pg_source_fixture,
    post_chat,
    services_fixture,
    signed_in,
    user_message,
)
from tests.conftest import System
from tests.fake_llm import FakeLLM
from tests.harness import eventually


@pytest.fixture
async def fake() -> AsyncIterator[FakeLLM]:
    server = await FakeLLM().start()
    yield server
    await server.stop()


def gateway_env(services: System, fake: FakeLLM, **extra: str) -> dict[str, str]:
    return {
        "NATS_URL": services.nats_url,
        "NATS_SUBJECT_PREFIX": services.prefix,
        "LLM_BASE_URL": fake.base_url,
        "LLM_MODEL": fake_llm.MODEL,
        "LLM_API_KEY": API_KEY,
        **extra,
    }


async def one_turn(services: System, fake: FakeLLM, question: str, *, history: list[dict[str, Any]] | None = None, env: dict[str, str] | None = None, **extra: Any) -> Turn:
    async with gateway(gateway_env(services, fake, **(env or {}))) as url, signed_in(url) as client:
        return await post_chat(client, [*(history or []), user_message(question)], **extra)


def tool_messages(request: dict[str, Any]) -> list[Any]:
    return [json.loads(m["content"]) for m in request["messages"] if m["role"] == "tool"]


def assert_complete(turn: Turn) -> None:
    """The stream is a whole UI message stream: start first, finish then [DONE] last, steps balanced."""
    types = turn.types()
    assert turn.status == 200 and turn.headers["x-vercel-ai-ui-message-stream"] == "v1"
    assert types[0] == "start" and types[-2:] == ["finish", "[DONE]"], types
    assert types.count("start-step") == types.count("finish-step"), types


async def test_a_text_only_turn_streams_text_parts_and_usage(services: System, fake: FakeLLM) -> None:
    fake.then(fake_llm.text("There are ", "3 customers."))
    with structlog.testing.capture_logs() as logs:
        turn = await one_turn(services, fake, "How many customers?")
    assert_complete(turn)
    assert turn.types() == ["start", "start-step", "text-start", "text-delta", "text-delta", "text-end", "finish-step", "finish", "[DONE]"]
    assert turn.text() == "There are 3 customers."
    ids = {p["id"] for p in turn.parts[2:6]}
    assert len(ids) == 1
    assert turn.of("finish")[0]["messageMetadata"] == {"model": fake_llm.MODEL, "usage": {"inputTokens": 50, "outputTokens": 7}, "steps": 1}
    [request] = fake.requests
    assert request["model"] == fake_llm.MODEL and request["stream"] is True
    assert [t["function"]["name"] for t in request["tools"]] == [prompt.EXECUTE_QUERY, prompt.DESCRIBE_SCHEMA, prompt.SEARCH_SCHEMA, prompt.SHOW_CHART, prompt.GET_RECENT_QUERIES]
    system, user = request["messages"]
    assert system["role"] == "system" and "pg: PostgreSQL" in system["content"] and "read-only" in system["content"]
    assert user == {"role": "user", "content": "How many customers?"}
    assert fake.authorization == [f"Bearer {API_KEY}"]
    [line] = [entry for entry in logs if entry["event"] == "chat_turn"]
    assert line["outcome"] == "ok" and line["steps"] == 1 and line["input_tokens"] == 50 and line["output_tokens"] == 7
    assert API_KEY not in repr(logs) and API_KEY.encode() not in turn.raw


async def test_reasoning_is_streamed_as_reasoning_parts(services: System, fake: FakeLLM) -> None:
    fake.then(fake_llm.text("Three.", reasoning=["Count ", "them."]))
    turn = await one_turn(services, fake, "How many?")
    assert turn.types()[2:9] == ["reasoning-start", "reasoning-delta", "reasoning-delta", "reasoning-end", "text-start", "text-delta", "text-end"]
    assert "".join(p["delta"] for p in turn.of("reasoning-delta")) == "Count them."


async def test_query_then_answer_over_postgres(services: System, fake: FakeLLM) -> None:
    """The model calls execute_query; the browser gets the preview, the rows and the output; the model gets the summary."""
    sql = "SELECT c.name, count(*) AS orders FROM orders o JOIN customers c ON c.id = o.customer_id GROUP BY c.name ORDER BY c.name"
    fake.then(fake_llm.tool_calls((prompt.EXECUTE_QUERY, {"sql": sql})), fake_llm.text("Each customer has 10 orders."))
    turn = await one_turn(services, fake, "Orders per customer?", source="pg")
    assert_complete(turn)
    types = turn.types()
    assert types[:3] == ["start", "start-step", "tool-input-start"]
    call_id = turn.of("tool-input-start")[0]["toolCallId"]
    assert "".join(p["inputTextDelta"] for p in turn.of("tool-input-delta")) == json.dumps({"sql": sql})
    assert turn.of("tool-input-available") == [{"type": "tool-input-available", "toolCallId": call_id, "toolName": prompt.EXECUTE_QUERY, "input": {"sql": sql}}]
    outputs = turn.of("tool-output-available")
    assert outputs[0]["preliminary"] is True and "preliminary" not in outputs[1]
    assert outputs[1]["output"]["row_count"] == 3 and outputs[1]["output"]["truncated"] is False
    assert turn.rows() == [["Ada", 10], ["Grace", 10], ["Linus", 10]]
    assert types.count("start-step") == 2 and turn.text() == "Each customer has 10 orders."
    assert turn.of("finish")[0]["messageMetadata"]["steps"] == 2
    first, second = fake.requests
    assert tool_messages(second) == [{"columns": outputs[1]["output"]["columns"], "preview": [["Ada", 10], ["Grace", 10], ["Linus", 10]], "row_count": 3, "truncated": False}]
    assistant = second["messages"][-2]
    assert assistant["role"] == "assistant" and assistant["tool_calls"][0]["id"] == call_id


async def test_describe_schema_then_query_then_answer(services: System, fake: FakeLLM) -> None:
    fake.then(
        fake_llm.tool_calls((prompt.DESCRIBE_SCHEMA, {"tables": ["orders"]})),
        fake_llm.tool_calls((prompt.EXECUTE_QUERY, {"sql": "SELECT sum(amount) AS total FROM orders"})),
        fake_llm.text("The total is 4882.50."),
    )
    turn = await one_turn(services, fake, "What is the order total?", source="pg")
    assert_complete(turn)
    schema_output = turn.of("tool-output-available")[0]["output"]
    [orders] = schema_output["tables"]
    assert orders["name"].endswith("orders")
    assert {c["name"] for c in orders["columns"]} == {"id", "customer_id", "amount", "placed"}
    assert orders["foreign_keys"][0]["columns"] == ["customer_id"]
    assert tool_messages(fake.requests[1]) == [schema_output]
    assert tool_messages(fake.requests[2])[1] == {"columns": [{"name": "total", "type": "numeric"}], "preview": [["4882.50"]], "row_count": 1, "truncated": False}
    assert turn.types().count("start-step") == 3 and turn.text() == "The total is 4882.50."


async def test_a_failing_query_is_corrected_in_the_next_step(services: System, fake: FakeLLM) -> None:
    fake.then(
        fake_llm.tool_calls((prompt.EXECUTE_QUERY, {"sql": "SELECT nme FROM customers"})),
        fake_llm.tool_calls((prompt.EXECUTE_QUERY, {"sql": "SELECT name FROM customers ORDER BY id"})),
        fake_llm.text("Ada, Grace and Linus."),
    )
    turn = await one_turn(services, fake, "Names?", source="pg")
    assert_complete(turn)
    [failure] = turn.of("tool-output-error")
    assert "nme" in failure["errorText"]
    assert tool_messages(fake.requests[1]) == [{"error": failure["errorText"]}]
    assert turn.rows() == [["Ada"], ["Grace"], ["Linus"]]
    assert turn.text() == "Ada, Grace and Linus."


@pytest.mark.parametrize(
    "variant",
    [{}, {"finish_reason": "stop"}, {"index": False}, {"same_index": True}],
    ids=["openai", "finish-reason-stop", "no-index", "same-index"],
)
async def test_two_tool_calls_in_one_step(services: System, fake: FakeLLM, variant: dict[str, Any]) -> None:
    fake.then(
        fake_llm.tool_calls((prompt.EXECUTE_QUERY, {"sql": "SELECT count(*) AS n FROM customers"}), (prompt.EXECUTE_QUERY, {"sql": "SELECT count(*) AS n FROM orders"}), **variant),
        fake_llm.text("3 customers, 30 orders."),
    )
    turn = await one_turn(services, fake, "Counts?", source="pg")
    assert_complete(turn)
    inputs = turn.of("tool-input-available")
    assert [p["input"]["sql"] for p in inputs] == ["SELECT count(*) AS n FROM customers", "SELECT count(*) AS n FROM orders"]
    assert len({p["toolCallId"] for p in inputs}) == 2
    finals = [p for p in turn.of("tool-output-available") if not p.get("preliminary")]
    assert [p["output"]["preview"] for p in finals] == [[[3]], [[30]]]
    second = fake.requests[1]
    assert [m["tool_call_id"] for m in second["messages"] if m["role"] == "tool"] == [p["toolCallId"] for p in inputs]
    assert [t["preview"] for t in tool_messages(second)] == [[[3]], [[30]]]


async def test_the_step_limit_ends_the_turn_with_a_final_text(services: System, fake: FakeLLM) -> None:
    fake.then(*[fake_llm.tool_calls((prompt.EXECUTE_QUERY, {"sql": f"SELECT {i}"})) for i in range(5)])
    with structlog.testing.capture_logs() as logs:
        turn = await one_turn(services, fake, "Loop forever", env={"LLM_MAX_STEPS": "2"})
    assert_complete(turn)
    assert len(fake.requests) == 2
    assert turn.text() == prompt.STEP_LIMIT_TEXT.format(steps=2)
    assert turn.of("finish")[0]["messageMetadata"]["steps"] == 2
    assert [e["outcome"] for e in logs if e["event"] == "chat_turn"] == ["step_limit"]


async def test_malformed_tool_arguments_become_a_tool_error_the_model_sees(services: System, fake: FakeLLM) -> None:
    fake.then(fake_llm.tool_calls((prompt.EXECUTE_QUERY, '{"sql": "SELECT 1"')), fake_llm.text("Fixed."))
    turn = await one_turn(services, fake, "Try")
    assert_complete(turn)
    [error] = turn.of("tool-input-error")
    assert "not valid JSON" in error["errorText"]
    [seen] = tool_messages(fake.requests[1])
    assert seen == {"error": error["errorText"]}


async def test_the_model_never_sees_rows_of_a_100k_row_result(services: System, fake: FakeLLM, pg_source: PgSource) -> None:
    fake.then(fake_llm.tool_calls((prompt.EXECUTE_QUERY, {"sql": "SELECT id, label FROM big ORDER BY id"})), fake_llm.text("100,000 rows."))
    turn = await one_turn(services, fake, "All rows", source="pg")
    assert_complete(turn)
    rows = turn.rows()
    assert len(rows) == BIG_ROWS and rows[0] == [1, "row 1"] and rows[-1] == [BIG_ROWS, f"row {BIG_ROWS}"]
    assert all(row[0] == i for i, row in enumerate(rows, 1))
    assert len(fake.requests) == 2
    for request in fake.requests:
        for result in tool_messages(request):
            assert len(result.get("preview", [])) <= prompt.PREVIEW_ROWS
        assert len(json.dumps(request)) < 20_000
    [summary] = tool_messages(fake.requests[1])
    assert summary["row_count"] == BIG_ROWS and summary["preview"] == [[i, f"row {i}"] for i in range(1, 6)]


async def test_a_posted_tool_output_with_1000_rows_reaches_the_model_as_5(services: System, fake: FakeLLM) -> None:
    rows = [[i, "x" * 200] for i in range(1000)]
    history = [
        user_message("Show everything"),
        {
            "id": "a1",
            "role": "assistant",
            "parts": [
                {"type": "step-start"},
                {
                    "type": "tool-execute_query",
                    "toolCallId": "call_old",
                    "state": "output-available",
                    "input": {"sql": "SELECT * FROM big"},
                    "output": {"columns": [{"name": "id", "type": "int8"}, {"name": "label", "type": "text"}], "preview": rows, "row_count": 1000, "truncated": False, "rows": rows},
                },
                {"type": "data-query-rows", "data": {"toolCallId": "call_old", "offset": 0, "rows": rows}},
                {"type": "step-start"},
                {"type": "text", "text": "Here they are.", "state": "done"},
            ],
        },
    ]
    fake.then(fake_llm.text("OK."))
    turn = await one_turn(services, fake, "And now?", history=history)
    assert_complete(turn)
    messages = fake.requests[0]["messages"]
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "tool", "assistant", "user"]
    [summary] = tool_messages(fake.requests[0])
    assert len(summary["preview"]) == 5 and set(summary) == {"columns", "preview", "row_count", "truncated"}
    assert all(len(cell) <= prompt.CELL_CHARS + 1 for _, cell in summary["preview"])
    assert messages[4]["content"] == "Here they are."
    assert len(json.dumps(fake.requests[0])) < 20_000


async def test_old_turns_are_dropped_past_the_history_limit(services: System, fake: FakeLLM) -> None:
    history: list[dict[str, Any]] = []
    for i in range(6):
        history += [user_message(f"question {i} " + "q" * 400), {"id": f"a{i}", "role": "assistant", "parts": [{"type": "text", "text": f"answer {i} " + "a" * 400}]}]
    fake.then(fake_llm.text("OK."))
    await one_turn(services, fake, "newest question", history=history, env={"LLM_HISTORY_MAX_CHARS": "2500"})
    messages = fake.requests[0]["messages"]
    assert messages[0]["role"] == "system" and messages[-1] == {"role": "user", "content": "newest question"}
    contents = [m["content"] for m in messages[1:-1]]
    assert contents and all(not c.startswith(("question 0", "answer 0")) for c in contents)
    assert contents[-1].startswith("answer 5")
    assert len(json.dumps(messages[1:])) <= 2500


# --- failures -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("reply", "env", "message"),
    [
        (fake_llm.error(401, "Incorrect API key provided: sk-te***", "invalid_request_error"), {}, "the language model refused the API key"),
        (
            fake_llm.error(429, "Rate limit reached", "requests", {"retry-after": "600"}),
            {},
            "the language model is rate limited; try again in 600 s",
        ),
        (fake_llm.error(500, "boom", "server_error"), {"LLM_MAX_RETRIES": "1"}, "the language model failed (HTTP 500); try again later"),
        (fake_llm.Raw(b"data: {not json\n\n"), {}, "the language model sent a malformed response; try again"),
        (fake_llm.Hang(), {"LLM_TIMEOUT_S": "1", "LLM_MAX_RETRIES": "0"}, "the language model did not answer within 1 s; try again"),
        (
            fake_llm.Stream(fake_llm.text("Let me ", "see").chunks[:3], hang=True),
            {"LLM_TIMEOUT_S": "2"},
            "the language model did not answer within 2 s; try again",
        ),
    ],
    ids=["401", "429", "500", "garbage", "hang", "hang-mid-stream"],
)
async def test_model_failures_end_the_turn_with_a_clear_error_part(services: System, fake: FakeLLM, reply: Any, env: dict[str, str], message: str) -> None:
    fake.then(reply, reply)
    with structlog.testing.capture_logs() as logs:
        turn = await one_turn(services, fake, "Hello", env=env)
    assert_complete(turn)
    assert turn.of("error") == [{"type": "error", "errorText": message}]
    assert API_KEY.encode() not in turn.raw and API_KEY not in repr(logs)
    if isinstance(reply, fake_llm.Status) and reply.status == 500:
        assert len(fake.requests) == 2, "the SDK retries a 5xx before giving up"
    if isinstance(reply, fake_llm.Stream):
        assert turn.text() == "Let me see", "what was streamed before the failure stays"
        assert len(fake.requests) == 1, "a step that already streamed is not retried"


async def test_a_model_that_is_not_running_is_reported(services: System, fake: FakeLLM) -> None:
    await fake.stop()
    turn = await one_turn(services, fake, "Hello", env={"LLM_MAX_RETRIES": "0"})
    assert_complete(turn)
    [error] = turn.of("error")
    assert error["errorText"].startswith("cannot reach the language model at http://127.0.0.1:")


# --- cancellation ---------------------------------------------------------------------


async def test_a_client_leaving_while_the_model_streams_closes_the_model_request(services: System, fake: FakeLLM) -> None:
    reply = fake_llm.text("Thinking", " about it")
    fake.then(fake_llm.Stream(reply.chunks[:2], hang=True))
    with structlog.testing.capture_logs() as logs:
        async with gateway(gateway_env(services, fake)) as url:
            async with signed_in(url) as client:
                response = await client.post("/api/chat", json={"id": "c1", "messages": [user_message("Hi")], "trigger": "submit-message"})
                assert response.status == 200
                await asyncio.wait_for(fake.streaming.wait(), 30)
                response.close()
            await asyncio.wait_for(fake.closed.wait(), 30)
    assert [e["outcome"] for e in logs if e["event"] == "chat_turn"] == ["client_gone"]


async def test_a_client_leaving_during_a_query_stops_the_statement(services: System, fake: FakeLLM, pg_source: PgSource) -> None:
    marker = f"chat_cancel_{uuid.uuid4().hex[:8]}"
    fake.then(fake_llm.tool_calls((prompt.EXECUTE_QUERY, {"sql": f"SELECT pg_sleep(60) AS {marker}"})))
    async with gateway(gateway_env(services, fake)) as url:
        async with signed_in(url) as client:
            response = await client.post("/api/chat", json={"id": "c2", "messages": [user_message("Sleep")], "source": "pg"})
            assert response.status == 200
            await eventually(lambda: _running(pg_source, marker), "the statement to run in PostgreSQL", timeout=15)
            response.close()
        await eventually(lambda: _stopped(pg_source, marker), "the statement to leave pg_stat_activity", timeout=15)
    assert len(fake.requests) == 1


async def _running(source: PgSource, marker: str) -> bool:
    return await pg_active(source.admin_url, marker) > 0


async def _stopped(source: PgSource, marker: str) -> bool:
    return await pg_active(source.admin_url, marker) == 0


# --- refusals -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (b"", "JSON object"),
        (b"[1]", "Expected `object`"),
        (b'{"messages": []}', "`id`"),
        (b'{"id": "c", "messages": [{"id": "m", "role": "robot", "parts": []}]}', "messages[0].role"),
        (b'{"id": "c", "messages": [{"id": "m", "role": "user", "parts": [{"text": "hi"}]}]}', "messages[0].parts[0]"),
        (b'{"id": "c", "messages": [{"id": "m", "role": "user", "parts": []}], "trigger": "resume"}', "trigger"),
        (b'{"id": "c", "messages": []}', "at least one user message"),
        (b'{"id": "c", "messages": [{"id": "m", "role": "user", "parts": []}], "source": 5}', "source"),
    ],
)
async def test_a_malformed_body_is_400_naming_the_field(services: System, fake: FakeLLM, body: bytes, field: str) -> None:
    async with gateway(gateway_env(services, fake)) as url, signed_in(url) as client:
        async with client.post("/api/chat", data=body, headers={"Content-Type": "application/json"}) as response:
            assert response.status == 400
            error = (await response.json())["error"]
    assert error["code"] == "bad_request" and field in error["message"], error
    assert fake.requests == []


async def test_chat_without_a_session_is_401(services: System, fake: FakeLLM) -> None:
    from tests.client import browser

    async with gateway(gateway_env(services, fake)) as url, browser(url) as client:
        async with client.post("/api/chat", json={"id": "c", "messages": [user_message("hi")]}) as response:
            assert response.status == 401
        async with client.get("/api/quota") as response:
            assert response.status == 401
    assert fake.requests == []


async def test_without_a_model_chat_is_503_and_the_rest_works(services: System) -> None:
    env = {"NATS_URL": services.nats_url, "NATS_SUBJECT_PREFIX": services.prefix}
    async with gateway(env) as url, signed_in(url) as client:
        async with client.post("/api/chat", json={"id": "c", "messages": [user_message("hi")]}) as response:
            assert response.status == 503
            assert await response.json() == {"error": {"code": "unavailable", "message": NOT_CONFIGURED}}
        async with client.post("/api/query", json={"sql": "SELECT 1"}) as response:
            assert response.status == 200
        async with client.get("/readyz") as response:
            assert response.status == 200


async def test_over_quota_is_429_before_any_model_call(services: System, fake: FakeLLM) -> None:
    """The hour window is the one that fills: a fixed window rolling over mid-test is then all but impossible."""
    fake.then(fake_llm.text("one"), fake_llm.text("two"), fake_llm.text("three"))
    env = gateway_env(services, fake, CHAT_QUOTA_PER_MINUTE="0", CHAT_QUOTA_PER_HOUR="2")
    async with gateway(env) as url, signed_in(url) as client:
        async with client.get("/api/quota") as response:
            assert await response.json() == {
                "minute": {"used": 0, "limit": 0, "resets_in": pytest.approx(30, abs=30)},
                "hour": {"used": 0, "limit": 2, "resets_in": pytest.approx(1800, abs=1800)},
                "day": {"used": 0, "limit": 1000, "resets_in": pytest.approx(43200, abs=43200)},
            }
        for _ in range(2):
            assert (await post_chat(client, [user_message("q")])).status == 200
        refused = await post_chat(client, [user_message("q")])
        async with client.get("/api/quota") as response:
            after = await response.json()
    assert refused.status == 429
    assert refused.body["error"]["code"] == "quota_exceeded"
    assert 1 <= int(refused.headers["Retry-After"]) <= 3600
    assert refused.body["usage"]["hour"] == {"used": 2, "limit": 2, "resets_in": int(refused.headers["Retry-After"])}
    assert after["hour"]["used"] == 2 and after["day"]["used"] == 2
    assert len(fake.requests) == 2


@pytest.mark.parametrize(("max_chars", "included"), [("6000", True), ("40", False)])
async def test_the_system_prompt_holds_the_schema_overview_only_when_small_enough(services: System, fake: FakeLLM, max_chars: str, included: bool) -> None:
    fake.then(fake_llm.text("OK."))
    await one_turn(services, fake, "Hi", source="pg", env={"LLM_SCHEMA_MAX_CHARS": max_chars})
    system = fake.requests[0]["messages"][0]["content"]
    assert ("orders: id integer, customer_id integer, amount numeric(10,2), placed date" in system) is included
    assert ("too large to list here" in system) is not included
    assert "- pg: PostgreSQL" in system and "- default (default): SQLite" in system


async def test_an_unknown_source_is_404_and_costs_no_quota(services: System, fake: FakeLLM) -> None:
    async with gateway(gateway_env(services, fake, CHAT_QUOTA_PER_MINUTE="1")) as url, signed_in(url) as client:
        refused = await post_chat(client, [user_message("q")], source="nowhere")
        async with client.get("/api/quota") as response:
            quota = await response.json()
    # 404 as for a source the user may not use (docs/access.md); the message names no other source.
    assert refused.status == 404 and refused.body["error"]["code"] == "unknown_source"
    assert "nowhere" in refused.body["error"]["message"] and "pg" not in refused.body["error"]["message"]
    assert quota["minute"]["used"] == 0 and fake.requests == []


async def test_a_turn_is_counted_in_the_metrics(services: System, fake: FakeLLM) -> None:
    fake.then(fake_llm.tool_calls((prompt.EXECUTE_QUERY, {"sql": "SELECT 1 AS one"})), fake_llm.text("One."))
    async with gateway(gateway_env(services, fake)) as url, signed_in(url) as client:
        async with client.get("/metrics") as response:
            before = _samples(await response.text())
        assert (await post_chat(client, [user_message("One?")])).status == 200
        async with client.get("/metrics") as response:
            after = _samples(await response.text())

    def grew(name: str, by: float) -> bool:
        return after.get(name, 0.0) - before.get(name, 0.0) == by

    assert grew('gateway_llm_requests_total{outcome="ok"}', 2)
    assert grew('gateway_llm_tokens_total{kind="input"}', 130) and grew('gateway_llm_tokens_total{kind="output"}', 27)
    assert grew('gateway_tool_calls_total{outcome="ok",tool="execute_query"}', 1)
    assert grew("gateway_chat_turn_seconds_count", 1)


def _samples(text: str) -> dict[str, float]:
    samples = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            samples[name] = float(value)
    return samples


async def test_a_failing_describe_schema_is_a_tool_error_the_model_sees(services: System, fake: FakeLLM) -> None:
    fake.then(fake_llm.tool_calls((prompt.DESCRIBE_SCHEMA, {"source": "nowhere"})), fake_llm.text("No such source."))
    turn = await one_turn(services, fake, "Schema?")
    assert_complete(turn)
    [failure] = turn.of("tool-output-error")
    assert "nowhere" in failure["errorText"]
    assert tool_messages(fake.requests[1]) == [{"error": failure["errorText"]}]


async def test_a_client_that_stops_reading_is_given_up_and_its_query_stopped(services: System, fake: FakeLLM, pg_source: PgSource) -> None:
    marker = f"chat_stall_{uuid.uuid4().hex[:8]}"
    sql = f"SELECT g AS {marker}, repeat('x', 200) AS filler FROM generate_series(1, 300000) g"
    fake.then(fake_llm.tool_calls((prompt.EXECUTE_QUERY, {"sql": sql})))
    with structlog.testing.capture_logs() as logs:
        async with gateway(gateway_env(services, fake, CLIENT_WRITE_TIMEOUT_S="1")) as url:
            async with signed_in(url) as client:
                cookie = next(c for c in client.cookie_jar if c.key == "session")
            body = json.dumps({"id": "c", "messages": [user_message("All")], "source": "pg"}).encode()
            port = int(url.rsplit(":", 1)[1])
            head = (
                f"POST /api/chat HTTP/1.1\r\nHost: 127.0.0.1\r\nSec-Fetch-Site: same-origin\r\nContent-Type: application/json\r\nCookie: session={cookie.value}\r\nContent-Length: {len(body)}\r\n\r\n"
            )
            sock = socket.socket()
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # a small window: the stream stalls soon
            sock.setblocking(False)
            try:
                await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
                await asyncio.get_running_loop().sock_sendall(sock, head.encode() + body)
                # Never read: the gateway must give up on its own.
                await eventually(lambda: _logged(logs, "chat_turn"), "the turn to end", timeout=15)
            finally:
                sock.close()
            await eventually(lambda: _stopped(pg_source, marker), "the statement to leave pg_stat_activity", timeout=15)
    [turn] = [e for e in logs if e["event"] == "chat_turn"]
    assert turn["outcome"] == "client_stalled"
    assert [e for e in logs if e["event"] in ("chat_turn_failed", "request_failed")] == []


async def _logged(logs: list[dict[str, Any]], event: str) -> bool:
    return any(e["event"] == event for e in logs)


# --- show_chart --------------------------------------------------------------------------------

CHART_SQL = "SELECT 'north' AS region, 10 AS id, 2.5 AS amount UNION ALL SELECT 'south', 11, 4"


async def test_show_chart_of_the_last_result_reaches_the_page_as_a_checked_spec(services: System, fake: FakeLLM) -> None:
    fake.then(
        fake_llm.tool_calls(("execute_query", {"sql": CHART_SQL})),
        fake_llm.tool_calls(("show_chart", {"type": "pie", "x": "region", "y": "amount", "title": "Amount by region"})),
        fake_llm.text("Here it is."),
    )
    turn = await one_turn(services, fake, "Chart the amounts")
    assert_complete(turn)
    query_id = next(p["toolCallId"] for p in turn.of("tool-input-available") if p["toolName"] == "execute_query")
    chart_id = next(p["toolCallId"] for p in turn.of("tool-input-available") if p["toolName"] == "show_chart")
    [output] = [p["output"] for p in turn.of("tool-output-available") if p["toolCallId"] == chart_id]
    assert {k: output[k] for k in ("type", "x", "y", "title", "query")} == {"type": "pie", "x": "region", "y": "amount", "title": "Amount by region", "query": query_id}
    assert [c["name"] for c in output["columns"]] == ["region", "id", "amount"]
    assert tool_messages(fake.requests[2])[-1] == {"shown": True, "type": "pie", "x": "region", "y": "amount"}


@pytest.mark.parametrize(
    ("proposal", "first_query", "said"),
    [
        ({"type": "bar", "x": "region", "y": "region"}, True, "'y' must be a numeric column"),
        ({"type": "bar", "x": "nope", "y": "amount"}, True, "'x' must name a column of the last query's result (region, id, amount)"),
        ({"type": "radar", "x": "region", "y": "amount"}, True, "'type' must be one of bar, line, area, scatter, pie"),
        ({"type": "bar", "x": "region", "y": "amount"}, False, "call execute_query first"),
    ],
    ids=["text-y", "unknown-x", "unknown-type", "no-query"],
)
async def test_an_invalid_show_chart_is_a_tool_error_the_model_sees_and_nothing_is_drawn(services: System, fake: FakeLLM, proposal: dict[str, Any], first_query: bool, said: str) -> None:
    replies = [fake_llm.tool_calls(("execute_query", {"sql": CHART_SQL}))] if first_query else []
    fake.then(*replies, fake_llm.tool_calls(("show_chart", proposal)), fake_llm.text("Sorry."))
    turn = await one_turn(services, fake, "Chart it")
    assert_complete(turn)
    [refused] = turn.of("tool-input-error")
    assert refused["toolName"] == "show_chart" and said in refused["errorText"]
    assert not [p for p in turn.of("tool-output-available") if p["toolCallId"] == refused["toolCallId"]]
    assert said in tool_messages(fake.requests[-1])[-1]["error"]
