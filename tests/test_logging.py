"""The JSON log lines of a service: every line arrives whole, those of one event-loop turn in one write, errors at once."""

from __future__ import annotations

import asyncio
import io
import json
import os
import subprocess
import sys

from shared.logging import _LineBuffer
from tests.harness import ROOT


class CountingStream(io.BytesIO):
    """A binary stream that remembers each write."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[bytes] = []

    def write(self, data: bytes) -> int:  # type: ignore[override]
        self.writes.append(bytes(data))
        return super().write(data)


async def callbacks_scheduled_so_far() -> None:
    """Return once the loop has run every callback scheduled before this call (they run in order)."""
    done = asyncio.get_running_loop().create_future()
    asyncio.get_running_loop().call_soon(done.set_result, None)
    await done


async def test_lines_of_one_loop_turn_are_one_write_and_errors_go_at_once() -> None:
    stream = CountingStream()
    buffer = _LineBuffer(stream)
    for i in range(3):
        buffer.info(f'{{"n": {i}}}'.encode())
    assert stream.writes == []  # held until the loop turns
    await callbacks_scheduled_so_far()
    assert stream.writes == [b'{"n": 0}\n{"n": 1}\n{"n": 2}\n']

    buffer.info(b'{"n": 3}')
    buffer.error(b'{"n": 4}')  # an error line is written at once, after the lines before it
    assert stream.writes[1:] == [b'{"n": 3}\n{"n": 4}\n']


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
