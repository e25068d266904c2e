"""`make run` from a fresh clone (scripts/run.py, no REDIS_URL): a private Redis keeps sessions and conversations across restarts, and quotas are global."""

from __future__ import annotations

import re
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.chat_support import post_chat, user_message
from tests.client import browser, login
from tests.fake_llm import MODEL, FakeLLM, text
from tests.harness import ROOT, Process, Service, free_port, service_env

UP = "DB Genie is up on"


def make_run(data_dir: Path, port: int, **extra: str) -> Process:
    """scripts/run.py as `make run` starts it: no NATS_URL, no REDIS_URL; OPS_PORT=0 so it shares the machine with other runs."""
    env = service_env(GATEWAY_PORT=str(port), RUN_DATA_DIR=str(data_dir), OPS_PORT="0", **extra)
    for name in ("LLM_BASE_URL", "LLM_MODEL", "LLM_API_KEY"):
        if name not in extra:
            env.pop(name, None)
    run = Process("make-run", [sys.executable, str(ROOT / "scripts" / "run.py")], env=env, cwd=ROOT).start()
    run.wait_for_line(lambda line: UP in line, timeout=90)
    return run


def printed_url(run: Process, kind: str) -> str:
    line = run.wait_for_line(lambda line: line.startswith(f"run: started a private {kind}"))
    found = re.search(r"(nats|redis)://[0-9.:/]+", line)
    assert found, line
    return found.group(0)


@pytest.fixture
async def fake() -> AsyncIterator[FakeLLM]:
    model = await FakeLLM().start()
    yield model
    await model.stop()


async def test_a_fresh_make_run_keeps_the_session_and_conversations_across_a_restart(tmp_path: Path, fake: FakeLLM) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    run = make_run(tmp_path / "var", port)
    try:
        # No model configured: run.py says how to point it at one, and so does the chat.
        guidance = "\n".join(run.lines)
        assert "no language model is configured" in guidance and "api.openai.com" in guidance and "11434" in guidance
        printed_url(run, "Redis-compatible server")
        async with browser(url) as client:
            await login(client, "fresh@example.com", "Fresh")
            async with client.post("/api/chat", json={"id": "c", "messages": [user_message("hi")]}) as response:
                assert response.status == 503
                assert "LLM_BASE_URL" in (await response.json())["error"]["message"]
            async with client.post("/api/conversations", json={"title": "Survives"}) as response:
                assert response.status in (200, 201), await response.text()
                conversation = (await response.json())["conversation_id"]
            async with client.get("/api/conversations") as response:
                assert response.status == 200, await response.text()
                listed = await response.json()
            assert conversation in str(listed)
            assert run.stop() == 0
            # Restart (now with a model): the same cookie still signs in, and the conversation is listed.
            fake.then(text("one"), text("two"), text("three"))
            model = {"LLM_BASE_URL": fake.base_url, "LLM_MODEL": MODEL, "LLM_API_KEY": "sk-run", "CHAT_QUOTA_PER_MINUTE": "0", "CHAT_QUOTA_PER_HOUR": "2"}
            run = make_run(tmp_path / "var", port, **model)
            async with client.get("/api/me") as response:
                assert response.status == 200
                assert (await response.json())["user"]["email"] == "fresh@example.com"
            async with client.get("/api/conversations") as response:
                assert response.status == 200
                assert conversation in str(await response.json())
            # Quotas are counted in the one Redis: a second gateway on the same NATS sees the first one's turns.
            other_port = free_port()
            nats_url = printed_url(run, "nats-server")
            other = Service("gateway", service_env(NATS_URL=nats_url, GATEWAY_PORT=str(other_port), OPS_PORT="0", AUTH_MODE="dev", **model)).start()
            try:
                assert (await post_chat(client, [user_message("one")])).status == 200
                async with browser(f"http://127.0.0.1:{other_port}") as second:
                    second.cookie_jar.update_cookies({c.key: c.value for c in client.cookie_jar})
                    assert (await post_chat(second, [user_message("two")])).status == 200
                    refused = await post_chat(client, [user_message("three")])
                    assert refused.status == 429, refused.body
                    async with second.get("/api/quota") as response:
                        assert (await response.json())["hour"]["used"] == 2
            finally:
                assert other.stop() == 0
    finally:
        assert run.stop() == 0
    assert len(fake.requests) == 2
    assert (tmp_path / "var").is_dir() and any((tmp_path / "var").iterdir())
