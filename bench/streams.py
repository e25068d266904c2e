"""Concurrent `/api/query` streams and `/api/chat` turns for `bench.scale --streams/--turns`: failures, time to the first byte, gateway RSS and CPU per stream.

Two gateways, three session and three query replicas on one set-up (one NATS and one Redis,
or the clusters); N streams of a small result, or N chat turns against the tests' fake model
(tests/fake_llm.py, served on loopback from a thread of this process) made slow by a delay
before each chunk, opened at once with aiohttp and read to their end, the gateways' RSS
sampled while they are open.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass

import aiohttp

from bench.scale import cpu_seconds, login
from bench.stack import service_env
from tests import fake_llm
from tests.fake_llm import FakeLLM
from tests.harness import ROOT, Process, Service, free_port, http_status, wait_until

SQL = "SELECT 1 AS one, 'a small result' AS what"


@dataclass
class StreamsRun:
    setup: str
    streams: int
    failed: int
    p99_first_byte_ms: float
    rss_per_stream_kb: float
    gateway_cpu_ms_per_stream: float
    kind: str = "query"
    peak_open: int = 0  # streams open at the same moment, as the client saw them


@dataclass
class ChatLoad:
    """How slow the fake model is: `chunks` text deltas, `delay_s` before each."""

    chunks: int = 40
    delay_s: float = 0.05

    @property
    def pieces(self) -> list[str]:
        return [f"w{i} " for i in range(self.chunks)]


def rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


class OpenCount:
    """Streams between their first byte and their end; `peak` is the most at once."""

    def __init__(self) -> None:
        self.now = 0
        self.peak = 0

    def opened(self) -> None:
        self.now += 1
        self.peak = max(self.peak, self.now)


async def _read(response: aiohttp.ClientResponse, started: float, count: OpenCount) -> tuple[float | None, bytes]:
    """ms to the first byte and the whole body, counted open from its first byte to its end."""
    first: float | None = None
    body = b""
    try:
        async for chunk in response.content.iter_any():
            if first is None:
                first = (time.perf_counter() - started) * 1000
                count.opened()
            body += chunk
    finally:
        if first is not None:
            count.now -= 1
    return first, body


async def _one(session: aiohttp.ClientSession, url: str, count: OpenCount) -> float | None:
    """ms to the first byte of the stream, or None when it failed (status, or no final output part)."""
    started = time.perf_counter()
    async with session.post(f"{url}/api/query", json={"sql": SQL}, headers={"Origin": url}) as response:  # a browser's fetch() sends its Origin
        if response.status != 200:
            return None
        first, body = await _read(response, started, count)
    return first if b'"tool-output-available"' in body and b"[DONE]" in body else None


def _streamed_text(body: bytes) -> tuple[str, set[str]]:
    """The text a UI message stream carried, and the types of its parts."""
    text, kinds = "", set()
    for line in body.split(b"\n"):
        if line.startswith(b"data: {"):
            part = json.loads(line[6:])
            kinds.add(part["type"])
            if part["type"] == "text-delta":
                text += part["delta"]
    return text, kinds


async def _turn(session: aiohttp.ClientSession, url: str, count: OpenCount, expected: str) -> float | None:
    """ms to the first byte of a text-only chat turn, or None when it failed (status, an error part, or not the whole text)."""
    body = {"id": f"bench-{uuid.uuid4().hex}", "messages": [{"id": "u1", "role": "user", "parts": [{"type": "text", "text": "Hi"}]}], "trigger": "submit-message"}
    started = time.perf_counter()
    async with session.post(f"{url}/api/chat", json=body, headers={"Origin": url}) as response:
        if response.status != 200:
            return None
        first, raw = await _read(response, started, count)
    text, kinds = _streamed_text(raw)
    return first if text == expected and "finish" in kinds and "error" not in kinds and raw.endswith(b"[DONE]\n\n") else None


OpenOne = Callable[[aiohttp.ClientSession, str, OpenCount], Awaitable[float | None]]


async def _open_all(urls: list[str], cookie: str, n: int, one: OpenOne = _one) -> tuple[list[float | None], int]:
    connector = aiohttp.TCPConnector(limit=0)
    count = OpenCount()
    # The cookie as a header: aiohttp's cookie jar keeps none for an IP address such as 127.0.0.1.
    async with aiohttp.ClientSession(connector=connector, headers={"Cookie": f"session={cookie}"}, timeout=aiohttp.ClientTimeout(total=120)) as session:
        firsts = await asyncio.gather(*(one(session, urls[i % len(urls)], count) for i in range(n)))
    return firsts, count.peak


@contextlib.contextmanager
def _replicas(nats_url: str, redis_url: str, **gateway_env: str) -> Iterator[tuple[list[Process], list[str], str]]:
    """Three session and three query replicas and two gateways: (the gateways, their URLs, a logged-in session cookie)."""
    prefix = f"bench{uuid.uuid4().hex[:8]}"
    common = {"NATS_URL": nats_url, "NATS_SUBJECT_PREFIX": prefix, "OPS_PORT": "0"}
    processes: list[Process] = []
    ports = [free_port() for _ in range(2)]
    urls = [f"http://127.0.0.1:{port}" for port in ports]
    try:
        for _ in range(3):
            processes.append(Service("session", service_env(**common, REDIS_URL=redis_url, SESSION_KV_BUCKET=f"sessions_{prefix}")).start())
            processes.append(Service("query", service_env(**common, QUERY_QUEUE_MAX="1000", QUERY_QUEUE_WAIT_S="10")).start())
        gateways = []
        for port in ports:
            env = service_env(**common, GATEWAY_HOST="127.0.0.1", GATEWAY_PORT=str(port), AUTH_MODE="dev", LOG_LEVEL="WARNING", **gateway_env)  # no line per request
            gateways.append(Process("gateway", [sys.executable, "-m", "services.gateway"], env=env, cwd=ROOT).start())
        processes += gateways
        for url in urls:
            wait_until(lambda url=url: http_status(f"{url}/api/me") == 401, timeout=60, what=f"{url} to answer")
        yield gateways, urls, login(urls[0])
    finally:
        for process in reversed(processes):
            process.stop()


def _measured(name: str, kind: str, n: int, gateways: list[Process], open_all: Callable[[], tuple[list[float | None], int]]) -> StreamsRun:
    """Open n streams with `open_all`, sampling the gateways' RSS meanwhile."""
    pids = [g.proc.pid for g in gateways if g.proc]
    before_rss = sum(rss_kb(pid) for pid in pids)
    before_cpu = sum(cpu_seconds(pid) for pid in pids)
    peak = [before_rss]
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.05):
            peak[0] = max(peak[0], sum(rss_kb(pid) for pid in pids))

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        firsts, peak_open = open_all()
    finally:
        done.set()
        sampler.join()
    ok = sorted(f for f in firsts if f is not None)
    p99 = ok[min(len(ok) - 1, int(len(ok) * 0.99))] if ok else float("nan")
    gateway_cpu = sum(cpu_seconds(pid) for pid in pids) - before_cpu
    run = StreamsRun(name, n, n - len(ok), p99, (peak[0] - before_rss) / n, 1000 * gateway_cpu / n, kind, peak_open)
    print(f"  {name}: {n} {kind} streams: {run}", flush=True)
    return run


