"""Verified examples: POST /api/feedback, approval, examples in the model's context, and `examples verify`.

Real session and query services (Redis, SQLite) and an in-process gateway; the fake model
(tests/fake_llm.py) answers. Every refusal is also checked in the store: no example saved.
"""

from __future__ import annotations

import argparse
import io
import sqlite3
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import nats
import pytest

from services.session.examples_admin import run as admin_run
from shared.bus import request
from shared.contracts import ExampleList, ExamplesReply, Subjects
from tests import fake_llm
from tests.chat_support import API_KEY, Turn, gateway, post_chat, signed_in, started_fake, user_message
from tests.conftest import Infra, System, running_system

SOURCE = f"shop_{uuid.uuid4().hex[:8]}"
GADGETS = "SELECT name, colour FROM gadgets WHERE colour = 'red'"
QUESTION = "Which gadgets are red?"
GADGETS_TABLE = "CREATE TABLE gadgets (id INTEGER PRIMARY KEY, name TEXT, colour TEXT); INSERT INTO gadgets VALUES (1, 'Widget', 'red'), (2, 'Gizmo', 'blue');"


@pytest.fixture(scope="module")
def shop_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("examples") / "shop.db"
    conn = sqlite3.connect(path)
    conn.executescript(GADGETS_TABLE)
    conn.close()
    return path


