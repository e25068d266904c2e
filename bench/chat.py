"""`python -m bench.chat`: what POST /api/chat adds over the model it calls, and how fast its execute_query streams rows.

One run, with nats-server, redis-server, session, query and gateway processes, and the
scripted fake model of the tests (tests/fake_llm.py) served from this process:

- time to the first text delta: a text-only turn through the gateway (session lookup, quota,
  sources and schema, the openai SDK, the UI message stream) against the same fake model
  called directly over HTTP; median of --turns each, interleaved; the difference is what
  the gateway adds (goal: <= 5 ms). Two more series show where it goes: the gateway's own
  model client (services.gateway.chat.model.ModelClient) called from this process, which
  is the model's share, the openai SDK's plain `chat.completions.create` for reference, and
  one session-service round trip over NATS (what the session lookup, the conversation load
  and the quota check each cost before the model is called);
- a turn whose `execute_query` returns --rows SQLite rows: rows/s to the client, against
  POST /api/query of the same SQL in the same run, paired runs (goal: within 10 %).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

import aiohttp
import nats
from openai import AsyncOpenAI

from bench.query import build_sqlite, login, sse_parts, stream_query
from bench.stack import http_ok, running_stack
from services.gateway.chat.model import ModelClient, TextDelta
from services.gateway.chat.prompt import EXECUTE_QUERY, TOOLS
from services.gateway.config import GatewayConfig
from shared.bus import request
from shared.contracts import Subjects
from tests import fake_llm
from tests.fake_llm import FakeLLM
from tests.harness import wait_until

TARGET_ADDED_MS = 5.0
TARGET_RATE_RATIO = 0.9
SQL = "SELECT id, qty, price, name, created FROM t"


async def first_delta_direct(http: aiohttp.ClientSession, fake: FakeLLM) -> float:
    """ms from sending a completion request to the fake until its first content chunk arrives."""
    body = {"model": fake_llm.MODEL, "stream": True, "messages": [{"role": "user", "content": "Hi"}]}
    started = time.perf_counter()
    async with http.post(f"{fake.base_url}/chat/completions", json=body) as response:
        async for line in response.content:
            if line.startswith(b"data: {") and b'"content": "Hello' in line:
                return (time.perf_counter() - started) * 1000
            if line.startswith(b"data: [DONE]"):
                break
    raise RuntimeError("the fake sent no text")


async def first_delta_sdk(client: AsyncOpenAI) -> float:
    """ms from calling the openai SDK against the fake until its first text delta: the SDK's share of the gateway's figure."""
    started = time.perf_counter()
    first = None
    stream = await client.chat.completions.create(model=fake_llm.MODEL, messages=[{"role": "user", "content": "Hi"}], stream=True)
    async with stream:
        async for chunk in stream:
            if first is None and chunk.choices and chunk.choices[0].delta.content:
                first = (time.perf_counter() - started) * 1000
    if first is None:
        raise RuntimeError("the fake sent no text")
    return first


async def first_delta_model_client(model: ModelClient) -> float:
    """ms from asking the gateway's model client for a step until its first text delta (with the tools, as a turn asks)."""
    started = time.perf_counter()
    first = None
    async for event in model.step([{"role": "user", "content": "Hi"}], TOOLS):
        if first is None and isinstance(event, TextDelta):
            first = (time.perf_counter() - started) * 1000
    if first is None:
        raise RuntimeError("the fake sent no text")
    return first


async def session_round_trip(nc: nats.NATS, subjects: Subjects) -> float:
    """ms for one session.get over NATS (the session service and Redis behind it), as the gateway's session lookup makes it."""
    started = time.perf_counter()
    await request(nc, subjects.session_get, {"sid": "bench-no-such-session"}, timeout=5)
    return (time.perf_counter() - started) * 1000


