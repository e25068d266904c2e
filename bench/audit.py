"""`python -m bench.audit`: what the audit trail costs a query, with and without it, in one run.

nats-server (JetStream), redis-server, and the session and query services run as processes;
two gateways run in this process (on uvloop, as the gateway runs), built by `create_app` from
the same settings. One records every query in the AUDIT stream as in production; the other has
its trail's `record` replaced by one that drops the event, so nothing is published. The client
alternates between them, one query each in turn, so that both see the same load on a shared
machine:

- small-query latency: POST /api/query of `SELECT 1` read to [DONE], median and p95, and the
  median of the differences of back-to-back pairs (one query through each gateway, in turn);
- rows/s of a 100,000-row x 5-column result.

Goal: the audit trail adds at most 5 % or 0.3 ms to the small query's median latency.
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
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import aiohttp
import nats
import uvloop
from aiohttp import web

from bench.query import build_sqlite, login, stream_query
from bench.stack import service_env
from services.gateway.app import create_app
from services.gateway.audit import AUDIT
from services.gateway.config import GatewayConfig
from shared.contracts import AuditEvent
from shared.logging import setup_logging
from tests.harness import NatsServer, RedisServer, Service, free_port

ROWS = 100_000
GOAL_RATIO = 0.05
GOAL_MS = 0.3
SMALL = "SELECT 1 AS one"


def _discard(_event: AuditEvent) -> None:
    """The no-audit gateway's `record`: the event is dropped before it is queued."""


@asynccontextmanager
async def gateway(env: dict[str, str], *, audit: bool) -> AsyncIterator[str]:
    """A gateway on a free port in this process; its URL."""
    app = create_app(GatewayConfig.from_env(env))
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    if not audit:
        app[AUDIT].record = _discard  # type: ignore[method-assign]
    port = free_port()
    site = web.TCPSite(runner, "127.0.0.1", port)
    await site.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


async def small_query(http: aiohttp.ClientSession, base_url: str) -> float:
    started = time.perf_counter()
    async with http.post(f"{base_url}/api/query", json={"sql": SMALL}) as response:
        body = await response.read()
    if response.status != 200 or b"[DONE]" not in body or b"tool-output-error" in body:
        raise RuntimeError(f"the small query failed: {response.status} {body[:200]!r}")
    return (time.perf_counter() - started) * 1000


async def measure(env: dict[str, str], rounds: int, per_round: int, big_runs: int) -> dict[str, dict[str, list[float]]]:
    results: dict[str, dict[str, list[float]]] = {name: {"latency_ms": [], "rows_per_s": []} for name in ("with audit", "without audit")}
    async with gateway(env, audit=True) as with_url, gateway(env, audit=False) as without_url:
        urls = {"with audit": with_url, "without audit": without_url}
        sessions = {name: aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True), headers={"Origin": url}) for name, url in urls.items()}
        try:
            for name, url in urls.items():
                await login(sessions[name], url)
                for _ in range(20):  # warm: connections, pools, the stream
                    await small_query(sessions[name], url)
            order = list(urls)
            for i in range(rounds * per_round):  # one query each, in turn: a pair sees the same load
                for name in order if i % 2 == 0 else reversed(order):
                    results[name]["latency_ms"].append(await small_query(sessions[name], urls[name]))
            for r in range(big_runs):
                for name in order if r % 2 == 0 else reversed(order):
                    rows, seconds, _ = await stream_query(sessions[name], urls[name], "SELECT id, qty, price, name, created FROM t", "bench", ROWS)
                    results[name]["rows_per_s"].append(rows / seconds)
        finally:
            for http in sessions.values():
                await http.close()
    return results


async def count_events(nats_url: str, stream: str) -> int:
    nc = await nats.connect(nats_url)
    try:
        info = await nc.jetstream().stream_info(stream)
        return info.state.messages
    finally:
        await nc.close()


def p95(values: list[float]) -> float:
    return statistics.quantiles(values, n=20)[-1]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.audit", description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=10, help="alternating rounds of small queries")
    p.add_argument("--per-round", type=int, default=50, help="small queries per gateway per round")
    p.add_argument("--big-runs", type=int, default=5, help="100,000-row queries per gateway")
    args = p.parse_args(argv or [])
    print(f"audit bench: {args.rounds} x {args.per_round} small queries and {args.big_runs} x {ROWS:,} rows per gateway, {os.cpu_count()} CPUs shared by everything", flush=True)

    workdir = Path(tempfile.mkdtemp(prefix="bench-audit-"))
    build_sqlite(workdir / "bench.db", ROWS)
    nats_server = NatsServer().start()
    redis_server = RedisServer().start()
    services: list[Service] = []
    prefix = f"bench{uuid.uuid4().hex[:8]}"
    common = {"NATS_URL": nats_server.url, "NATS_SUBJECT_PREFIX": prefix, "OPS_PORT": "0"}
    try:
        services.append(Service("session", service_env(**common, REDIS_URL=redis_server.url, SESSION_KV_BUCKET=f"sessions_{prefix}")).start())
        sources = f"bench=sqlite:///{workdir / 'bench.db'}"
        services.append(Service("query", service_env(**common, QUERY_SOURCES=sources, QUERY_SAMPLE_PATH=str(workdir / "sample.db"), QUERY_TIMEOUT_S="300")).start())
        env = {**common, "AUTH_MODE": "dev", "AUDIT_STREAM": "AUDIT", "LOG_LEVEL": "WARNING"}
        setup_logging("bench", "WARNING")
        results = uvloop.run(measure(env, args.rounds, args.per_round, args.big_runs))
        events = asyncio.run(count_events(nats_server.url, "AUDIT"))
    finally:
        for service in reversed(services):
            service.stop()
        redis_server.cleanup()
        nats_server.cleanup()
        for path in workdir.iterdir():
            path.unlink()
        workdir.rmdir()

    with_audit, without = results["with audit"], results["without audit"]
    med_without = statistics.median(without["latency_ms"])
    # The median of paired differences: each pair ran back to back, so load spikes mostly cancel.
    added = statistics.median(a - b for a, b in zip(with_audit["latency_ms"], without["latency_ms"], strict=True))
    ratio = added / med_without if med_without else 0.0
    print()
    print(f"| gateway | small query median ms | p95 ms | rows/s ({ROWS:,} rows, median) |")
    print("|---|---|---|---|")
    for name, figures in results.items():
        print(f"| {name} | {statistics.median(figures['latency_ms']):.2f} | {p95(figures['latency_ms']):.2f} | {statistics.median(figures['rows_per_s']):,.0f} |")
    rows_ratio = statistics.median(with_audit["rows_per_s"]) / statistics.median(without["rows_per_s"]) - 1
    met = added <= GOAL_MS or ratio <= GOAL_RATIO
    pairs = len(without["latency_ms"])
    print(f"\naudit adds {added:+.3f} ms ({ratio:+.1%}) to a small query (median of {pairs} back-to-back pairs), {rows_ratio:+.1%} to rows/s")
    print(f"goal <= 5 % or <= 0.3 ms: {'met' if met else 'MISSED'}")
    sent = 20 + args.rounds * args.per_round + args.big_runs
    print(f"audit events stored: {events} (the audited gateway sent {sent} queries and 1 sign-in)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
