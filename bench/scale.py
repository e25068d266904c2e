"""`python -m bench.scale`: GET /api/me throughput with 1 versus 2 session replicas and 1 versus 2 gateways.

Every configuration runs on one private nats-server and redis-server (127.0.0.1, free ports),
with its own subject prefix, under the same bounded closed-loop load: CONCURRENCY logged-in
clients, each sending its next request when the last one answered, for DURATION_S after a
WARMUP_S warm-up. Beside req/s, p50 and p99 it prints the CPU each role used, because on a
small machine the figures say more about where the cores went than about scaling.
"""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from dataclasses import dataclass, field

import aiohttp

from tests.harness import NatsServer, RedisServer, Service, free_port, service_env

CONFIGS = ((1, 1), (1, 2), (2, 1), (2, 2))  # (gateways, session replicas)
ROUNDS = 2  # every configuration runs once per round, so slow drift of the machine hits all alike
CONCURRENCY = 32
WARMUP_S = 1.0
DURATION_S = 5.0
MAX_REQUESTS = 500_000  # per configuration, whatever the speed
CLK_TCK = os.sysconf("SC_CLK_TCK")


@dataclass
class Result:
    gateways: int
    sessions: int
    requests: int
    errors: int
    seconds: float
    p50_ms: float
    p99_ms: float
    cpu: dict[str, float]  # role -> percent of one core over the run
    latencies: list[float] = field(default_factory=list, repr=False)
    round_rps: list[int] = field(default_factory=list)

    @property
    def rps(self) -> float:
        return self.requests / self.seconds


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time of a process, from /proc (Linux)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def own_cpu_seconds() -> float:
    t = os.times()
    return t.user + t.system


async def closed_loop(urls: list[str], concurrency: int, warmup_s: float, duration_s: float) -> tuple[list[float], int, float]:
    """Logged-in clients spread over `urls` loop GET /api/me; latencies recorded after the warm-up only."""
    latencies: list[float] = []
    errors = 0
    clients = [aiohttp.ClientSession(urls[i % len(urls)], cookie_jar=aiohttp.CookieJar(unsafe=True)) for i in range(concurrency)]
    try:
        for i, client in enumerate(clients):
            async with client.post("/auth/login", json={"email": f"bench{i}@example.com", "name": f"Bench {i}"}) as response:
                if response.status != 200:
                    raise RuntimeError(f"login failed with {response.status}: {await response.text()}")
        start = time.monotonic()
        measure_from = start + warmup_s
        stop_at = measure_from + duration_s

        async def worker(client: aiohttp.ClientSession) -> None:
            nonlocal errors
            while len(latencies) < MAX_REQUESTS:
                sent = time.monotonic()
                if sent >= stop_at:
                    return
                async with client.get("/api/me") as response:
                    await response.read()
                    ok = response.status == 200
                done = time.monotonic()
                if sent >= measure_from:
                    if ok:
                        latencies.append(done - sent)
                    else:
                        errors += 1

        await asyncio.gather(*(worker(c) for c in clients))
        return latencies, errors, min(time.monotonic(), stop_at) - measure_from
    finally:
        await asyncio.gather(*(c.close() for c in clients))


def percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    return sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))]


