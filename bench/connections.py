"""`python -m bench.connections`: users' own databases (docs/connections.md), in one run:

- first query on a new connection (the query replica reads the record, opens the password,
  checks the address, opens a pool and checks the account) against a warm query on the same
  connection just after (the baseline): `SELECT 1` through POST /api/query, medians;
- the query service's RSS with 200 connections used in turn under QUERY_MAX_POOLS=50,
  against its RSS before any user's pool was opened (the baseline), and after the first 50.

The databases are the local PostgreSQL (TEST_POSTGRES_URL, admin) and a reader role with a
password made for the run, dropped at the end; loopback is allowed for the run only
(CONNECTIONS_ALLOWED_NETWORKS=127.0.0.0/8).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import os
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from urllib.parse import urlsplit

import aiohttp
import asyncpg

from bench.query import login, rss_kb, sse_parts
from bench.stack import http_ok, running_stack
from tests.harness import wait_until

MAX_POOLS = 50


async def timed_query(http: aiohttp.ClientSession, base_url: str, source: str) -> float:
    """Seconds from sending `SELECT 1` to the end of its stream; fails on an error part."""
    started = time.perf_counter()
    async with http.post(f"{base_url}/api/query", json={"sql": "SELECT 1 AS one", "source": source}, headers={"Origin": base_url}) as response:
        async for part in sse_parts(response):
            if part is not None and part.get("type") == "tool-output-error":
                raise RuntimeError(f"query on {source} failed: {part.get('errorText')}")
    return time.perf_counter() - started


async def measure(base_url: str, query_pid: int, target: dict[str, object], connections: int, pairs: int) -> dict[str, float]:
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as http:
        await login(http, base_url)
        names = [f"c{i:03d}" for i in range(connections)]
        for name in names:
            async with http.post(f"{base_url}/api/connections", json={"name": name, **target}, headers={"Origin": base_url}) as response:
                if response.status != 201:
                    raise RuntimeError(f"create {name}: {response.status} {await response.text()}")
        rss_before = rss_kb(query_pid)
        cold, warm = [], []
        for name in names[:pairs]:
            cold.append(await timed_query(http, base_url, name))
            warm.append(await timed_query(http, base_url, name))
        peak = rss_kb(query_pid)
        after_max_pools = 0
        for i, name in enumerate(names[pairs:], start=pairs):
            await timed_query(http, base_url, name)
            peak = max(peak, rss_kb(query_pid))
            if i + 1 == MAX_POOLS:
                after_max_pools = rss_kb(query_pid)
        return {
            "cold_ms": statistics.median(cold) * 1000,
            "warm_ms": statistics.median(warm) * 1000,
            "rss_before_mb": rss_before / 1024,
            "rss_after_max_pools_mb": after_max_pools / 1024,
            "rss_after_all_mb": rss_kb(query_pid) / 1024,
            "rss_peak_mb": peak / 1024,
        }


async def make_reader(admin_url: str) -> tuple[str, str]:
    role, password = f"bench_ro_{uuid.uuid4().hex[:8]}", uuid.uuid4().hex
    conn = await asyncpg.connect(admin_url)
    try:
        await conn.execute(f"CREATE ROLE {role} LOGIN PASSWORD '{password}'")
    finally:
        await conn.close()
    return role, password


async def drop_reader(admin_url: str, role: str) -> None:
    conn = await asyncpg.connect(admin_url)
    try:
        await conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = $1", role)
        await conn.execute(f"DROP ROLE IF EXISTS {role}")
    finally:
        await conn.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--connections", type=int, default=200)
    parser.add_argument("--pairs", type=int, default=20, help="cold/warm pairs (each on a connection of its own)")
    args = parser.parse_args(argv if argv is not None else [])
    admin_url = os.environ.get("TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
    parts = urlsplit(admin_url)
    role, password = asyncio.run(make_reader(admin_url))
    target = {
        "dialect": "postgresql",
        "host": parts.hostname or "127.0.0.1",
        "port": parts.port or 5432,
        "database": parts.path.lstrip("/"),
        "user": role,
        "password": password,
        "tls": {"mode": "disable"},
    }
    query_env = {
        "CONNECTIONS_KEYS": "bench:" + base64.b64encode(os.urandom(32)).decode(),
        "CONNECTIONS_ALLOWED_NETWORKS": "127.0.0.0/8",
        "CONNECTIONS_MAX_PER_USER": str(args.connections),
        "QUERY_MAX_POOLS": str(MAX_POOLS),
        "QUERY_POOL_SIZE": "1",
    }
    try:
        with tempfile.TemporaryDirectory() as tmp, running_stack({}, Path(tmp) / "sample.db", query_env) as stack:
            wait_until(lambda: http_ok(f"{stack.base_url}/healthz"), what="the gateway")
            assert stack.query.proc is not None
            figures = asyncio.run(measure(stack.base_url, stack.query.proc.pid, target, args.connections, args.pairs))
    finally:
        asyncio.run(drop_reader(admin_url, role))
    print(f"\nbench.connections: PostgreSQL reader, SELECT 1 through POST /api/query, {args.pairs} pairs, {args.connections} connections, QUERY_MAX_POOLS={MAX_POOLS}")
    print(f"| {'measure':<58} | {'value':>10} | {'baseline (same run)':>22} |")
    print(f"|{'-' * 60}|{'-' * 12}|{'-' * 24}|")
    print(f"| {'first query on a new connection (pool open + check), ms':<58} | {figures['cold_ms']:>10.1f} | {'warm ' + format(figures['warm_ms'], '.1f'):>22} |")
    print(f"| {'query RSS after 50 connections used, MB':<58} | {figures['rss_after_max_pools_mb']:>10.1f} | {'before ' + format(figures['rss_before_mb'], '.1f'):>22} |")
    after = f"{figures['rss_after_all_mb']:.1f} ({figures['rss_peak_mb']:.0f})"
    print(f"| {f'query RSS after {args.connections} connections used (peak), MB':<58} | {after:>10} | {'before ' + format(figures['rss_before_mb'], '.1f'):>22} |")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
