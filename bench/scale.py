"""`python -m bench.scale`: GET /api/me throughput with 1 to 3 session replicas and 1 or 2 gateways, on one NATS and Redis and on clusters.

Every configuration runs on one private nats-server and redis-server (127.0.0.1, free
ports) under its own subject prefix, then (the cluster set-up) two gateways with 1, 2 and 3
session replicas on a 3-node NATS JetStream cluster and a 3-master + 3-replica Redis Cluster
(tests/clusters.py), in the same run. Each gets the same bounded load from bench/loadgen.py
(its own processes; with two gateways the connections are split between them). Beside
req/s, p50 and p99 it prints the CPU each role used and the CPU each request cost, because
on a small machine the figures say more about where the cores went than about scaling.
Then, on each set-up, concurrent `/api/query` streams (`--streams`) and chat turns against a
slow fake model (`--turns`), from bench/streams.py.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import urllib.error
import urllib.request
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from bench.loadgen import LoadResult, run_load
from bench.stack import service_env
from tests.clusters import NatsCluster, RedisClusterServers
from tests.harness import (
    ROOT,
    NatsServer,
    Process,
    RedisServer,
    Service,
    free_port,
    http_status,
    wait_until,
)

CONFIGS = ((1, 1), (1, 2), (2, 1), (2, 2), (2, 3))  # (gateways, session replicas) on one NATS and one Redis
CLUSTER_CONFIGS = ((2, 1), (2, 2), (2, 3))  # on the NATS and Redis clusters
ROLES = ("gateway", "session", "nats", "redis", "loadgen")
SHOWN = (*ROLES, "other")
CLK_TCK = os.sysconf("SC_CLK_TCK")


@dataclass
class Setup:
    """Where NATS and Redis are, and their processes (whose CPU is counted)."""

    name: str
    nats_url: str
    redis_url: str
    nats: list[Process]
    redis: list[Process]


@dataclass
class Run:
    setup: str
    gateways: int
    sessions: int
    result: LoadResult
    cpu_s: dict[str, float]  # role (and "other") -> CPU seconds used during the measured load

    @property
    def label(self) -> str:
        return f"{self.setup}: {self.gateways} gateway{'s' if self.gateways > 1 else ''}, {self.sessions} session"


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time of a process, from /proc (Linux)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def machine_busy_seconds() -> float:
    """CPU seconds all cores spent busy (not idle or waiting for I/O), from /proc/stat."""
    with open("/proc/stat") as f:
        ticks = [int(x) for x in f.readline().split()[1:]]
    return (sum(ticks[:8]) - ticks[3] - ticks[4]) / CLK_TCK


def children_cpu_seconds() -> float:
    """CPU of this process's finished children: the load generator's worker processes."""
    t = os.times()
    return t.children_user + t.children_system


def login(base_url: str) -> str:
    body = json.dumps({"email": "scale@example.com", "name": "Scale"}).encode()
    req = urllib.request.Request(f"{base_url}/auth/login", data=body, headers={"Content-Type": "application/json"}, method="POST")
    with urllib.request.urlopen(req, timeout=5) as response:
        for header in response.headers.get_all("Set-Cookie") or []:
            name, _, rest = header.partition("=")
            if name.strip() == "session":
                return rest.split(";", 1)[0]
    raise RuntimeError(f"{base_url}/auth/login set no session cookie")


def load(urls: list[str], cookie: str, concurrency: int, seconds: float) -> LoadResult:
    """Split `concurrency` connections over `urls`, all loaded at once."""
    shares = [concurrency // len(urls) + (1 if i < concurrency % len(urls) else 0) for i in range(len(urls))]
    headers = {"Cookie": f"session={cookie}"}
    with ThreadPoolExecutor(len(urls)) as pool:
        futures = [pool.submit(run_load, f"{url}/api/me", concurrency=share, duration_s=seconds, headers=headers) for url, share in zip(urls, shares, strict=True)]
        results = [f.result() for f in futures]
    merged = results[0]
    for other in results[1:]:
        merged = merged.merge(other)
    return merged


def measure(setup: Setup, gateways: int, sessions: int, *, concurrency: int, seconds: float, warmup_s: float) -> Run:
    prefix = f"bench{uuid.uuid4().hex[:8]}"
    common = {"NATS_URL": setup.nats_url, "NATS_SUBJECT_PREFIX": prefix, "OPS_PORT": "0"}
    session_env = service_env(**common, REDIS_URL=setup.redis_url, SESSION_KV_BUCKET=f"sessions_{prefix}")
    ports = [free_port() for _ in range(gateways)]
    urls = [f"http://127.0.0.1:{port}" for port in ports]
    processes: list[Process] = []
    try:
        for _ in range(sessions):
            processes.append(Service("session", dict(session_env)).start())
        for port in ports:
            # No per-request log line, so the figures compare with the earlier runs in docs/benchmarks.md (bench.session logs at INFO).
            env = service_env(**common, GATEWAY_HOST="127.0.0.1", GATEWAY_PORT=str(port), AUTH_MODE="dev", LOG_LEVEL="WARNING")
            processes.append(Process("gateway", [sys.executable, "-m", "services.gateway"], env=env, cwd=ROOT).start())
        for url in urls:  # 401 without a cookie: the gateway listens and a session replica answers it
            wait_until(lambda url=url: http_status(f"{url}/api/me") == 401, timeout=30, what=f"{url} to reach a session replica")
        cookie = login(urls[0])
        load(urls, cookie, concurrency, warmup_s)

        roles: dict[str, list[Process]] = {"gateway": [p for p in processes if p.name == "gateway"], "session": [p for p in processes if p.name == "session"], "nats": setup.nats, "redis": setup.redis}

        def snapshot() -> dict[str, float]:
            cpu = {role: sum(cpu_seconds(p.proc.pid) for p in procs if p.proc) for role, procs in roles.items()}
            cpu["loadgen"] = children_cpu_seconds()
            cpu["machine"] = machine_busy_seconds()
            return cpu

        before = snapshot()
        result = load(urls, cookie, concurrency, seconds)
        after = snapshot()
    finally:
        for process in reversed(processes):
            code = process.stop()
            if code != 0:
                print(f"  warning: {process.name} exited {code}", file=sys.stderr)
    used = {role: after[role] - before[role] for role in (*ROLES, "machine")}
    # Whatever else ran on the machine meanwhile (another job, the benchmark driver itself).
    used["other"] = max(0.0, used.pop("machine") - sum(used[role] for role in ROLES))
    run = Run(setup.name, gateways, sessions, result, used)
    print(f"  {run.label}: {json.dumps(result.summary())}, CPU s {json.dumps({k: round(v, 2) for k, v in used.items()})}", flush=True)
    return run


def table(runs: list[Run]) -> str:
    """One line per configuration: its median round by req/s, so one disturbed round does not move it."""
    width = 34
    lines = [
        f"{'GET /api/me':<{width}}{'req/s':>8}{'p50 ms':>8}{'p99 ms':>8}{'failed':>8}   CPU % of one core (CPU ms per request)",
        f"{'':<{width}}{'':>32}   " + " / ".join(SHOWN) + "          req/s of every round",
    ]
    by_config: dict[tuple[str, int, int], list[Run]] = {}
    for run in runs:
        by_config.setdefault((run.setup, run.gateways, run.sessions), []).append(run)
    rps: dict[tuple[str, int, int], float] = {}
    for config, same in by_config.items():
        median = sorted(same, key=lambda r: r.result.rps)[len(same) // 2]
        r = median.result
        rps[config] = r.rps
        shares = " / ".join(f"{100 * median.cpu_s[role] / r.duration_s:.0f} ({1000 * median.cpu_s[role] / max(r.requests, 1):.2f})" for role in SHOWN)
        rounds = ", ".join(f"{x.result.rps:,.0f}" for x in same)
        lines.append(f"{median.label:<{width}}{r.rps:>8,.0f}{r.p50_ms:>8.2f}{r.p99_ms:>8.2f}{r.errors:>8}   {shares}   ({rounds})")
    base = rps[("single", 1, 1)]
    ratios = {label: rps[("single", *config)] / base for label, config in (("2 sessions", (1, 2)), ("2 gateways", (2, 1)), ("2 gateways + 2 sessions", (2, 2)))}
    lines.append("throughput relative to 1 gateway + 1 session: " + ", ".join(f"{label} x{ratio:.2f}" for label, ratio in ratios.items()))
    for sessions in (1, 2, 3):
        single, cluster = rps.get(("single", 2, sessions)), rps.get(("cluster", 2, sessions))
        if single and cluster:
            lines.append(f"2 gateways + {sessions} session: clusters x{cluster / single:.2f} of one NATS and one Redis")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.scale", description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=float, default=float(os.environ.get("BENCH_SECONDS", "6")), help="measured seconds per configuration and round (BENCH_SECONDS)")
    p.add_argument("--warmup", type=float, default=2.0, help="unmeasured seconds per configuration and round")
    p.add_argument("--concurrency", type=int, default=int(os.environ.get("BENCH_CONCURRENCY", "32")), help="connections in all (BENCH_CONCURRENCY)")
    p.add_argument("--rounds", type=int, default=3, help="each configuration once per round; the median round is reported")
    p.add_argument("--no-clusters", dest="clusters", action="store_false", help="only one NATS and one Redis (no cluster set-up)")
    p.add_argument("--streams", default="100,1000", help="concurrent /api/query streams to open at once on each set-up, comma-separated ('' skips them)")
    p.add_argument("--turns", type=int, default=200, help="concurrent /api/chat turns against a slow fake model on each set-up (0 skips them)")
    p.add_argument("--chat-chunks", type=int, default=40, help="text deltas the fake model streams per turn")
    p.add_argument("--chat-delay-ms", type=float, default=50.0, help="the fake model's delay before each delta")
    args = p.parse_args(argv or [])
    from bench.streams import ChatLoad, measure_chat, measure_streams, streams_table  # it imports this module

    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"scale bench: {args.concurrency} connections, {args.seconds:g}s measured per configuration x {args.rounds} rounds, {os.cpu_count()} CPUs shared, load average {load}", flush=True)
    nats = NatsServer().start()
    redis = RedisServer().start()
    nats_cluster = NatsCluster().start() if args.clusters else None
    redis_cluster = RedisClusterServers().start() if args.clusters else None
    setups = [(Setup("single", nats.url, redis.url, [nats], [redis]), CONFIGS)]
    if nats_cluster and redis_cluster:
        cluster = Setup("cluster", nats_cluster.url, redis_cluster.url, list(nats_cluster.nodes), list(redis_cluster.nodes))
        setups.append((cluster, CLUSTER_CONFIGS))
    started = time.monotonic()
    try:
        runs = [measure(setup, g, s, concurrency=args.concurrency, seconds=args.seconds, warmup_s=args.warmup) for _ in range(args.rounds) for setup, configs in setups for g, s in configs]
        counts = [int(n) for n in args.streams.split(",") if n.strip()]
        streams = [run for setup, _ in setups for run in measure_streams(setup.name, setup.nats_url, setup.redis_url, counts)] if counts else []
        slow = ChatLoad(args.chat_chunks, args.chat_delay_ms / 1000)
        streams += [measure_chat(setup.name, setup.nats_url, setup.redis_url, args.turns, slow) for setup, _ in setups] if args.turns else []
    finally:
        redis.cleanup()
        nats.cleanup()
        for servers in (nats_cluster, redis_cluster):
            if servers is not None:
                servers.cleanup()
    print(f"\n({time.monotonic() - started:.0f} s in all)")
    if runs:
        print(table(runs))
    if streams:
        print(streams_table(streams))
    print(f"load average at the end: {', '.join(f'{x:.2f}' for x in os.getloadavg())}")
    return 0 if not any(r.result.errors for r in runs) and not any(r.failed for r in streams) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