async def run_config(nats: NatsServer, redis: RedisServer, gateways: int, sessions: int) -> Result:
    prefix = f"bench{uuid.uuid4().hex[:8]}"
    base = {"NATS_URL": nats.url, "REDIS_URL": redis.url, "NATS_SUBJECT_PREFIX": prefix, "AUTH_MODE": "dev", "SESSION_KV_BUCKET": f"sessions_{prefix}"}
    ports = [free_port() for _ in range(gateways)]
    services: list[Service] = [Service("session", service_env(**base, OPS_PORT="0")) for _ in range(sessions)]
    services += [Service("gateway", service_env(**base, GATEWAY_HOST="127.0.0.1", GATEWAY_PORT=str(port))) for port in ports]
    try:
        # Sessions first: a gateway is useful once a session replica listens on NATS.
        await asyncio.gather(*(asyncio.to_thread(svc.start) for svc in services if svc.name == "session"))
        await asyncio.gather(*(asyncio.to_thread(svc.start) for svc in services if svc.name == "gateway"))
        roles = {"gateway": [s for s in services if s.name == "gateway"], "session": [s for s in services if s.name == "session"], "nats": [nats], "redis": [redis]}
        before = {role: sum(cpu_seconds(p.proc.pid) for p in procs if p.proc) for role, procs in roles.items()}
        own_before = own_cpu_seconds()
        latencies, errors, seconds = await closed_loop([f"http://127.0.0.1:{port}" for port in ports], CONCURRENCY, WARMUP_S, DURATION_S)
        # CPU over the whole run (warm-up included), so divide by the whole wall time.
        wall = WARMUP_S + seconds
        cpu = {role: 100 * (sum(cpu_seconds(p.proc.pid) for p in procs if p.proc) - before[role]) / wall for role, procs in roles.items()}
        cpu["loadgen"] = 100 * (own_cpu_seconds() - own_before) / wall
    finally:
        for svc in reversed(services):
            code = svc.stop()
            if code != 0:
                print(f"warning: {svc.name} exited {code}:\n" + "\n".join(svc.lines[-10:]))
    latencies.sort()
    return Result(gateways, sessions, len(latencies), errors, seconds, percentile(latencies, 0.5) * 1000, percentile(latencies, 0.99) * 1000, cpu, latencies)


def report(results: list[Result]) -> None:
    print(
        f"GET /api/me, closed loop: {CONCURRENCY} clients, {DURATION_S:g} s measured after {WARMUP_S:g} s warm-up, "
        f"{ROUNDS} rounds, {os.cpu_count()} CPU cores; the load generator runs on the same cores"
    )
    print(f"{'configuration':<24}{'req/s':>8}{'(rounds)':>14}{'p50 ms':>8}{'p99 ms':>8}{'errors':>8}   CPU % of one core: gateway / session / nats / redis / loadgen")
    for r in results:
        label = f"{r.gateways} gateway{'s' if r.gateways > 1 else ''}, {r.sessions} session"
        cpu = " / ".join(f"{r.cpu[k]:.0f}" for k in ("gateway", "session", "nats", "redis", "loadgen"))
        rounds = "(" + ", ".join(str(x) for x in r.round_rps) + ")"
        print(f"{label:<24}{r.rps:>8.0f}{rounds:>14}{r.p50_ms:>8.2f}{r.p99_ms:>8.2f}{r.errors:>8}   {cpu}")
    by = {(r.gateways, r.sessions): r for r in results}
    base = by[(1, 1)].rps
    print(
        f"relative to 1 gateway + 1 session: 2 sessions x{by[(1, 2)].rps / base:.2f}, "
        f"2 gateways x{by[(2, 1)].rps / base:.2f}, 2 + 2 x{by[(2, 2)].rps / base:.2f}"
    )


async def run() -> int:
    nats = NatsServer().start()
    redis = RedisServer().start()
    try:
        rounds = [[await run_config(nats, redis, g, s) for g, s in CONFIGS] for _ in range(ROUNDS)]
    finally:
        nats.cleanup()
        redis.stop()
    results = [merge(runs) for runs in zip(*rounds)]
    report(results)
    return 1 if any(r.errors for r in results) else 0


def merge(runs: tuple[Result, ...]) -> Result:
    """One configuration over all rounds: requests and seconds add up; percentiles over every latency."""
    latencies = sorted(x for r in runs for x in r.latencies)
    first = runs[0]
    cpu = {role: sum(r.cpu[role] for r in runs) / len(runs) for role in first.cpu}
    merged = Result(first.gateways, first.sessions, sum(r.requests for r in runs), sum(r.errors for r in runs), sum(r.seconds for r in runs), 0, 0, cpu, latencies)
    merged.p50_ms, merged.p99_ms = percentile(latencies, 0.5) * 1000, percentile(latencies, 0.99) * 1000
    merged.round_rps = [round(r.rps) for r in runs]
    return merged


def main() -> int:
    return asyncio.run(run())


if __name__ == "__main__":
    raise SystemExit(main())
