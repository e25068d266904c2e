"""Every line a service writes to stderr is the same JSON, its libraries' stdlib log records included."""

from __future__ import annotations

import asyncio
import json
import uuid

from tests.conftest import Infra
from tests.harness import Service, free_port, service_env


async def test_a_stdlib_record_from_a_library_comes_out_as_one_json_line_with_its_traceback_as_data(infra: Infra) -> None:
    ops_port = free_port()
    prefix = f"l{uuid.uuid4().hex[:10]}"
    service = Service(
        "session",
        service_env(NATS_URL=infra.nats_url, REDIS_URL=infra.redis_url, NATS_SUBJECT_PREFIX=prefix, OPS_PORT=str(ops_port), SESSION_KV_BUCKET=f"sessions_{prefix}"),
    ).start()
    try:
        # A malformed request on the ops port: aiohttp's server logs it on the stdlib logger
        # `aiohttp.server`, at ERROR, with the parser's exception attached.
        reader, writer = await asyncio.open_connection("127.0.0.1", ops_port)
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\nthis is not a header\r\n\r\n")
        await writer.drain()
        status_line = await reader.readline()
        writer.close()
        await writer.wait_closed()
        assert b" 400 " in status_line
        line = await asyncio.to_thread(service.wait_for_line, lambda text: '"aiohttp.server"' in text, 30.0)
    finally:
        assert service.stop() == 0
    record = json.loads(line)
    assert record["logger"] == "aiohttp.server"
    assert record["level"] == "error"
    assert record["service"] == "session"
    assert record["event"].startswith("Error handling request")
    assert "timestamp" in record
    [frame_group] = record["exception"][-1:]
    assert frame_group["exc_type"] and isinstance(frame_group["frames"], list)
    not_json = [text for text in service.lines if text.strip() and not _is_json_object(text)]
    assert not_json == [], "every stderr line must be one JSON object"


def _is_json_object(text: str) -> bool:
    try:
        return isinstance(json.loads(text), dict)
    except ValueError:
        return False
