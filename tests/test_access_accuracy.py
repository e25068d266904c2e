"""Access control for issue 22's parts (docs/access.md, docs/accuracy.md): `search_schema`, the verified
examples of a turn and POST /api/feedback obey ACCESS_POLICY exactly as describe_schema and execute_query do.

The module's databases, roles and policy are tests/test_access.py's: `sales` (PostgreSQL, role
`analyst`: `staff` without `salary`, its rows by row-level security) for analysts, `hr` (the
same database, role `viewer`: `notes` only) for hr. A source a user may not use is a 404 or a
tool error and never reaches the query or session service; a search runs as the grant's role.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

import nats
import structlog.testing
from prometheus_client import REGISTRY

from services.gateway.app import create_app
from services.gateway.config import GatewayConfig
from shared.bus import request
from shared.contracts import ExampleList, ExampleRef, ExamplesReply, Subjects
from tests import fake_llm
from tests.chat_support import parse_sse
from tests.fake_llm import FakeLLM
from tests.harness import eventually
from tests.test_access import ClientFactory, Gateway, ServerFactory, Setup, executed, gateway, policy, setup

__all__ = ["gateway", "setup"]  # the fixtures of tests/test_access.py, used here


def chat_env(setup: Setup, fake: FakeLLM, **extra: str) -> dict[str, str]:
    return setup.env | {"LLM_BASE_URL": fake.base_url, "LLM_MODEL": fake_llm.MODEL, "LLM_API_KEY": "k", "CHAT_QUOTA_PER_MINUTE": "0"} | extra


def chat_body(question: str = "q", **extra: Any) -> dict[str, Any]:
    return {"id": f"c-{uuid.uuid4().hex[:8]}", "trigger": "submit-message", "messages": [{"id": "m1", "role": "user", "parts": [{"type": "text", "text": question}]}], **extra}


async def turn(client: Any, body: dict[str, Any]) -> list[Any]:
    async with client.post("/api/chat", json=body) as response:
        assert response.status == 200, await response.text()
        return parse_sse(await response.read())


def outputs(parts: list[Any]) -> list[Any]:
    return [p["output"] for p in parts if isinstance(p, dict) and p["type"] == "tool-output-available" and not p.get("preliminary")]


def calls(op: str) -> float:
    """How many `session.examples.<op>` requests the in-process session service served, whatever their outcome."""
    subject = f".session.examples.{op}"
    return sum(s.value for m in REGISTRY.collect() if m.name == "bus_request_seconds" for s in m.samples if s.name == "bus_request_seconds_count" and s.labels.get("subject", "").endswith(subject))


async def examples_of(setup: Setup, source: str) -> list[Any]:
    nc = await nats.connect(setup.env["NATS_URL"])
    try:
        return (await request(nc, Subjects(setup.env["NATS_SUBJECT_PREFIX"]).session_examples("list"), ExampleList(source=source), timeout=5, reply=ExamplesReply)).examples
    finally:
        await nc.close()


async def test_search_schema_finds_only_what_the_grants_role_reads_and_never_another_groups_source(setup: Setup, aiohttp_client: ClientFactory, aiohttp_server: ServerFactory) -> None:
    fake = await FakeLLM().start()
    try:
        chat = Gateway(await aiohttp_server(create_app(GatewayConfig.from_env(chat_env(setup, fake)))), aiohttp_client)
        analyst = await chat.user(f"a-{uuid.uuid4().hex[:6]}@example.com", ["analysts"], uid="user-a")
        hr = await chat.user(f"h-{uuid.uuid4().hex[:6]}@example.com", ["hr"])
        words = "staff salary notes body name"
        staff, notes = f"{setup.schema}.staff", f"{setup.schema}.notes"

        with structlog.testing.capture_logs() as logs:
            fake.then(fake_llm.tool_calls(("search_schema", {"query": words, "source": "sales"})), fake_llm.text("done"))
            parts = await turn(hr, chat_body())
        errors = [p["errorText"] for p in parts if isinstance(p, dict) and p["type"] == "tool-output-error"]
        assert len(errors) == 1 and "unknown source 'sales'" in errors[0]
        assert not [e for e in logs if e["event"] in ("schema_searched", "schema_search_failed", "schema_indexed")]  # it never reached the query service

        async def search(client: Any, role: str, **body: Any) -> dict[str, Any]:
            """The search's output once the index built as `role` holds its sampled values."""
            with structlog.testing.capture_logs() as built:
                fake.then(fake_llm.tool_calls(("search_schema", {"query": words})), fake_llm.text("done"))
                await turn(client, chat_body(**body))  # the first search of a role starts its index

                async def indexed() -> bool:
                    return any(e["event"] == "schema_indexed" and e.get("role") == role for e in built)

                await eventually(indexed, f"the index of role {role}")
            fake.then(fake_llm.tool_calls(("search_schema", {"query": words})), fake_llm.text("done"))
            [found] = outputs(await turn(client, chat_body(**body)))
            return found

        found = await search(analyst, setup.analyst, source="sales")
        assert staff in found["tables"] and notes not in found["tables"]  # the analyst role reads no notes
        block = found["schema"].split(staff, 1)[1].split("\n\n", 1)[0]
        assert "name text" in block and "salary" not in block  # nor staff.salary
        assert "Cleo" not in found["schema"] and "Ada" not in found["schema"]  # values sampled as the role: row-level security shows it none

        found = await search(hr, setup.viewer, source="hr")
        assert notes in found["tables"] and staff not in found["tables"]  # the viewer role reads notes only
        assert "'hello'" in found["schema"]  # notes.body, sampled as the viewer
    finally:
        await fake.stop()


