"""Concurrent `/api/query` streams for `bench.scale --streams`: failures, time to the first byte, gateway RSS and CPU per stream.

Two gateways, three session and three query replicas on one set-up (one NATS and one Redis,
or the clusters); N streams of a small result opened at once with aiohttp and read to
their end, the gateways' RSS sampled while they are open.
"""

from __future__ import annotations

import asyncio
import sys
import threading
import time
import uuid
from dataclasses import dataclass

import aiohttp

from bench.scale import cpu_seconds, login
from tests.harness import ROOT, Process, Service, free_port, http_status, service_env, wait_until

SQL = "SELECT 1 AS one, 'a small result' AS what"


@dataclass
class StreamsRun:
    setup: str
    streams: int
    failed: int
    p99_first_byte_ms: float
    rss_per_stream_kb: float
    gateway_cpu_ms_per_stream: float


def rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


async def _one(session: aiohttp.ClientSession, url: str) -> float | None:
    """ms to the first byte of the stream, or None when it failed (status, or no final output part)."""
    started = time.perf_counter()
    async with session.post(f"{url}/api/query", json={"sql": SQL}, headers={"Origin": url}) as response:  # a browser's fetch() sends its Origin
        if response.status != 200:
            return None
        first: float | None = None
        body = b""
        async for chunk in response.content.iter_any():
            if first is None:
                first = (time.perf_counter() - started) * 1000
            body += chunk
    return first if b'"tool-output-available"' in body and b"[DONE]" in body else None


async def _open_all(urls: list[str], cookie: str, n: int) -> list[float | None]:
    connector = aiohttp.TCPConnector(limit=0)
    # The cookie as a header: aiohttp's cookie jar keeps none for an IP address such as 127.0.0.1.
    async with aiohttp.ClientSession(connector=connector, headers={"Cookie": f"session={cookie}"}, timeout=aiohttp.ClientTimeout(total=120)) as session:
        return await asyncio.gather(*(_one(session, urls[i % len(urls)]) for i in range(n)))


def measure_streams(name: str, nats_url: str, redis_url: str, counts: list[int]) -> list[StreamsRun]:
    prefix = f"bench{uuid.uuid4().hex[:8]}"
    common = {"NATS_URL": nats_url, "NATS_SUBJECT_PREFIX": prefix, "OPS_PORT": "0"}
    processes: list[Process] = []
    ports = [free_port() for _ in range(2)]
    urls = [f"http://127.0.0.1:{port}" for port in ports]
    runs = []
    try:
        for _ in range(3):
            processes.append(Service("session", service_env(**common, REDIS_URL=redis_url, SESSION_KV_BUCKET=f"sessions_{prefix}")).start())
            processes.append(Service("query", service_env(**common, QUERY_QUEUE_MAX="1000", QUERY_QUEUE_WAIT_S="10")).start())
        gateways = []
        for port in ports:
            env = service_env(**common, GATEWAY_HOST="127.0.0.1", GATEWAY_PORT=str(port), AUTH_MODE="dev", LOG_LEVEL="WARNING")  # no line per request
            gateways.append(Process("gateway", [sys.executable, "-m", "services.gateway"], env=env, cwd=ROOT).start())
        processes += gateways
        for url in urls:
            wait_until(lambda url=url: http_status(f"{url}/api/me") == 401, timeout=60, what=f"{url} to answer")
        cookie = login(urls[0])
        asyncio.run(_open_all(urls, cookie, 20))  # warm-up: connections, pools, scripts
        for n in counts:
            pids = [g.proc.pid for g in gateways if g.proc]
            before_rss = sum(rss_kb(pid) for pid in pids)
            before_cpu = sum(cpu_seconds(pid) for pid in pids)
            peak = [before_rss]
            done = threading.Event()

            def sample(pids: list[int] = pids, peak: list[int] = peak, done: threading.Event = done) -> None:
                while not done.wait(0.05):
                    peak[0] = max(peak[0], sum(rss_kb(pid) for pid in pids))

            sampler = threading.Thread(target=sample, daemon=True)
            sampler.start()
            try:
                firsts = asyncio.run(_open_all(urls, cookie, n))
            finally:
                done.set()
                sampler.join()
            ok = sorted(f for f in firsts if f is not None)
            p99 = ok[min(len(ok) - 1, int(len(ok) * 0.99))] if ok else float("nan")
            gateway_cpu = sum(cpu_seconds(pid) for pid in pids) - before_cpu
            run = StreamsRun(name, n, n - len(ok), p99, (peak[0] - before_rss) / n, 1000 * gateway_cpu / n)
            print(f"  {name}: {n} streams: {run}", flush=True)
            runs.append(run)
    finally:
        for process in reversed(processes):
            process.stop()
    return runs


def streams_table(runs: list[StreamsRun]) -> str:
    lines = [f"{'POST /api/query streams at once':<34}{'failed':>8}{'p99 first byte ms':>20}{'gateway RSS KiB/stream':>24}{'gateway CPU ms/stream':>23}"]
    for r in runs:
        lines.append(f"{f'{r.setup}: {r.streams}':<34}{r.failed:>8}{r.p99_first_byte_ms:>20.1f}{r.rss_per_stream_kb:>24.1f}{r.gateway_cpu_ms_per_stream:>23.2f}")
    by_setup: dict[str, list[StreamsRun]] = {}
    for r in runs:
        by_setup.setdefault(r.setup, []).append(r)
    for setup, same in by_setup.items():
        if len(same) > 1:
            lo, hi = same[0], same[-1]
            rss = hi.rss_per_stream_kb / max(lo.rss_per_stream_kb, 0.001)
            cpu = hi.gateway_cpu_ms_per_stream / max(lo.gateway_cpu_ms_per_stream, 0.001)
            lines.append(f"{setup}: from {lo.streams} to {hi.streams} streams, RSS/stream x{rss:.2f}, CPU/stream x{cpu:.2f}")
    return "\n".join(lines)
