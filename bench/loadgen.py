"""A reusable HTTP load generator: N concurrent keep-alive connections against a loopback URL, bounded in time and count.

It runs in a process of its own (uvloop + aiohttp) so the benchmark that drives it does
not take its CPU, and it refuses any host but the loopback, so a benchmark can never load
a real server by mistake.

    from bench.loadgen import run_load
    result = run_load("http://127.0.0.1:8080/api/me", concurrency=32, duration_s=10, headers={"Cookie": "session=..."})
    print(result.rps, result.p50_ms, result.p99_ms)

    python -m bench.loadgen http://127.0.0.1:8080/healthz --concurrency 32 --duration 5
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import multiprocessing
import sys
import time
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from urllib.parse import urlsplit

LOOPBACK = {"127.0.0.1", "localhost", "::1"}
MAX_DURATION_S = 300.0


@dataclass
class LoadResult:
    """What one load run measured."""

    requests: int = 0
    errors: int = 0
    duration_s: float = 0.0
    latencies_ms: list[float] = field(default_factory=list)
    statuses: dict[str, int] = field(default_factory=dict)
    concurrency: int = 0

    @property
    def ok(self) -> int:
        return self.requests - self.errors

    @property
    def rps(self) -> float:
        return self.requests / self.duration_s if self.duration_s else 0.0

    def percentile(self, q: float) -> float:
        """Nearest-rank percentile of the latencies in milliseconds (q in 0..100)."""
        if not self.latencies_ms:
            return float("nan")
        ordered = sorted(self.latencies_ms)
        rank = max(1, min(len(ordered), math.ceil(q / 100 * len(ordered))))
        return ordered[rank - 1]

    @property
    def p50_ms(self) -> float:
        return self.percentile(50)

    @property
    def p99_ms(self) -> float:
        return self.percentile(99)

    def merge(self, other: LoadResult) -> LoadResult:
        statuses = Counter(self.statuses)
        statuses.update(other.statuses)
        return LoadResult(
            requests=self.requests + other.requests,
            errors=self.errors + other.errors,
            duration_s=max(self.duration_s, other.duration_s),
            latencies_ms=self.latencies_ms + other.latencies_ms,
            statuses=dict(statuses),
            concurrency=self.concurrency + other.concurrency,
        )

    def summary(self) -> dict[str, float | int | dict[str, int]]:
        return {
            "requests": self.requests,
            "errors": self.errors,
            "duration_s": round(self.duration_s, 3),
            "rps": round(self.rps, 1),
            "p50_ms": round(self.p50_ms, 3),
            "p99_ms": round(self.p99_ms, 3),
            "concurrency": self.concurrency,
            "statuses": self.statuses,
        }


def check_loopback(url: str) -> None:
    host = urlsplit(url).hostname or ""
    if host not in LOOPBACK:
        raise ValueError(f"the load generator only targets the loopback interface, not {host!r}")


async def _load(url: str, concurrency: int, duration_s: float, max_requests: int | None, headers: dict[str, str], method: str, timeout_s: float) -> LoadResult:
    import aiohttp

    result = LoadResult(concurrency=concurrency)
    statuses: Counter[str] = Counter()
    latencies = result.latencies_ms
    budget = [max_requests if max_requests is not None else -1]
    connector = aiohttp.TCPConnector(limit=concurrency, force_close=False, ttl_dns_cache=None)
    timeout = aiohttp.ClientTimeout(total=timeout_s)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout, headers=headers, cookie_jar=aiohttp.DummyCookieJar()) as client:
        deadline = time.perf_counter() + duration_s

        async def worker() -> None:
            while time.perf_counter() < deadline:
                if budget[0] == 0:
                    return
                budget[0] -= 1
                started = time.perf_counter()
                try:
                    async with client.request(method, url) as response:
                        await response.read()
                        status = response.status
                except (aiohttp.ClientError, TimeoutError) as exc:
                    status = type(exc).__name__
                latencies.append((time.perf_counter() - started) * 1000)
                statuses[str(status)] += 1
                result.requests += 1
                if status != 200:
                    result.errors += 1

        began = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        result.duration_s = time.perf_counter() - began
    result.statuses = dict(statuses)
    return result


def _load_in_process(url: str, concurrency: int, duration_s: float, max_requests: int | None, headers: dict[str, str], method: str, timeout_s: float) -> LoadResult:
    coroutine = _load(url, concurrency, duration_s, max_requests, headers, method, timeout_s)
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coroutine)
    return uvloop.run(coroutine)


def run_load(
    url: str,
    *,
    concurrency: int = 32,
    duration_s: float = 10.0,
    max_requests: int | None = None,
    headers: dict[str, str] | None = None,
    method: str = "GET",
    processes: int = 1,
    timeout_s: float = 10.0,
) -> LoadResult:
    """Load `url` from `processes` child processes sharing `concurrency` connections; stops at the duration or the count."""
    check_loopback(url)
    if not 0 < duration_s <= MAX_DURATION_S:
        raise ValueError(f"duration_s must be in (0, {MAX_DURATION_S:g}]")
    processes = max(1, min(processes, concurrency))
    shares = [concurrency // processes + (1 if i < concurrency % processes else 0) for i in range(processes)]
    budgets: list[int | None] = [None] * processes if max_requests is None else [max_requests // processes + (1 if i < max_requests % processes else 0) for i in range(processes)]
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=processes, mp_context=context) as pool:
        futures = [pool.submit(_load_in_process, url, share, duration_s, budget, dict(headers or {}), method, timeout_s) for share, budget in zip(shares, budgets, strict=True)]
        results = [future.result() for future in futures]
    merged = results[0]
    for other in results[1:]:
        merged = merged.merge(other)
    return merged


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.loadgen", description=__doc__.splitlines()[0])
    p.add_argument("url")
    p.add_argument("--concurrency", type=int, default=32)
    p.add_argument("--duration", type=float, default=10.0, help="seconds")
    p.add_argument("--requests", type=int, default=None, help="stop after this many requests")
    p.add_argument("--processes", type=int, default=1)
    p.add_argument("--method", default="GET")
    p.add_argument("--header", action="append", default=[], help="'Name: value', repeatable")
    args = p.parse_args(argv)
    headers = dict(h.split(":", 1) for h in args.header)
    result = run_load(
        args.url,
        concurrency=args.concurrency,
        duration_s=args.duration,
        max_requests=args.requests,
        headers={k.strip(): v.strip() for k, v in headers.items()},
        method=args.method,
        processes=args.processes,
    )
    print(json.dumps(result.summary(), indent=2))
    return 0 if result.errors == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