async def first_delta_gateway(http: aiohttp.ClientSession, base_url: str) -> float:
    """ms from posting a chat turn to the gateway until the first text-delta part arrives; the rest is read too."""
    # A new conversation each turn: the stored history would otherwise grow turn by turn, and the figure with it.
    body = {"id": f"bench-{uuid.uuid4().hex}", "messages": [{"id": "u1", "role": "user", "parts": [{"type": "text", "text": "Hi"}]}], "trigger": "submit-message"}
    started = time.perf_counter()
    first = None
    async with http.post(f"{base_url}/api/chat", json=body) as response:
        if response.status != 200:
            raise RuntimeError(f"/api/chat answered {response.status}: {await response.text()}")
        async for line in response.content:
            if first is None and line.startswith(b'data: {"type":"text-delta"'):
                first = (time.perf_counter() - started) * 1000
    if first is None:
        raise RuntimeError("the turn streamed no text")
    return first


async def chat_rows(http: aiohttp.ClientSession, base_url: str, expected: int) -> tuple[int, float]:
    """A turn whose execute_query streams `expected` rows: (rows, seconds from the request to the final output)."""
    body = {
        "id": f"bench-{uuid.uuid4().hex}",
        "messages": [{"id": "u1", "role": "user", "parts": [{"type": "text", "text": "All rows"}]}],
        "trigger": "submit-message",
        "source": "bench_sqlite",
    }
    started = time.perf_counter()
    rows, seconds, final = 0, 0.0, None
    async with http.post(f"{base_url}/api/chat", json=body) as response:
        if response.status != 200:
            raise RuntimeError(f"/api/chat answered {response.status}: {await response.text()}")
        async for part in sse_parts(response):
            if part is None:
                continue
            if part["type"] == "data-query-rows":
                rows += len(part["data"]["rows"])
            elif part["type"] == "tool-output-available" and not part.get("preliminary"):
                final, seconds = part["output"], time.perf_counter() - started
            elif part["type"] in ("tool-output-error", "error"):
                raise RuntimeError(f"the turn failed: {part}")
    if rows != expected or final is None or final.get("row_count") != expected:
        raise RuntimeError(f"incomplete turn: rows={rows} final={final}")
    return rows, seconds


Series = dict[str, list[float]]


async def measure(base_url: str, fake: FakeLLM, nats_url: str, prefix: str, args: argparse.Namespace) -> tuple[Series, list[float], list[float]]:
    nc = await nats.connect(nats_url)
    subjects = Subjects(prefix)
    session: list[float] = []
    direct: list[float] = []
    sdk: list[float] = []
    own: list[float] = []
    client = AsyncOpenAI(base_url=fake.base_url, api_key="bench")
    model = ModelClient(GatewayConfig.from_env({"LLM_BASE_URL": fake.base_url, "LLM_MODEL": fake_llm.MODEL, "LLM_API_KEY": "bench"}))
    through: list[float] = []
    chat_rates: list[float] = []
    query_rates: list[float] = []
    # Origin as a browser's fetch() sends it: the gateway refuses cookie POSTs from other origins.
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True), headers={"Origin": base_url}) as http:
        await login(http, base_url)
        fake.then(*[fake_llm.text("Hello", " there.")] * 4)
        await first_delta_direct(http, fake)  # warm up every path: connections, pools, code
        await first_delta_sdk(client)
        await first_delta_model_client(model)
        await first_delta_gateway(http, base_url)
        await session_round_trip(nc, subjects)
        for _ in range(args.turns):
            fake.then(*[fake_llm.text("Hello", " there.")] * 4)
            direct.append(await first_delta_direct(http, fake))
            sdk.append(await first_delta_sdk(client))
            own.append(await first_delta_model_client(model))
            through.append(await first_delta_gateway(http, base_url))
            session.append(await session_round_trip(nc, subjects))
        await client.close()
        await model.close()
        await nc.close()
        print(
            f"  first text delta: direct median {statistics.median(direct):.2f} ms, gateway's model client {statistics.median(own):.2f} ms, "
            f"openai SDK create() {statistics.median(sdk):.2f} ms, through the gateway {statistics.median(through):.2f} ms",
            flush=True,
        )
        for run in range(args.runs):
            # Alternate which goes first, so that a drift in the machine's load favours neither.
            for kind in ("query", "chat") if run % 2 == 0 else ("chat", "query"):
                if kind == "query":
                    _, seconds, _ = await stream_query(http, base_url, SQL, "bench_sqlite", args.rows)
                    query_rates.append(args.rows / seconds)
                else:
                    fake.then(fake_llm.tool_calls((EXECUTE_QUERY, {"sql": SQL})), fake_llm.text("Done."))
                    rows, seconds = await chat_rows(http, base_url, args.rows)
                    chat_rates.append(rows / seconds)
            print(f"  {args.rows:,} rows: /api/query {query_rates[-1]:,.0f} rows/s, /api/chat execute_query {chat_rates[-1]:,.0f} rows/s", flush=True)
    return {"direct": direct, "model_client": own, "sdk": sdk, "gateway": through, "session": session}, query_rates, chat_rates


