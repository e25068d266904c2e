"""The chat's kept system prompt: served at once after it expires, renewed in the background, refused past STALE_S.

The gateway runs in-process (its factory); session and query run as processes, so that the
query service can be stopped while a turn needs its prompt.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import structlog

from services.gateway.chat import context
from tests import fake_llm
from tests.chat_support import API_KEY, gateway, post_chat, signed_in, user_message
from tests.conftest import SystemFactory
from tests.fake_llm import FakeLLM
from tests.harness import eventually


@pytest.fixture
async def fake() -> AsyncIterator[FakeLLM]:
    server = await FakeLLM().start()
    yield server
    await server.stop()


async def test_an_expired_prompt_is_served_while_the_query_service_is_away_until_stale(make_system: SystemFactory, fake: FakeLLM, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    system = make_system(start=("session", "query"), QUERY_SAMPLE_PATH=str(tmp_path / "sample.db"))
    monkeypatch.setattr(context, "CACHE_S", 0.0)  # every kept prompt has expired by the next turn
    fake.then(fake_llm.text("One."), fake_llm.text("Two."))
    env = {"NATS_URL": system.nats_url, "NATS_SUBJECT_PREFIX": system.prefix, "LLM_BASE_URL": fake.base_url, "LLM_MODEL": fake_llm.MODEL, "LLM_API_KEY": API_KEY}
    async with gateway(env) as url, signed_in(url) as client:
        first = await post_chat(client, [user_message("First?")])
        assert system.services.pop("query").stop() == 0
        with structlog.testing.capture_logs() as logs:
            second = await post_chat(client, [user_message("Second?")])

            async def renewal_failed() -> bool:
                return any(entry["event"] == "chat_context_renewal_failed" for entry in logs)

            await eventually(renewal_failed, "the background renewal to fail", timeout=15)
        monkeypatch.setattr(context, "STALE_S", 0.0)  # now the kept prompt is too old to serve
        third = await post_chat(client, [user_message("Third?")])
    assert first.status == 200 and second.status == 200
    assert second.text() == "Two."
    system_prompts = [request["messages"][0] for request in fake.requests]
    assert len(system_prompts) == 2 and system_prompts[1] == system_prompts[0] and system_prompts[0]["role"] == "system"
    assert "SQLite" in system_prompts[0]["content"]
    assert third.status == 503 and third.body["error"]["code"] == "unavailable"
    assert len(fake.requests) == 2, "a turn without a prompt makes no model call"
