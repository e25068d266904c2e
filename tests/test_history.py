"""Conversation history end to end: /api/chat with only the new message, reloads, pagination, owners, limits, Redis commands.

Real Redis (a private one, so its command counts are ours), two session replicas, the
query service on the sample SQLite database, and the gateway from its factory talking to
the fake model through the real openai SDK. What a reload returns is compared with what
the AI SDK's own client (npm `ai`) built from the streamed bytes.
"""

from __future__ import annotations

import asyncio
import json
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import msgspec
import nats
import pytest
import redis

from services.gateway.chat import prompt
from services.session.keys import index_key, list_key, titles_key
from shared.bus import request
from shared.contracts import Subjects
from shared.errors import ServiceError
from tests import fake_llm
from tests.auth_issuer import AUDIENCE, running_issuer
from tests.chat_support import gateway, signed_in
from tests.client import browser
from tests.fake_llm import FakeLLM, Stream
from tests.harness import RedisServer, eventually
from tests.history_support import MAX_MESSAGE_BYTES, MAX_MESSAGES, Stack, ask, commandstats, fake_fixture, send, stack_fixture, stored, user  # noqa: F401 (fixtures)
from tests.redis_proxy import redis_proxy
from tests.test_chat_ai_sdk import ai_sdk, read_with_ai_sdk  # noqa: F401 (ai_sdk is a fixture)


async def new_conversation(client: Any) -> str:
    async with client.post("/api/conversations") as response:
        assert response.status == 200, await response.text()
        body = await response.json()
    assert body["id"] == body["conversation_id"] and body["title"] is None
    return body["id"]


def redis_messages(stack: Stack, uid: str, cid: str) -> list[dict[str, Any]]:
    return [msgspec.msgpack.decode(raw) for raw in stack.redis.lrange(list_key(uid, cid), 0, -1)]


async def me(client: Any) -> str:
    async with client.get("/api/me") as response:
        return (await response.json())["user"]["uid"]


