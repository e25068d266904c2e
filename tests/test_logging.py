"""The JSON log lines of a service: every line arrives whole, those of a flush interval in one write, errors at once,
and the records of its libraries' stdlib loggers in the same JSON."""

from __future__ import annotations

import asyncio
import io
import json
import os
import subprocess
import sys
import uuid

from shared.logging import _LineBuffer
from tests.conftest import Infra
from tests.harness import ROOT, Service, free_port, service_env


class CountingStream(io.BytesIO):
    """A binary stream that remembers each write."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[bytes] = []
        self.written = asyncio.Event()

    def write(self, data: bytes) -> int:  # type: ignore[override]
        self.writes.append(bytes(data))
        self.written.set()
        return super().write(data)


async def callbacks_scheduled_so_far() -> None:
    """Return once the loop has run every callback scheduled before this call (they run in order)."""
    done = asyncio.get_running_loop().create_future()
    asyncio.get_running_loop().call_soon(done.set_result, None)
    await done


async def test_lines_of_several_loop_turns_are_one_write_and_errors_go_at_once() -> None:
    stream = CountingStream()
    buffer = _LineBuffer(stream)
    for i in range(3):
        buffer.info(f'{{"n": {i}}}'.encode())
        await callbacks_scheduled_so_far()  # the loop turns between the lines
    assert stream.writes == []  # held until the flush interval ends
    await asyncio.wait_for(stream.written.wait(), 10)
    assert stream.writes == [b'{"n": 0}\n{"n": 1}\n{"n": 2}\n']

    buffer.info(b'{"n": 3}')
    buffer.error(b'{"n": 4}')  # an error line is written at once, after the lines before it
    assert stream.writes[1:] == [b'{"n": 3}\n{"n": 4}\n']


async def test_with_no_flush_interval_the_lines_of_one_loop_turn_are_one_write() -> None:
    """LOG_FLUSH_MS=0, as the tests' services run: held only until the loop turns."""
    stream = CountingStream()
    buffer = _LineBuffer(stream, flush_after_s=0)
    for i in range(3):
        buffer.info(f'{{"n": {i}}}'.encode())
    assert stream.writes == []
    await callbacks_scheduled_so_far()
    assert stream.writes == [b'{"n": 0}\n{"n": 1}\n{"n": 2}\n']


async def test_a_full_buffer_is_written_at_once() -> None:
    stream = CountingStream()
    buffer = _LineBuffer(stream)
    for i in range(buffer.MAX_LINES):
        buffer.info(f'{{"n": {i}}}'.encode())
    assert len(stream.writes) == 1
    assert stream.writes[0].count(b"\n") == buffer.MAX_LINES


def test_outside_a_loop_a_line_is_written_at_once() -> None:
    stream = CountingStream()
    _LineBuffer(stream).info(b'{"n": 1}')
    assert stream.writes == [b'{"n": 1}\n']


def test_lines_logged_just_before_a_service_fails_come_before_its_last_line() -> None:
    program = """
import asyncio, structlog
from shared.logging import setup_logging
from shared.runtime import run

async def main():
    setup_logging("demo")
    log = structlog.get_logger()
    for i in range(3):
        log.info("step", n=i)
    raise RuntimeError("boom")

run(main(), "demo")
"""
    env = {k: v for k, v in os.environ.items() if k != "LOG_LEVEL"}
    done = subprocess.run([sys.executable, "-c", program], capture_output=True, cwd=ROOT, env=env, timeout=60, check=False)
    lines = [json.loads(line) for line in done.stderr.decode().splitlines()]
    assert done.returncode == 1
    assert [line["event"] for line in lines] == ["step", "step", "step", "service_failed"]
    assert [line.get("n") for line in lines[:3]] == [0, 1, 2]


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


def test_a_logged_traceback_carries_no_local_variables() -> None:
    """A password in a local variable (a database URL being opened) must not reach the log with the traceback."""
    program = """
import structlog
from shared.logging import setup_logging

setup_logging("demo")
log = structlog.get_logger()

def open_database(password):
    url = "postgresql://reader:" + password + "@db/app"
    raise ConnectionError("cannot connect")

try:
    open_database("s3cret-in-a-local")
except ConnectionError:
    log.exception("open_failed")
"""
    env = {k: v for k, v in os.environ.items() if k != "LOG_LEVEL"}
    done = subprocess.run([sys.executable, "-c", program], capture_output=True, cwd=ROOT, env=env, timeout=60, check=False)
    [line] = [json.loads(raw) for raw in done.stderr.decode().splitlines()]
    assert line["event"] == "open_failed"
    frames = line["exception"][0]["frames"]
    assert [frame["name"] for frame in frames] == ["<module>", "open_database"]
    assert all("locals" not in frame for frame in frames)
    assert "s3cret-in-a-local" not in done.stderr.decode()
