"""History beyond the happy path: erasure with the admin CLI, and a Redis outage in the middle of a conversation.

Each test breaks or empties its Redis, so each gets a private redis-server, two session
replicas and a query service of its own.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from services.session.config import RedisTarget
from services.session.history_redis import HistoryRedis
from services.session.keys import index_key, list_key, titles_key
from services.session.redis_store import create_client
from tests import fake_llm
from tests.chat_support import gateway, signed_in
from tests.client import browser, login
from tests.conftest import Infra
from tests.fake_llm import FakeLLM
from tests.harness import ROOT, RedisServer, service_env, wait_until
from tests.history_support import Stack, ask, build_stack, fake_fixture, stored, user  # noqa: F401 (fake_fixture is a fixture)
from tests.redis_busy import busy_redis
from tests.test_history import me, new_conversation, redis_messages


@pytest.fixture(name="private_stack")
def private_stack_fixture(infra: Infra, redis_server: RedisServer, tmp_path: Path) -> Iterator[Stack]:
    built = build_stack(infra, redis_server, str(tmp_path / "sample.db"))
    try:
        yield built
    finally:
        codes = built.stop()
    assert all(code == 0 for code in codes.values()), f"services did not stop cleanly: {codes}"


def admin(stack: Stack, *args: str) -> subprocess.CompletedProcess[str]:
    env = service_env(REDIS_URL=stack.redis_server.url)
    return subprocess.run([sys.executable, "-m", "services.session.admin", *args], env=env, cwd=ROOT, capture_output=True, text=True, timeout=30)


async def test_erase_deletes_every_conversation_and_session_of_a_user_and_only_theirs(private_stack: Stack, fake: FakeLLM) -> None:
    fake.then(fake_llm.text("One."), fake_llm.text("Two."), fake_llm.text("Kept."))
    async with gateway(private_stack.gateway_env(fake)) as url:
        async with signed_in(url) as gone, signed_in(url) as stays:
            uid, other = await me(gone), await me(stays)
            first, second = await new_conversation(gone), await new_conversation(gone)
            assert (await ask(gone, first, user("Mine?"))).status == 200
            assert (await ask(gone, second, user("Also mine?"))).status == 200
            kept = await new_conversation(stays)
            assert (await ask(stays, kept, user("Keep me"))).status == 200

            listing = admin(private_stack, "conversations", "list", "--user", uid)
            assert listing.returncode == 0, listing.stderr
            assert first in listing.stdout and second in listing.stdout and "Also mine?" in listing.stdout
            assert "2 conversations of user" in listing.stdout

            erased = admin(private_stack, "erase", "--user", uid)
            assert erased.returncode == 0, erased.stderr
            assert f"erased 2 conversations, 0 connections and 1 session of user {uid}" in erased.stdout
            again = admin(private_stack, "erase", "--user", uid)
            assert again.returncode == 0 and f"erased 0 conversations, 0 connections and 0 sessions of user {uid}" in again.stdout

            async with gone.get("/api/me") as response:
                assert response.status == 401, "signed out everywhere"
            assert (await stored(stays, kept))[0] == 200
    rdb = private_stack.redis
    left = [k for k in rdb.scan_iter(match=f"*{uid}*") if not k.startswith(b"limit:")]  # quota counters expire with their window
    assert left == [], "nothing of the erased user's history or sessions is left in Redis"
    assert len(redis_messages(private_stack, other, kept)) == 2 and rdb.zscore(index_key(other), kept) is not None


async def test_a_redis_outage_mid_conversation_loses_nothing(private_stack: Stack, fake: FakeLLM) -> None:
    stack = private_stack
    fake.then(fake_llm.text("Before."), fake_llm.text("During."), fake_llm.text("After."))
    rdb = stack.redis
    rdb.config_set("busy-reply-threshold", 50)

    email = f"outage-{uuid.uuid4().hex[:8]}@example.com"
    async with gateway(stack.gateway_env(fake)) as url, browser(url) as before, browser(url) as client:
        await login(before, email, "Outage")
        uid = await me(before)
        cid = await new_conversation(before)
        assert (await ask(before, cid, user("Before the outage?"))).status == 200

        async with busy_redis(stack.redis_server.url) as end_script:
            marks = [len(s.lines) for s in stack.sessions]
            # Sessions held only in Redis are out of reach now: sign in again (that session lives in the fallback).
            await login(client, email, "Outage")
            assert await me(client) == uid
            during = await ask(client, cid, user("During the outage?"))
            assert during.status == 200 and during.text() == "During."
            # Every replica serves from the shared fallback; the conversation's outage entry is there.
            await asyncio.to_thread(wait_until, lambda: any('"conversation_append_fallback"' in line for s in stack.sessions for line in s.lines), 10.0, "the append to go to the fallback")
            await end_script()
        for session, mark in zip(stack.sessions, marks, strict=True):
            if any('"store_degraded"' in line for line in session.lines[mark:]):
                await asyncio.to_thread(session.wait_for_line, lambda line: '"store_recovered"' in line, 60.0, mark)

        def written_back() -> bool:
            return len(redis_messages(stack, uid, cid)) == 4

        await asyncio.to_thread(wait_until, written_back, 60.0, "the outage's messages to be written back")
        assert (await ask(client, cid, user("After the outage?"))).status == 200
        status, body = await stored(client, cid)
    assert status == 200
    texts = ["".join(p.get("text", "") for p in m["parts"]) for m in body["messages"]]
    assert texts == ["Before the outage?", "Before.", "During the outage?", "During.", "After the outage?", "After."]
    assert [m["role"] for m in fake.requests[2]["messages"]][1:] == ["user", "assistant", "user", "assistant", "user"], "the model saw all of it"
    assert json.loads(json.dumps(body))["title"] == "Before the outage?"


async def test_write_back_pushes_each_outage_message_once(redis_server: RedisServer) -> None:
    """A peer appending while another replica writes back: each newer version pushes only what is new, replays nothing."""
    store = HistoryRedis(create_client(RedisTarget(redis_server.url, "REDIS_URL")), lifetime_s=3600)
    rdb = redis.Redis.from_url(redis_server.url)
    uid, cid = "writer", "c1"
    try:
        await store.append(uid, cid, [b"m0"], max_messages=100, replace_last_of=None, title="Before")

        async def write(version: int, epoch: str, messages: list[bytes], **kind: bool) -> bool:
            return await store.write_back(
                uid, cid, version=version, epoch=epoch, replaces=kind.get("replaces", False), deleted=kind.get("deleted", False), title_mode="initial", title="During", messages=messages
            )

        assert await write(10, "e1", [b"m1", b"m2"])
        assert await write(11, "e1", [b"m1", b"m2", b"m3"])  # the entry grew after the first write-back
        assert not await write(11, "e1", [b"m1", b"m2", b"m3"])  # the same version again: skipped
        assert not await write(9, "e1", [b"m1"])  # an older version: skipped
        assert await write(12, "e2", [b"m4"])  # a new entry (a later outage)
        assert rdb.lrange(list_key(uid, cid), 0, -1) == [b"m0", b"m1", b"m2", b"m3", b"m4"]
        assert rdb.hget(titles_key(uid), cid) == b"Before", "an initial title never replaces one"

        assert await write(13, "e3", [b"n1"], replaces=True)  # deleted, then written again, during an outage
        assert rdb.lrange(list_key(uid, cid), 0, -1) == [b"n1"]
        assert rdb.hget(titles_key(uid), cid) == b"During"
        assert await write(14, "e4", [], replaces=True, deleted=True)
        assert rdb.exists(list_key(uid, cid)) == 0 and rdb.zscore(index_key(uid), cid) is None
    finally:
        await store.close()
        rdb.close()