async def test_a_reload_gives_use_chat_exactly_the_messages_it_showed(stack: Stack, fake: FakeLLM, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    sdk: Path = request.getfixturevalue("ai_sdk")
    question = "Which customers placed the most orders last year, and how much did each of them spend in total? " * 2
    fake.then(
        fake_llm.text("Let me ", "look.", reasoning=["The user wants totals."]),
        fake_llm.tool_calls((prompt.EXECUTE_QUERY, {"sql": "SELECT id, name FROM customers ORDER BY id LIMIT 40"})),
        fake_llm.text("40 customers shown."),
        fake_llm.tool_calls((prompt.EXECUTE_QUERY, "{oops")),
        fake_llm.text("Sorry, fixed."),
    )
    async with gateway(stack.gateway_env(fake)) as url, signed_in(url) as client:
        uid = await me(client)
        cid = await new_conversation(client)
        asked = [user(question), user("Show me the first 40 customers."), user("And now?")]
        turns = [await ask(client, cid, asked[0])]
        turns.append(await ask(client, cid, asked[1]))
        turns.append(await ask(client, cid, asked[2]))
        assert [t.status for t in turns] == [200, 200, 200]
        assert len(turns[1].rows()) == 40, "the client still gets every row"
        status, body = await stored(client, cid)

    shown = []
    for message, turn in zip(asked, turns, strict=True):
        read = await read_with_ai_sdk(sdk, turn.raw, tmp_path)
        assert read["errors"] == []
        shown += [message, read["message"]]
    assert status == 200
    assert body["messages"] == shown
    assert body["omitted"] == 0
    assert body["title"] == " ".join(question.split())[:80]

    # The model got the stored history although the client sent only the new message.
    second = fake.requests[1]["messages"]
    assert [m["content"] for m in second if m["role"] == "user"] == [question, asked[1]["parts"][0]["text"]]
    assert any(m["role"] == "assistant" and m["content"] == "Let me look." for m in second)

    # In Redis: six MessagePack UIMessages, summaries only: at most 5 preview rows, no data parts.
    kept = redis_messages(stack, uid, cid)
    assert kept == shown
    query_part = next(p for p in kept[3]["parts"] if p["type"] == "tool-execute_query")
    assert len(query_part["output"]["preview"]) == 5 and query_part["output"]["row_count"] == 40
    assert not any(p["type"].startswith("data-") for m in kept for p in m["parts"])
    assert 0 < stack.redis.pttl(list_key(uid, cid)) <= 90 * 86400 * 1000


async def test_the_full_messages_form_keeps_working_and_starts_the_history(stack: Stack, fake: FakeLLM) -> None:
    fake.then(fake_llm.text("Two."), fake_llm.text("Three."))
    cid = f"chat{uuid.uuid4().hex[:8]}"
    earlier = user("One?")
    answer = {"id": "a1", "role": "assistant", "parts": [{"type": "text", "text": "One.", "state": "done"}, {"type": "data-query-rows", "data": {"rows": [[1]]}}]}
    async with gateway(stack.gateway_env(fake)) as url, signed_in(url) as client:
        first = await send(client, {"id": cid, "messages": [earlier, answer, user("Two?")], "trigger": "submit-message"})
        second = await ask(client, cid, user("Three?"))
        _, body = await stored(client, cid)
    assert first.status == second.status == 200
    assert ["".join(p.get("text", "") for p in m["parts"]) for m in body["messages"]] == ["One?", "One.", "Two?", "Two.", "Three?", "Three."]
    assert body["messages"][1]["parts"] == [{"type": "text", "text": "One.", "state": "done"}], "data parts are never stored"
    assert [m["content"] for m in fake.requests[1]["messages"] if m["role"] == "user"] == ["One?", "Two?", "Three?"]


async def test_posted_show_chart_and_recent_queries_parts_reach_the_model_in_every_later_turn(stack: Stack, fake: FakeLLM) -> None:
    """A full `messages` post holding the model's earlier show_chart and get_recent_queries calls: the model sees each call
    and what it got back, in that turn and (from the stored history) in the next one, as it does execute_query's."""
    fake.then(fake_llm.text("A bar chart, from your recent query."), fake_llm.text("Still a bar chart."))
    cid = f"chat{uuid.uuid4().hex[:8]}"
    columns = [{"name": "country", "type": "text"}, {"name": "total", "type": "numeric"}]
    chart = {"type": "bar", "x": "country", "y": "total", "title": "Spend by country", "query": "call_q", "columns": columns}
    recent = {"source": "sample", "queries": [{"sql": "SELECT country, sum(amount) AS total FROM orders GROUP BY country", "ran_at": "2026-12-01T10:00:00+00:00"}]}
    answer = {
        "id": "a1",
        "role": "assistant",
        "parts": [
            {"type": "step-start"},
            {"type": "tool-get_recent_queries", "toolCallId": "call_r", "state": "output-available", "input": {"limit": 1}, "output": recent},
            {"type": "step-start"},
            {
                "type": "tool-execute_query",
                "toolCallId": "call_q",
                "state": "output-available",
                "input": {"sql": recent["queries"][0]["sql"]},
                "output": {"columns": columns, "preview": [["UK", 105.0], ["US", 210.5]], "row_count": 2, "truncated": False},
            },
            {"type": "data-query-rows", "data": {"toolCallId": "call_q", "offset": 0, "rows": [["UK", 105.0], ["US", 210.5]]}},
            {"type": "step-start"},
            {"type": "tool-show_chart", "toolCallId": "call_c", "state": "output-available", "input": {"type": "bar", "x": "country", "y": "total"}, "output": chart},
            {"type": "step-start"},
            {"type": "text", "text": "Here is the chart.", "state": "done"},
        ],
    }
    first_question = user("Chart my last query.")
    async with gateway(stack.gateway_env(fake)) as url, signed_in(url) as client:
        first = await send(client, {"id": cid, "messages": [first_question, answer, user("What kind of chart was it?")], "trigger": "submit-message"})
        second = await ask(client, cid, user("And the source?"))
        _, body = await stored(client, cid)
    assert first.status == second.status == 200
    assert len(fake.requests) == 2
    for turn, sent in enumerate(fake.requests, 1):
        messages = sent["messages"]
        calls = {c["id"]: c["function"] for m in messages if m["role"] == "assistant" for c in m.get("tool_calls", ())}
        results = {m["tool_call_id"]: json.loads(m["content"]) for m in messages if m["role"] == "tool"}
        assert list(calls) == ["call_r", "call_q", "call_c"], f"turn {turn}: the model was not given every earlier tool call"
        assert calls["call_r"] == {"name": prompt.GET_RECENT_QUERIES, "arguments": json.dumps({"limit": 1}, separators=(",", ":"))}
        assert results["call_r"] == recent
        assert calls["call_c"] == {"name": prompt.SHOW_CHART, "arguments": json.dumps({"type": "bar", "x": "country", "y": "total"}, separators=(",", ":"))}
        assert results["call_c"] == {"shown": True, "type": "bar", "x": "country", "y": "total"}, "what the model got when it called show_chart"
    # History keeps the parts as the page drew them: a reload draws the chart again.
    kept = body["messages"][1]["parts"]
    assert [p["type"] for p in kept if p["type"].startswith("tool-")] == ["tool-get_recent_queries", "tool-execute_query", "tool-show_chart"]
    assert next(p for p in kept if p["type"] == "tool-show_chart")["output"] == chart
    assert next(p for p in kept if p["type"] == "tool-get_recent_queries")["output"] == recent


async def test_regenerate_replaces_the_last_assistant_message(stack: Stack, fake: FakeLLM) -> None:
    fake.then(fake_llm.text("First answer."), fake_llm.text("Better answer."))
    async with gateway(stack.gateway_env(fake)) as url, signed_in(url) as client:
        cid = await new_conversation(client)
        question = user("What is up?")
        first = await ask(client, cid, question)
        old_id = first.of("start")[0]["messageId"]
        again = await send(client, {"id": cid, "message": question, "trigger": "regenerate-message", "messageId": old_id})
        _, body = await stored(client, cid)
    assert again.status == 200
    assert [m["id"] for m in body["messages"]] == [question["id"], again.of("start")[0]["messageId"]]
    assert body["messages"][1]["parts"][1]["text"] == "Better answer."
    assert [m["role"] for m in fake.requests[1]["messages"]] == ["system", "user"], "the model does not see the replaced answer"


async def test_a_stopped_turn_keeps_its_partial_answer(stack: Stack, fake: FakeLLM) -> None:
    cid_chunk = fake_llm.text("Half of an ans")
    fake.then(Stream(cid_chunk.chunks[:2], hang=True))
    async with gateway(stack.gateway_env(fake)) as url, signed_in(url) as client:
        cid = await new_conversation(client)
        body = json.dumps({"id": cid, "message": user("Long question?"), "trigger": "submit-message"}).encode()
        async with client.post("/api/chat", data=body, headers={"Content-Type": "application/json"}) as response:
            seen = b""
            while b"Half of an ans" not in seen:
                seen += await response.content.readany()
            response.close()  # the user pressed stop
        await asyncio.wait_for(fake.closed.wait(), 10)

        async def saved() -> bool:
            return len((await stored(client, cid))[1]["messages"]) == 2

        await eventually(saved, "the stopped turn to be stored", timeout=15)
        _, kept = await stored(client, cid)
    assert kept["messages"][1]["parts"] == [{"type": "step-start"}, {"type": "text", "text": "Half of an ans", "state": "streaming"}]


async def test_conversations_are_listed_newest_first_a_page_at_a_time(stack: Stack, fake: FakeLLM) -> None:
    fake.then(fake_llm.text("Ok."))
    async with gateway(stack.gateway_env(fake)) as url, signed_in(url) as client:
        created = [await new_conversation(client) for _ in range(5)]
        turn = await ask(client, created[1], user("Bring me to the top"))
        assert turn.status == 200
        pages, cursor = [], None
        while True:
            async with client.get("/api/conversations", params={"limit": "2", **({"cursor": cursor} if cursor else {})}) as response:
                assert response.status == 200
                page = await response.json()
            pages.append(page["conversations"])
            cursor = page["next_cursor"]
            if cursor is None:
                break
        async with client.get("/api/conversations", params={"cursor": "garbage"}) as response:
            assert response.status == 400
            assert "cursor" in (await response.json())["error"]["message"]
    listed = [c for page in pages for c in page]
    assert [len(p) for p in pages] == [2, 2, 1]
    assert [c["id"] for c in listed] == [created[1], *[c for c in reversed(created) if c != created[1]]]
    assert listed[0]["title"] == "Bring me to the top" and listed[1]["title"] is None
    times = [c["updated_at"] for c in listed]
    assert times == sorted(times, reverse=True) and all(t.endswith("Z") for t in times)


async def test_rename_and_delete(stack: Stack, fake: FakeLLM) -> None:
    async with gateway(stack.gateway_env(fake)) as url, signed_in(url) as client:
        uid = await me(client)
        cid = await new_conversation(client)
        async with client.patch(f"/api/conversations/{cid}", json={"title": "Sales 2024"}) as response:
            assert response.status == 200 and (await response.json())["title"] == "Sales 2024"
        async with client.patch(f"/api/conversations/{cid}", json={"title": "x" * 81}) as response:
            assert response.status == 400
        assert stack.redis.hget(titles_key(uid), cid) == b"Sales 2024"
        async with client.delete(f"/api/conversations/{cid}") as response:
            assert response.status == 200
        async with client.delete(f"/api/conversations/{cid}") as response:
            assert response.status == 404
        assert stored_status(await stored(client, cid)) == 404
    assert stack.redis.zscore(index_key(uid), cid) is None and stack.redis.hget(titles_key(uid), cid) is None


def stored_status(result: tuple[int, Any]) -> int:
    return result[0]


async def test_someone_elses_conversation_is_404_and_stays_as_it_was(stack: Stack, fake: FakeLLM) -> None:
    fake.then(fake_llm.text("Private answer."), fake_llm.text("Mine."))
    async with gateway(stack.gateway_env(fake)) as url:
        async with signed_in(url) as owner:
            owner_uid = await me(owner)
            cid = await new_conversation(owner)
            assert (await ask(owner, cid, user("A private question"))).status == 200
        before = redis_messages(stack, owner_uid, cid)
        title = stack.redis.hget(titles_key(owner_uid), cid)
        async with signed_in(url) as other:
            other_uid = await me(other)
            assert (await stored(other, cid))[0] == 404
            async with other.patch(f"/api/conversations/{cid}", json={"title": "stolen"}) as response:
                assert response.status == 404
            async with other.delete(f"/api/conversations/{cid}") as response:
                assert response.status == 404
            async with other.get("/api/conversations") as response:
                assert (await response.json())["conversations"] == []
            # Chatting under the same id starts the other user's own conversation, without the owner's history.
            assert (await ask(other, cid, user("Hello?"))).status == 200
    assert redis_messages(stack, owner_uid, cid) == before and len(before) == 2
    assert stack.redis.hget(titles_key(owner_uid), cid) == title == b"A private question"
    assert len(redis_messages(stack, other_uid, cid)) == 2
    assert "A private question" not in json.dumps(fake.requests[1])


async def test_limits_refuse_before_the_model_is_called(stack: Stack, fake: FakeLLM) -> None:
    fake.then(*[fake_llm.text(f"Answer {i}.") for i in range(MAX_MESSAGES // 2)])
    async with gateway(stack.gateway_env(fake)) as url, signed_in(url) as client:
        cid = await new_conversation(client)
        big = await ask(client, cid, user("x" * (MAX_MESSAGE_BYTES + 10)))
        assert big.status == 413 and "CONVERSATION_MAX_MESSAGE_BYTES" in big.body["error"]["message"]
        for i in range(MAX_MESSAGES // 2):
            assert (await ask(client, cid, user(f"Question {i}?"))).status == 200
        full = await ask(client, cid, user("One more?"))
        _, body = await stored(client, cid)
    assert full.status == 409 and full.body["error"]["code"] == "conversation_full"
    assert "CONVERSATION_MAX_MESSAGES" in full.body["error"]["message"]
    assert len(fake.requests) == MAX_MESSAGES // 2, "no model call for a refused turn"
    assert len(body["messages"]) == MAX_MESSAGES


def evalsha_counted(stack: Stack) -> float:
    """session_redis_commands_total{command="evalsha"} summed over both session replicas."""
    total = 0.0
    for session in stack.sessions:
        assert session.env is not None
        body = urllib.request.urlopen(f"http://127.0.0.1:{session.env['OPS_PORT']}/metrics", timeout=5).read().decode()
        total += sum(float(line.split()[-1]) for line in body.splitlines() if line.startswith('session_redis_commands_total{command="evalsha"}'))
    return total


async def test_a_chat_turn_costs_one_redis_command_to_load_and_one_to_append(stack: Stack, fake: FakeLLM) -> None:
    fake.then(fake_llm.text("First."), fake_llm.text("Counted."))
    async with gateway(stack.gateway_env(fake, CHAT_QUOTA_PER_MINUTE="10")) as url, signed_in(url) as client:
        cid = await new_conversation(client)
        assert (await ask(client, cid, user("Warm up"))).status == 200  # scripts are loaded, the session exists
        counter = stack.redis
        before, counted_before = commandstats(counter), evalsha_counted(stack)
        assert (await ask(client, cid, user("Count me"))).status == 200
        after, counted_after = commandstats(counter), evalsha_counted(stack)
        counter.close()
    assert counted_after - counted_before == 3, "session_redis_commands_total counts them too"
    changed = {name: after[name] - before.get(name, 0) for name in after if after[name] != before.get(name, 0)}
    changed.pop("info", None)
    for setup in ("hello", "client|setinfo", "client|setname", "select", "auth", "ping"):  # a pooled connection opened (or health-checked) meanwhile
        changed.pop(setup, None)
    # GETEX: the session; EVALSHA: the quota, the history load, the history append; HGETALL: the source's verified
    # examples (docs/accuracy.md) and the user's own connections. Everything else ran inside those scripts.
    assert changed.pop("getex") == 1
    assert changed.pop("evalsha") == 3
    assert changed.pop("hgetall") == 2
    inner = {"lrange", "llen", "zscore", "hget", "pexpire", "rpush", "zadd", "hsetnx", "time", "hmget", "hset", "ttl", "expire", "rpop"}
    assert set(changed) <= inner, changed
    assert changed["rpush"] == 2 and changed["lrange"] == 1, changed


async def test_bearer_clients_keep_history_under_their_token_subject(stack: Stack, fake: FakeLLM) -> None:
    fake.then(fake_llm.text("Hello, API."))
    sub = f"api-{uuid.uuid4().hex[:10]}"
    async with running_issuer() as issuer:
        policy = json.dumps({"sources": {"default": [{"domains": ["example.com"]}]}})  # under oidc a source needs a rule
        env = stack.gateway_env(fake, AUTH_MODE="oidc", OIDC_ISSUER=issuer.url, OIDC_AUDIENCE=AUDIENCE, AUTH_LOGIN_RATE="0", ACCESS_POLICY=policy)
        headers = {"Authorization": f"Bearer {issuer.token(sub=sub)}"}
        async with gateway(env) as url, browser(url, origin=None) as client:
            async with client.post("/api/conversations", headers=headers) as response:
                assert response.status == 200
                cid = (await response.json())["id"]
            body = json.dumps({"id": cid, "message": user("Over bearer?"), "trigger": "submit-message"}).encode()
            async with client.post("/api/chat", data=body, headers={**headers, "Content-Type": "application/json"}) as response:
                assert response.status == 200
                await response.read()
            async with client.get("/api/conversations", headers=headers) as response:
                listed = (await response.json())["conversations"]
            other = {"Authorization": f"Bearer {issuer.token()}"}
            async with client.get(f"/api/conversations/{cid}", headers=other) as response:
                assert response.status == 404
            assert len(client.cookie_jar) == 0, "bearer requests get no session"
    assert [(c["id"], c["title"]) for c in listed] == [(cid, "Over bearer?")]
    assert len(redis_messages(stack, sub, cid)) == 2


async def test_the_session_service_refuses_data_parts_and_rows_naming_the_field(stack: Stack) -> None:
    nc = await nats.connect(stack.system.nats_url)
    subjects = Subjects(stack.system.prefix)
    uid, cid = f"u-{uuid.uuid4().hex[:8]}", "c1"
    rows = {"type": "tool-execute_query", "toolCallId": "t1", "state": "output-available", "output": {"columns": ["n"], "preview": [[i] for i in range(6)]}}
    cases = [
        ({"type": "data-query-rows", "data": {"rows": [[1]]}}, "`$.messages[0].parts[0].type`"),
        (rows, "`$.messages[0].parts[0].output.preview`"),
    ]
    try:
        for part, path in cases:
            message = {"id": "a1", "role": "assistant", "parts": [part]}
            with pytest.raises(ServiceError) as refused:
                await request(nc, subjects.session_conversation("append"), {"uid": uid, "id": cid, "messages": [message]})
            assert refused.value.code == "bad_request" and path in refused.value.message
    finally:
        await nc.close()
    assert stack.redis.exists(list_key(uid, cid), index_key(uid)) == 0, "nothing was stored"


async def test_the_model_gets_the_newest_history_within_its_limit_while_storage_keeps_all(stack: Stack, fake: FakeLLM) -> None:
    fake.then(*[fake_llm.text(f"Answer {i}.") for i in range(4)])
    async with gateway(stack.gateway_env(fake, LLM_HISTORY_MAX_CHARS="1000")) as url, signed_in(url) as client:
        cid = await new_conversation(client)
        for i in range(4):
            assert (await ask(client, cid, user(f"Question {i} " + "x" * 300))).status == 200
        _, body = await stored(client, cid)
    assert len(body["messages"]) == 8
    last = [m["content"][:10] for m in fake.requests[-1]["messages"] if m["role"] == "user"]
    assert last[-1] == "Question 3" and 1 <= len(last) < 4, last


async def test_an_append_whose_reply_was_lost_is_not_sent_again(start_inprocess, redis_server: RedisServer, nc: nats.NATS) -> None:
    """The append script ran in Redis but its reply never came: its message is pushed once, and the call is served from the fallback."""
    uid, cid = f"u-{uuid.uuid4().hex[:8]}", "c1"
    rdb = redis.Redis.from_url(redis_server.url)
    async with redis_proxy(redis_server.port) as proxy:
        subject = (await start_inprocess(("session",), REDIS_URL=proxy.url)).subjects.session_conversation("append")
        assert (await request(nc, subject, {"uid": uid, "id": cid, "messages": [user("first")]}))["total"] == 1

        proxy.hold_reply_to("EVALSHA", every=True)  # a retry's reply too, and a write-back's: none can complete meanwhile
        reply = await request(nc, subject, {"uid": uid, "id": cid, "messages": [user("second")]}, timeout=10)

        assert proxy.dropped.is_set()
        texts = [msgspec.msgpack.decode(raw)["parts"][0]["text"] for raw in rdb.lrange(list_key(uid, cid), 0, -1)]
        assert texts == ["first", "second"]  # pushed once: the lost reply's script was not run again
        assert reply["fallback"] is True  # a timeout is an outage: the router switched to the fallback, as before
    rdb.close()


async def test_an_append_whose_reply_was_lost_is_stored_once_after_the_write_back(start_inprocess, redis_server: RedisServer, nc: nats.NATS) -> None:
    """The append ran in Redis, its reply was lost, so the call also went to the fallback: the write-back must not push it again."""
    uid, cid = f"u-{uuid.uuid4().hex[:8]}", "c1"
    rdb = redis.Redis.from_url(redis_server.url)
    first, second, third = user("first"), user("second"), user("third")
    async with redis_proxy(redis_server.port) as proxy:
        subjects = (await start_inprocess(("session",), REDIS_URL=proxy.url)).subjects
        append, load = subjects.session_conversation("append"), subjects.session_conversation("load")
        assert (await request(nc, append, {"uid": uid, "id": cid, "messages": [first]}))["total"] == 1

        proxy.hold_reply_to("EVALSHA", every=True)
        assert (await request(nc, append, {"uid": uid, "id": cid, "messages": [second]}, timeout=10))["fallback"] is True
        assert (await request(nc, append, {"uid": uid, "id": cid, "messages": [third]}, timeout=10))["fallback"] is True  # still the outage

        proxy.release()  # Redis answers again: the probe finds it, and the conversation's fallback entry is written back

        async def back_on_redis() -> bool:
            return not (await request(nc, load, {"uid": uid, "id": cid}, timeout=10))["partial"]  # a load on Redis writes its entry back first

        await eventually(back_on_redis, "the session service back on Redis")
        ids = [msgspec.msgpack.decode(raw)["id"] for raw in rdb.lrange(list_key(uid, cid), 0, -1)]
    rdb.close()
    assert ids == [first["id"], second["id"], third["id"]], "each message once, in order"
