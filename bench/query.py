"""`python -m bench.query`: streaming a 1,000,000-row x 5-column result, raw driver vs. end to end through the gateway.

For SQLite (a file this bench builds) and PostgreSQL (the local server, a table in a schema
of its own, dropped at the end), in the same run:

- raw driver fetch rate: rows/s of a fetchmany / cursor loop in this process, no conversion;
- end to end: rows/s that a client reads from POST /api/query (gateway SSE) with nats-server,
  session, query and gateway processes running here, and the ratio to the raw rate (target >= 0.8, issue 21);
- time to preview: from sending the request to the first `tool-output-available` part with
  `preliminary: true` (target < 100 ms);
- peak RSS growth of the gateway and query processes during the stream, sampled from
  /proc/<pid>/status every few milliseconds (target < 64 MB each);
- CPU seconds per 1,000,000 rows: the raw fetch (this process), the query service, and every
  process of the stream together (gateway, query, nats-server, this client). On a busy machine
  the rates follow the share of the cores each side gets; the CPU figures do not.

Each end-to-end run is paired with a raw run just before it, so that both see the same
load on a shared machine; the table shows medians over --runs pairs (the worst for memory).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sqlite3
import statistics
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import aiohttp
import asyncpg
import orjson

from bench.stack import http_ok, running_stack
from tests.harness import wait_until

COLUMNS = "id, qty, price, name, created"
TARGET_RATIO = 0.8
TARGET_PREVIEW_MS = 100.0
TARGET_RSS_MB = 64.0
RAW_BATCH = 10_000


@dataclass
class EndToEnd:
    rows: int
    seconds: float
    preview_ms: float
    rss_growth_mb: dict[str, float]
    cpu_s: dict[str, float]

    @property
    def rate(self) -> float:
        return self.rows / self.seconds


@dataclass
class Figures:
    engine: str
    raw_rates: list[float] = field(default_factory=list)
    raw_cpu_s: list[float] = field(default_factory=list)
    runs: list[EndToEnd] = field(default_factory=list)

    @property
    def raw(self) -> float:
        return statistics.median(self.raw_rates)

    @property
    def e2e(self) -> float:
        return statistics.median(r.rate for r in self.runs)

    @property
    def ratio(self) -> float:
        """Median over runs of end-to-end / raw measured just before it."""
        return statistics.median(r.rate / raw for r, raw in zip(self.runs, self.raw_rates, strict=True))

    @property
    def best_ratio(self) -> float:
        return max(r.rate / raw for r, raw in zip(self.runs, self.raw_rates, strict=True))

    def cpu_per_million(self, name: str | None = None) -> float:
        """Median CPU seconds per 1,000,000 rows: of process `name`, or of all of them."""
        return statistics.median((r.cpu_s[name] if name else sum(r.cpu_s.values())) * 1e6 / r.rows for r in self.runs)

    @property
    def raw_cpu_per_million(self) -> float:
        return statistics.median(cpu * 1e6 / r.rows for r, cpu in zip(self.runs, self.raw_cpu_s, strict=True))

    @property
    def preview_ms(self) -> float:
        return statistics.median(r.preview_ms for r in self.runs)

    def rss_mb(self, name: str) -> float:
        return max(r.rss_growth_mb[name] for r in self.runs)


# --- data ------------------------------------------------------------------------------


def build_sqlite(path: Path, rows: int) -> None:
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, qty INTEGER, price REAL, name TEXT, created TEXT)")
    conn.execute(
        "INSERT INTO t WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < ?) SELECT i, i % 100, (i % 1000) / 10.0, 'item ' || i, datetime(1700000000 + i, 'unixepoch') FROM n",
        (rows,),
    )
    conn.commit()
    conn.close()


async def build_postgres(url: str, schema: str, rows: int) -> None:
    conn = await asyncpg.connect(url)
    try:
        await conn.execute(f"CREATE SCHEMA {schema}")
        await conn.execute(
            f"CREATE TABLE {schema}.t AS SELECT g::int8 AS id, (g % 100)::int4 AS qty, (g % 1000) / 10.0::float8 AS price, "
            f"'item ' || g AS name, timestamptz '2024-01-01 00:00:00+00' + g * interval '1 second' AS created "
            f"FROM generate_series(1, {int(rows)}) g"
        )
        await conn.execute(f"ANALYZE {schema}.t")
    finally:
        await conn.close()


async def create_postgres_reader(url: str, schema: str) -> str:
    """A login role named after `schema` that may only read it (the query service refuses a writer); its URL."""
    conn = await asyncpg.connect(url)
    try:
        await conn.execute(f"CREATE ROLE {schema}_reader LOGIN PASSWORD 'bench'; GRANT USAGE ON SCHEMA {schema} TO {schema}_reader; GRANT SELECT ON ALL TABLES IN SCHEMA {schema} TO {schema}_reader")
    finally:
        await conn.close()
    parts = urlsplit(url)
    return urlunsplit(parts._replace(netloc=f"{schema}_reader:bench@{parts.hostname}" + (f":{parts.port}" if parts.port else "")))


async def drop_postgres(url: str, schema: str) -> None:
    conn = await asyncpg.connect(url)
    try:
        await conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
        await conn.execute(f"DROP ROLE IF EXISTS {schema}_reader")
    finally:
        await conn.close()


# --- raw driver ------------------------------------------------------------------------


def raw_sqlite(path: Path) -> float:
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    started = time.perf_counter()
    cursor = conn.execute(f"SELECT {COLUMNS} FROM t")
    count = 0
    while batch := cursor.fetchmany(RAW_BATCH):
        count += len(batch)
    elapsed = time.perf_counter() - started
    conn.close()
    return count / elapsed


async def raw_postgres(url: str, schema: str) -> float:
    conn = await asyncpg.connect(url)
    try:
        started = time.perf_counter()
        count = 0
        async with conn.transaction(readonly=True):
            cursor = await conn.cursor(f"SELECT {COLUMNS} FROM {schema}.t")
            while batch := await cursor.fetch(RAW_BATCH):
                count += len(batch)
        return count / (time.perf_counter() - started)
    finally:
        await conn.close()


# --- end to end ------------------------------------------------------------------------


class RssSampler:
    """Samples VmRSS of some processes every `interval_s` in a thread; reports growth over the start."""

    def __init__(self, pids: dict[str, int], interval_s: float = 0.005) -> None:
        self._pids = pids
        self._interval_s = interval_s
        self._stop = threading.Event()
        self.baseline = {name: rss_kb(pid) for name, pid in pids.items()}
        self.peak = dict(self.baseline)
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(self._interval_s):
            for name, pid in self._pids.items():
                self.peak[name] = max(self.peak[name], rss_kb(pid))

    def growth_mb(self) -> dict[str, float]:
        return {name: (self.peak[name] - self.baseline[name]) / 1024 for name in self._pids}


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used so far."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


async def login(http: aiohttp.ClientSession, base_url: str) -> None:
    async with http.post(f"{base_url}/auth/login", json={"email": "bench@example.com", "name": "Bench"}) as response:
        if response.status != 200:
            raise RuntimeError(f"login failed: {response.status} {await response.text()}")


async def sse_parts(response: aiohttp.ClientResponse) -> AsyncIterator[dict[str, Any] | None]:
    """The parts of a `data: ...` event stream as they arrive, decoded; None for `[DONE]`."""
    buffer = b""
    async for chunk in response.content.iter_any():
        buffer += chunk
        events = buffer.split(b"\n\n")
        buffer = events.pop()
        for raw in events:
            payload = raw.removeprefix(b"data: ")
            yield None if payload == b"[DONE]" else orjson.loads(payload)


async def stream_query(http: aiohttp.ClientSession, base_url: str, sql: str, source: str, expected_rows: int) -> tuple[int, float, float]:
    """POST /api/query and read the SSE stream to [DONE]: (rows, seconds, ms to the preview)."""
    started = time.perf_counter()
    preview_ms = float("nan")
    rows = 0
    final = None
    async with http.post(f"{base_url}/api/query", json={"sql": sql, "source": source}) as response:
        if response.status != 200:
            raise RuntimeError(f"/api/query answered {response.status}: {await response.text()}")
        done = False
        async for part in sse_parts(response):
            if part is None:
                done = True
                continue
            kind = part["type"]
            if kind == "data-query-rows":
                rows += len(part["data"]["rows"])
            elif kind == "tool-output-available":
                if part.get("preliminary"):
                    preview_ms = (time.perf_counter() - started) * 1000
                else:
                    final = part["output"]
            elif kind == "tool-output-error":
                raise RuntimeError(f"the query failed: {part['errorText']}")
        seconds = time.perf_counter() - started
    if not done or rows != expected_rows or final is None or final.get("row_count") != expected_rows:
        raise RuntimeError(f"incomplete stream: done={done} rows={rows} final={final}")
    return rows, seconds, preview_ms


async def end_to_end(base_url: str, pids: dict[str, int], cpu_pids: dict[str, int], sql: str, source: str, rows: int, figures: Figures, raw: Callable[[], Awaitable[float]], runs: int) -> None:
    """`runs` times: the raw rate, then `sql` streamed through the gateway.

    `pids` are sampled for memory, `cpu_pids` (plus this client) for CPU time.
    """
    cpu_pids = {**cpu_pids, "client": os.getpid()}
    # Origin as a browser's fetch() sends it: the gateway refuses cookie POSTs from other origins.
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True), headers={"Origin": base_url.rstrip("/")}) as http:
        await login(http, base_url)
        await stream_query(http, base_url, f"{sql} LIMIT 1000", source, 1000)  # warm up: open the pool, touch the code
        for _ in range(runs):
            raw_started = time.process_time()
            raw_rate = await raw()
            figures.raw_rates.append(raw_rate)
            figures.raw_cpu_s.append(time.process_time() - raw_started)
            cpu_before = {name: cpu_seconds(pid) for name, pid in cpu_pids.items()}
            with RssSampler(pids) as sampler:
                count, seconds, preview_ms = await stream_query(http, base_url, sql, source, rows)
            cpu = {name: cpu_seconds(pid) - cpu_before[name] for name, pid in cpu_pids.items()}
            figures.runs.append(EndToEnd(count, seconds, preview_ms, sampler.growth_mb(), cpu))
            busy = ", ".join(f"{name} {used:.2f}s ({used / seconds:.0%})" for name, used in cpu.items())
            print(
                f"  {figures.engine}: raw {raw_rate:,.0f} rows/s, CPU {figures.raw_cpu_s[-1]:.2f}s; end to end {count:,} rows in {seconds:.2f}s = {count / seconds:,.0f} rows/s "
                f"(ratio {count / seconds / raw_rate:.2f}), preview {preview_ms:.1f} ms, rss growth {fmt_mb(sampler.growth_mb())}; CPU {busy}; load {load_average()}",
                flush=True,
            )


def load_average() -> str:
    return " ".join(f"{load:.1f}" for load in os.getloadavg())


def fmt_mb(values: dict[str, float]) -> str:
    return ", ".join(f"{name} {mb:.1f} MB" for name, mb in values.items())


# --- report ----------------------------------------------------------------------------


def report(figures: list[Figures]) -> tuple[str, bool]:
    ok = True
    width = 34
    lines = [f"{'medians, 5 columns':<{width}}" + "".join(f"{f.engine:>16}" for f in figures) + "   target"]

    def row(label: str, values: list[str], target: str) -> None:
        lines.append(f"{label:<{width}}" + "".join(f"{v:>16}" for v in values) + f"   {target}")

    row("raw driver fetch (rows/s)", [f"{f.raw:,.0f}" for f in figures], "")
    row("end to end via gateway (rows/s)", [f"{f.e2e:,.0f}" for f in figures], "")
    row("ratio end to end / raw (paired)", [f"{f.ratio:.2f}" for f in figures], f">= {TARGET_RATIO}")
    row("ratio, best run", [f"{f.best_ratio:.2f}" for f in figures], "")
    row("raw driver CPU (s / 1M rows)", [f"{f.raw_cpu_per_million:.2f}" for f in figures], "")
    row("query service CPU (s / 1M rows)", [f"{f.cpu_per_million('query'):.2f}" for f in figures], "")
    row("all processes CPU (s / 1M rows)", [f"{f.cpu_per_million():.2f}" for f in figures], "")
    row("time to preview (ms)", [f"{f.preview_ms:.1f}" for f in figures], f"< {TARGET_PREVIEW_MS:g}")
    row("gateway peak RSS growth (MB)", [f"{f.rss_mb('gateway'):.1f}" for f in figures], f"< {TARGET_RSS_MB:g}")
    row("query peak RSS growth (MB)", [f"{f.rss_mb('query'):.1f}" for f in figures], f"< {TARGET_RSS_MB:g}")
    for f in figures:
        if f.ratio < TARGET_RATIO or f.preview_ms >= TARGET_PREVIEW_MS or max(f.rss_mb("gateway"), f.rss_mb("query")) >= TARGET_RSS_MB:
            ok = False
    return "\n".join(lines), ok


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.query", description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=int(os.environ.get("BENCH_QUERY_ROWS", "1000000")), help="rows in the result (BENCH_QUERY_ROWS)")
    p.add_argument("--runs", type=int, default=3, help="paired raw + end-to-end runs per engine")
    p.add_argument(
        "--postgres-url",
        default=os.environ.get("BENCH_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test"),
        help="PostgreSQL to build the table in (BENCH_POSTGRES_URL); '' skips PostgreSQL",
    )
    args = p.parse_args(argv or [])

    print(f"query bench: {args.rows:,} rows x 5 columns, {args.runs} run(s) per engine, {os.cpu_count()} CPUs shared by everything; load average {load_average()}", flush=True)
    workdir = Path(tempfile.mkdtemp(prefix="bench-query-"))
    sqlite_path = workdir / "bench.db"
    schema = f"bench_{uuid.uuid4().hex[:8]}"
    started = time.perf_counter()
    build_sqlite(sqlite_path, args.rows)
    sources = {"bench_sqlite": f"sqlite:///{sqlite_path}"}
    engines = [("sqlite", "bench_sqlite", "SELECT id, qty, price, name, created FROM t")]
    if args.postgres_url:
        asyncio.run(build_postgres(args.postgres_url, schema, args.rows))
        sources["bench_pg"] = asyncio.run(create_postgres_reader(args.postgres_url, schema))
        engines.append(("postgresql", "bench_pg", f"SELECT id, qty, price, name, created FROM {schema}.t"))
    print(f"  data built in {time.perf_counter() - started:.1f}s", flush=True)

    figures = {name: Figures(name) for name, _, _ in engines}
    try:
        with running_stack(sources, workdir / "sample.db") as stack:
            base_url = stack.base_url
            wait_until(lambda: http_ok(f"{base_url}/healthz"), timeout=30, what="the gateway")
            assert stack.query.proc is not None and stack.gateway.proc is not None
            pids = {"gateway": stack.gateway.proc.pid, "query": stack.query.proc.pid}
            assert stack.nats.proc is not None
            cpu_pids = {**pids, "nats-server": stack.nats.proc.pid}
            raws: dict[str, Callable[[], Awaitable[float]]] = {
                "sqlite": lambda: _now(raw_sqlite(sqlite_path)),  # on the loop's own thread, as a plain fetch loop would run
                "postgresql": lambda: raw_postgres(args.postgres_url, schema),
            }
            for name, source, sql in engines:
                asyncio.run(end_to_end(base_url, pids, cpu_pids, sql, source, args.rows, figures[name], raws[name], args.runs))
    finally:
        if args.postgres_url:
            asyncio.run(drop_postgres(args.postgres_url, schema))
        for path in workdir.iterdir():
            path.unlink()
        workdir.rmdir()

    table, ok = report(list(figures.values()))
    print(f"\nload average at the end: {load_average()}")
    print(table)
    if not ok:
        print("\nsome figures miss their target (see the table)", flush=True)
    return 0


async def _now(value: float) -> float:
    return value


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