@pytest.fixture(scope="module")
def services(infra: Infra, shop_db: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[System]:
    sample = tmp_path_factory.mktemp("examples-sample") / "sample.db"
    with running_system(infra, "ex", start=("session", "query"), QUERY_SOURCES=f"{SOURCE}=sqlite:///{shop_db}", QUERY_SAMPLE_PATH=str(sample)) as system:
        yield system


def env_of(services: System, fake: fake_llm.FakeLLM, **extra: str) -> dict[str, str]:
    return {
        "NATS_URL": services.nats_url,
        "NATS_SUBJECT_PREFIX": services.prefix,
        "LLM_BASE_URL": fake.base_url,
        "LLM_MODEL": fake_llm.MODEL,
        "LLM_API_KEY": API_KEY,
        "CHAT_QUOTA_PER_MINUTE": "0",
        **extra,
    }


async def stored(services: System) -> list[Any]:
    """What the session service holds for the test's source."""
    nc = await nats.connect(services.nats_url)
    try:
        reply = await request(nc, Subjects(services.prefix).session_examples("list"), ExampleList(source=SOURCE), timeout=5, reply=ExamplesReply)
        return reply.examples
    finally:
        await nc.close()


async def admin(services: System, *argv: str) -> str:
    out = io.StringIO()
    args = argparse.Namespace(examples_command=argv[0], source=None, status=None, id=None)
    if argv[0] in ("approve", "delete"):
        args.source, args.id = argv[1], argv[2]
    elif len(argv) > 1:
        args.source = argv[1]
    await admin_run(args, {"NATS_URL": services.nats_url, "NATS_SUBJECT_PREFIX": services.prefix}, out)
    return out.getvalue()


async def answered_turn(client: aiohttp.ClientSession, fake: fake_llm.FakeLLM, sql: str = GADGETS, question: str = QUESTION) -> tuple[str, Turn]:
    """A turn on a new conversation whose query succeeds; (conversation id, turn)."""
    fake.then(fake_llm.tool_calls(("execute_query", {"sql": sql})), fake_llm.text("Widget."))
    cid = f"conv-{uuid.uuid4().hex[:10]}"
    turn = await post_chat(client, [user_message(question)], id=cid, source=SOURCE)
    assert turn.status == 200 and turn.of("tool-output-available"), turn.raw[-400:]
    return cid, turn


def message_id(turn: Turn) -> str:
    return turn.of("start")[0]["messageId"]


async def rate(client: aiohttp.ClientSession, body: dict[str, Any]) -> tuple[int, Any]:
    async with client.post("/api/feedback", json=body) as response:
        return response.status, await response.json()


def system_prompt(fake: fake_llm.FakeLLM) -> str:
    return fake.requests[-1]["messages"][0]["content"]


async def test_only_the_owner_rates_and_a_thumbs_down_never_saves(services: System) -> None:
    fake = await started_fake()
    try:
        async with gateway(env_of(services, fake, EXAMPLES_REQUIRE_APPROVAL="1")) as url, signed_in(url) as owner, signed_in(url) as other:
            cid, turn = await answered_turn(owner, fake)
            body = {"conversation_id": cid, "message_id": message_id(turn), "rating": "up"}
            status, reply = await rate(other, body)
            assert (status, reply["error"]["code"]) == (404, "not_found")
            assert await stored(services) == []
            status, reply = await rate(owner, {**body, "rating": "down", "note": "wrong colour"})
            assert (status, reply) == (200, {"ok": True, "example": None})
            assert await stored(services) == []
            status, reply = await rate(owner, {**body, "rating": "sideways"})
            assert status == 400 and "rating" in reply["error"]["message"]
            status, reply = await rate(owner, {**body, "message_id": "msg_nope"})
            assert status == 404
            assert await stored(services) == []
            status, reply = await rate(owner, {**body, "note": "the red ones, as sales counts them"})
            assert status == 200 and reply["example"]["status"] == "pending"
            [example] = await stored(services)
            assert (example.question, example.sql, example.source, example.model, example.columns) == (QUESTION, GADGETS, SOURCE, fake_llm.MODEL, ["name", "colour"])
            assert example.author.startswith("dev-") and example.conversation_id == cid and example.note == "the red ones, as sales counts them"
            assert "note: the red ones, as sales counts them" in await admin(services, "list", SOURCE)
            assert (await rate(owner, body))[1]["example"]["id"] == example.id  # a second thumbs-up: the same example
            assert len(await stored(services)) == 1
    finally:
        await fake.stop()
        for example in await stored(services):
            await admin(services, "delete", SOURCE, example.id)


async def test_approval_gates_use_and_only_similar_questions_get_the_example(services: System, shop_db: Path) -> None:
    fake = await started_fake()
    try:
        async with gateway(env_of(services, fake, EXAMPLES_REQUIRE_APPROVAL="1")) as url, signed_in(url) as client:
            cid, turn = await answered_turn(client, fake)
            status, reply = await rate(client, {"conversation_id": cid, "message_id": message_id(turn), "rating": "up"})
            assert status == 200
            example_id = reply["example"]["id"]
            await answered_turn(client, fake, question="Show me the red gadgets")
            assert GADGETS not in system_prompt(fake)  # pending: not used
            listed = await admin(services, "list", SOURCE)
            assert f"{example_id}" in listed and "pending" in listed
            assert f"{SOURCE}/{example_id}: approved" in await admin(services, "approve", SOURCE, example_id)
            await answered_turn(client, fake, question="Show me the red gadgets")
            assert "Verified examples" in system_prompt(fake) and f"SQL: {GADGETS}" in system_prompt(fake)
            assert f"Question: {QUESTION}" in system_prompt(fake)
            await answered_turn(client, fake, sql="SELECT count(*) FROM gadgets", question="How many rows are in the table?")
            assert GADGETS not in system_prompt(fake) and "Verified examples" not in system_prompt(fake)  # unrelated

            # verify flags it once its table is gone, and a flagged example is not used.
            assert "0 flagged" in await admin(services, "verify", SOURCE)
            conn = sqlite3.connect(shop_db)
            conn.executescript("DROP TABLE gadgets")
            conn.close()
            try:
                report = await admin(services, "verify", SOURCE)
                assert f"{SOURCE}/{example_id}: FLAGGED fails: no such table: gadgets" in report and "1 flagged" in report
                [example] = await stored(services)
                assert example.flag == "fails: no such table: gadgets"
                fake.then(fake_llm.text("No idea."))
                await post_chat(client, [user_message("Show me the red gadgets")], source=SOURCE)
                assert GADGETS not in system_prompt(fake)
            finally:
                conn = sqlite3.connect(shop_db)
                conn.executescript(GADGETS_TABLE)
                conn.close()
    finally:
        await fake.stop()
        for example in await stored(services):
            await admin(services, "delete", SOURCE, example.id)


async def test_without_required_approval_a_thumbs_up_teaches_at_once(services: System) -> None:
    fake = await started_fake()
    try:
        async with gateway(env_of(services, fake, EXAMPLES_REQUIRE_APPROVAL="0")) as url, signed_in(url) as client:
            cid, turn = await answered_turn(client, fake)
            status, reply = await rate(client, {"conversation_id": cid, "message_id": message_id(turn), "rating": "up"})
            assert status == 200 and reply["example"]["status"] == "approved"
            await answered_turn(client, fake, question="red gadgets please")
            assert f"SQL: {GADGETS}" in system_prompt(fake)
    finally:
        await fake.stop()
        for example in await stored(services):
            await admin(services, "delete", SOURCE, example.id)


async def test_without_redis_a_thumbs_up_is_refused_clearly_and_chat_goes_on(infra: Infra, shop_db: Path, tmp_path: Path) -> None:
    with running_system(infra, "exr", start=("session", "query"), REDIS_URL="", QUERY_SOURCES=f"{SOURCE}=sqlite:///{shop_db}", QUERY_SAMPLE_PATH=str(tmp_path / "s.db")) as system:
        fake = await started_fake()
        try:
            async with gateway(env_of(system, fake, EXAMPLES_REQUIRE_APPROVAL="0")) as url, signed_in(url) as client:
                cid, turn = await answered_turn(client, fake)  # the turn goes on without examples
                assert "Verified examples" not in system_prompt(fake)
                status, reply = await rate(client, {"conversation_id": cid, "message_id": message_id(turn), "rating": "up"})
        finally:
            await fake.stop()
    assert status == 503 and reply["error"]["code"] == "unavailable" and "REDIS_URL" in reply["error"]["message"]


async def test_a_thumbs_up_on_an_answer_without_a_successful_query_teaches_nothing(services: System) -> None:
    fake = await started_fake(
        fake_llm.tool_calls(("execute_query", {"sql": "SELECT nope FROM gadgets"})),
        fake_llm.text("That failed."),
        fake_llm.text("Just words."),
    )
    try:
        async with gateway(env_of(services, fake, EXAMPLES_REQUIRE_APPROVAL="0")) as url, signed_in(url) as client:
            for question in ("Which gadgets have a nope?", "Say something"):
                cid = f"conv-{uuid.uuid4().hex[:10]}"
                turn = await post_chat(client, [user_message(question)], id=cid, source=SOURCE)
                status, reply = await rate(client, {"conversation_id": cid, "message_id": message_id(turn), "rating": "up"})
                assert status == 200 and reply["example"] is None and "nothing to learn" in reply["note"]
        assert await stored(services) == []
    finally:
        await fake.stop()