async def run(args: argparse.Namespace, workdir: Path) -> tuple[Series, list[float], list[float]]:
    sqlite_path = workdir / "bench.db"
    build_sqlite(sqlite_path, args.rows)
    fake = await FakeLLM().start()
    try:
        gateway_env = {
            "LLM_BASE_URL": fake.base_url,
            "LLM_MODEL": fake_llm.MODEL,
            "CHAT_QUOTA_PER_MINUTE": "0",
            "CHAT_QUOTA_PER_HOUR": "0",
            "CHAT_QUOTA_PER_DAY": "0",
        }
        with running_stack({"bench_sqlite": f"sqlite:///{sqlite_path}"}, workdir / "sample.db", **gateway_env) as stack:
            base_url = stack.base_url
            await asyncio.to_thread(wait_until, lambda: http_ok(f"{base_url}/healthz"), 30, "the gateway")
            return await measure(base_url, fake, stack.nats.url, stack.prefix, args)
    finally:
        await fake.stop()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.chat", description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=int(os.environ.get("BENCH_CHAT_ROWS", "1000000")), help="rows of the execute_query turn (BENCH_CHAT_ROWS)")
    p.add_argument("--turns", type=int, default=50, help="text-only turns for the first-delta figures")
    p.add_argument("--runs", type=int, default=5, help="paired /api/query + /api/chat row runs")
    args = p.parse_args(argv or [])
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"chat bench: {args.turns} text turns, {args.runs} x {args.rows:,} SQLite rows, {os.cpu_count()} CPUs shared by everything, load average {load}", flush=True)
    workdir = Path(tempfile.mkdtemp(prefix="bench-chat-"))
    try:
        series, query_rates, chat_rates = asyncio.run(run(args, workdir))
    finally:
        for path in workdir.iterdir():
            path.unlink()
        workdir.rmdir()
    direct, own, sdk, through = (statistics.median(series[k]) for k in ("direct", "model_client", "sdk", "gateway"))
    added = through - direct
    ratio = statistics.median(c / q for c, q in zip(chat_rates, query_rates, strict=True))
    width = 44
    print()
    print(f"{'medians':<{width}}{'value':>14}   target")
    print(f"{'first text delta, fake model direct (ms)':<{width}}{direct:>14.2f}")
    print(f"{'first text delta, gateway model client (ms)':<{width}}{own:>14.2f}")
    print(f"{'first text delta, openai SDK create() (ms)':<{width}}{sdk:>14.2f}")
    print(f"{'first text delta, through /api/chat (ms)':<{width}}{through:>14.2f}")
    print(f"{'added by the gateway (ms)':<{width}}{added:>14.2f}   <= {TARGET_ADDED_MS:g}")
    print(f"{'  of which the model client (ms)':<{width}}{own - direct:>14.2f}")
    print(f"{'one session-service round trip (ms)':<{width}}{statistics.median(series['session']):>14.2f}   x 3 before the model call")
    print(f"{'/api/query (rows/s)':<{width}}{statistics.median(query_rates):>14,.0f}")
    print(f"{'/api/chat execute_query (rows/s)':<{width}}{statistics.median(chat_rates):>14,.0f}")
    print(f"{'ratio chat / query (paired)':<{width}}{ratio:>14.2f}   >= {TARGET_RATE_RATIO}")
    print(f"load average at the end: {', '.join(f'{x:.2f}' for x in os.getloadavg())}")
    if added > TARGET_ADDED_MS or ratio < TARGET_RATE_RATIO:
        print("\nsome figures miss their target (see the table)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