async def test_a_turn_on_another_groups_source_asks_no_examples(setup: Setup, aiohttp_client: ClientFactory, aiohttp_server: ServerFactory) -> None:
    fake = await FakeLLM().start()
    try:
        chat = Gateway(await aiohttp_server(create_app(GatewayConfig.from_env(chat_env(setup, fake)))), aiohttp_client)
        hr = await chat.user(f"h-{uuid.uuid4().hex[:6]}@example.com", ["hr"])
        before = calls("similar")
        async with hr.post("/api/chat", json=chat_body("How many staff are there?", source="sales")) as response:
            assert response.status == 404 and (await response.json())["error"]["code"] == "unknown_source"
        assert calls("similar") == before and fake.requests == []
        fake.then(fake_llm.text("done"))
        await turn(hr, chat_body("How many notes are there?", source="hr"))
        assert calls("similar") == before + 1  # the control: a granted source's turn asks for them
    finally:
        await fake.stop()


async def test_a_thumbs_up_on_a_source_the_user_may_no_longer_use_is_404_and_teaches_nothing(setup: Setup, aiohttp_client: ClientFactory, aiohttp_server: ServerFactory) -> None:
    fake = await FakeLLM().start()
    taught: list[Any] = []
    try:
        uid = f"user-{uuid.uuid4().hex[:8]}"
        before = Gateway(await aiohttp_server(create_app(GatewayConfig.from_env(chat_env(setup, fake)))), aiohttp_client)
        # The policy changed since the answer: `sales` is now for hr only.
        narrowed = policy(setup) | {"sources": policy(setup)["sources"] | {"sales": [{"groups": ["hr"], "role": setup.viewer}]}}
        after = Gateway(await aiohttp_server(create_app(GatewayConfig.from_env(chat_env(setup, fake, ACCESS_POLICY=json.dumps(narrowed))))), aiohttp_client)
        email = f"a-{uuid.uuid4().hex[:6]}@example.com"
        analyst = await before.user(email, ["analysts"], uid=uid)
        fake.then(fake_llm.tool_calls(("execute_query", {"sql": f"SELECT name FROM {setup.schema}.staff ORDER BY id"})), fake_llm.text("Ada and Alan."))
        body = chat_body("Who works here?", source="sales")
        parts = await turn(analyst, body)
        assert outputs(parts) and outputs(parts)[0]["columns"] == [{"name": "name", "type": "text"}]  # it ran (row-level security: no row is this user's)
        rated = {"conversation_id": body["id"], "message_id": next(p["messageId"] for p in parts if isinstance(p, dict) and p["type"] == "start"), "rating": "up"}

        ran = executed("sales")
        proposals = calls("propose")
        later = await after.user(email, ["analysts"], uid=uid)
        async with later.post("/api/feedback", json=rated) as response:
            assert response.status == 404 and (await response.json())["error"]["code"] == "unknown_source"
        assert calls("propose") == proposals  # it never reached the session service
        assert executed("sales") == ran
        assert [e for e in await examples_of(setup, "sales") if e.conversation_id == body["id"]] == []

        async with analyst.post("/api/feedback", json=rated) as response:  # the control: under the old policy it teaches
            assert response.status == 200 and (await response.json())["example"] is not None
        taught = [e for e in await examples_of(setup, "sales") if e.conversation_id == body["id"]]
        assert len(taught) == 1
    finally:
        await fake.stop()
        nc = await nats.connect(setup.env["NATS_URL"])
        try:
            for example in taught:
                await request(nc, Subjects(setup.env["NATS_SUBJECT_PREFIX"]).session_examples("delete"), ExampleRef(source="sales", id=example.id), timeout=5)
        finally:
            await nc.close()