def measure_streams(name: str, nats_url: str, redis_url: str, counts: list[int]) -> list[StreamsRun]:
    with _replicas(nats_url, redis_url) as (gateways, urls, cookie):
        asyncio.run(_open_all(urls, cookie, 20))  # warm-up: connections, pools, scripts
        return [_measured(name, "query", n, gateways, lambda n=n: asyncio.run(_open_all(urls, cookie, n))) for n in counts]


async def _script(fake: FakeLLM, replies: list[fake_llm.Reply]) -> None:
    """Add replies to the fake's script from its own thread."""
    fake.then(*replies)


@contextlib.contextmanager
def _fake_model() -> Iterator[tuple[FakeLLM, asyncio.AbstractEventLoop]]:
    """The fake model served from its own thread and event loop, so the client's loop does not slow its replies."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    fake = asyncio.run_coroutine_threadsafe(FakeLLM().start(), loop).result(timeout=10)
    try:
        yield fake, loop
    finally:
        asyncio.run_coroutine_threadsafe(fake.stop(), loop).result(timeout=30)
        loop.call_soon_threadsafe(loop.stop)
        thread.join()
        loop.close()


def measure_chat(name: str, nats_url: str, redis_url: str, turns: int, slow: ChatLoad) -> StreamsRun:
    """`turns` text-only chat turns at once, each against a slow reply of the fake model."""
    expected = "".join(slow.pieces)
    with _fake_model() as (fake, loop):
        no_quota = {f"CHAT_QUOTA_PER_{window}": "0" for window in ("MINUTE", "HOUR", "DAY")}
        with _replicas(nats_url, redis_url, LLM_BASE_URL=fake.base_url, LLM_MODEL=fake_llm.MODEL, LLM_API_KEY="bench", **no_quota) as (gateways, urls, cookie):

            def open_all(n: int, delay_s: float) -> tuple[list[float | None], int]:
                replies = [fake_llm.text(*slow.pieces, delay_s=delay_s) for _ in range(n)]
                asyncio.run_coroutine_threadsafe(_script(fake, replies), loop).result(timeout=10)
                return asyncio.run(_open_all(urls, cookie, n, lambda session, url, count: _turn(session, url, count, expected)))

            open_all(20, 0.0)  # warm-up: connections, pools, the prompt's schema
            return _measured(name, "chat", turns, gateways, lambda: open_all(turns, slow.delay_s))


def streams_table(runs: list[StreamsRun]) -> str:
    lines = [f"{'streams at once':<44}{'failed':>8}{'peak open':>11}{'p99 first byte ms':>20}{'gateway RSS KiB/stream':>24}{'gateway CPU ms/stream':>23}"]
    for r in runs:
        what = "POST /api/query" if r.kind == "query" else "POST /api/chat (slow model)"
        lines.append(f"{f'{r.setup}: {r.streams} {what}':<44}{r.failed:>8}{r.peak_open:>11}{r.p99_first_byte_ms:>20.1f}{r.rss_per_stream_kb:>24.1f}{r.gateway_cpu_ms_per_stream:>23.2f}")
    by_setup: dict[str, list[StreamsRun]] = {}
    for r in runs:
        if r.kind == "query":
            by_setup.setdefault(r.setup, []).append(r)
    for setup, same in by_setup.items():
        if len(same) > 1:
            lo, hi = same[0], same[-1]
            rss = hi.rss_per_stream_kb / max(lo.rss_per_stream_kb, 0.001)
            cpu = hi.gateway_cpu_ms_per_stream / max(lo.gateway_cpu_ms_per_stream, 0.001)
            lines.append(f"{setup}: from {lo.streams} to {hi.streams} streams, RSS/stream x{rss:.2f}, CPU/stream x{cpu:.2f}")
    return "\n".join(lines)
