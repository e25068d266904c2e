"""`python -m bench.session`: GET /api/me through gateway + session service vs. Flask + Flask-Session under gunicorn.

Starts its own nats-server and redis-server on free loopback ports, our session and
gateway processes (production logging: LOG_LEVEL=INFO, one canonical line per request),
then the reference Flask app (bench/flask_ref.py) under gunicorn on the same Redis. Each
side gets the same signed-in cookie shape and the same load (bench/loadgen.py, in a
process of its own): requests/s, p50/p99 latency, Redis commands per request from Redis's
own INFO commandstats, and the CPU each process spent per request (utime + stime from
/proc before and after the load), with the load average of the machine beside them.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import urllib.request
import uuid
from dataclasses import dataclass, field

import redis

from bench.cpu import load_average, snapshot, tree
from bench.loadgen import LoadResult, run_load
from bench.stack import service_env
from tests.harness import (
    ROOT,
    NatsServer,
    Process,
    RedisServer,
    Service,
    free_port,
    wait_until,
)

EMAIL, NAME = "bench@example.com", "Bench"
_NOT_COUNTED = {"info", "config|resetstat"}


@dataclass
class Round:
    """One measured load on one side."""

    result: LoadResult
    redis_commands: dict[str, int]
    cpu_s: dict[str, float]
    """CPU seconds each process (role) used during the load."""
    load: str
    """The machine's load average when the load ended."""


@dataclass
class Side:
    """Every round of one side: rounds alternate between the sides, so a busy moment of the machine hits both."""

    name: str
    roles: dict[str, list[int]]
    rounds: list[Round] = field(default_factory=list)

    @property
    def requests(self) -> int:
        return sum(r.result.requests for r in self.rounds)

    @property
    def median(self) -> LoadResult:
        """The round with the median requests/s (its latencies too)."""
        return sorted((r.result for r in self.rounds), key=lambda r: r.rps)[len(self.rounds) // 2]

    @property
    def errors(self) -> int:
        return sum(r.result.errors for r in self.rounds)

    @property
    def commands_per_request(self) -> float:
        return sum(sum(r.redis_commands.values()) for r in self.rounds) / self.requests if self.requests else float("nan")

    def cpu_us(self, role: str | None = None) -> float:
        """CPU µs per request of one role, or of all of them, over every round."""
        used = sum(sum(r.cpu_s.values()) if role is None else r.cpu_s.get(role, 0.0) for r in self.rounds)
        return 1e6 * used / self.requests if self.requests else float("nan")


GOAL_CPU_RATIO = 0.3
GOAL_RPS_RATIO = 3.0


def commandstats(client: redis.Redis) -> dict[str, int]:
    return {k.removeprefix("cmdstat_"): int(v["calls"]) for k, v in client.info("commandstats").items() if k.removeprefix("cmdstat_") not in _NOT_COUNTED}


def http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as response:
            return response.status == 200
    except OSError:
        return False


def login(base_url: str) -> str:
    """POST /auth/login and return the `session` cookie value."""
    body = json.dumps({"email": EMAIL, "name": NAME}).encode()
    req = urllib.request.Request(f"{base_url}/auth/login", data=body, headers={"Content-Type": "application/json"}, method="POST")
    with urllib.request.urlopen(req, timeout=5) as response:
        assert response.status == 200, response.status
        for header in response.headers.get_all("Set-Cookie") or []:
            name, _, rest = header.partition("=")
            if name.strip() == "session":
                return rest.split(";", 1)[0]
    raise RuntimeError(f"{base_url}/auth/login set no session cookie")


def measure(side: Side, base_url: str, cookie: str, client: redis.Redis, *, concurrency: int, seconds: float, warmup_s: float) -> None:
    headers = {"Cookie": f"session={cookie}"}
    url = f"{base_url}/api/me"
    run_load(url, concurrency=concurrency, duration_s=warmup_s, headers=headers)
    client.config_resetstat()
    before = snapshot(side.roles)
    result = run_load(url, concurrency=concurrency, duration_s=seconds, headers=headers)
    after = snapshot(side.roles)
    measured = Round(result, commandstats(client), {role: after[role] - before[role] for role in side.roles}, load_average())
    side.rounds.append(measured)
    cpu = {role: round(1e6 * used / max(result.requests, 1)) for role, used in measured.cpu_s.items()}
    print(f"  {side.name}: {json.dumps(result.summary())}; redis {measured.redis_commands}; CPU µs/request {cpu}; load average {measured.load}", flush=True)
    if result.errors:
        print(f"  warning: {result.errors} of {result.requests} requests failed on {side.name}: {result.statuses}", file=sys.stderr)


def table(ours: Side, ref: Side) -> str:
    rows: list[tuple[str, float, float, str]] = [
        ("requests/s (median round)", ours.median.rps, ref.median.rps, "{:,.0f}"),
        ("p50 latency (ms)", ours.median.p50_ms, ref.median.p50_ms, "{:.2f}"),
        ("p99 latency (ms)", ours.median.p99_ms, ref.median.p99_ms, "{:.2f}"),
        ("Redis commands / request", ours.commands_per_request, ref.commands_per_request, "{:.2f}"),
        ("failed requests", ours.errors, ref.errors, "{:,.0f}"),
    ]
    for role in ours.roles:
        rows.append((f"CPU µs / request: {role}", ours.cpu_us(role), ref.cpu_us(role) if role in ref.roles else float("nan"), "{:,.0f}"))
    for role in ref.roles:
        if role not in ours.roles:
            rows.append((f"CPU µs / request: {role}", float("nan"), ref.cpu_us(role), "{:,.0f}"))
    rows.append(("CPU µs / request: total", ours.cpu_us(), ref.cpu_us(), "{:,.0f}"))
    # What the measured CPU cost allows when the load has the machine's cores to itself.
    cores = os.cpu_count() or 1
    rows.append((f"req/s {cores} idle cores could serve", cores * 1e6 / ours.cpu_us(), cores * 1e6 / ref.cpu_us(), "{:,.0f}"))
    width = 30
    lines = [f"{'GET /api/me':<{width}} {ours.name:>20} {ref.name:>22} {'ours / flask':>13}"]
    for label, a, b, fmt in rows:
        ratio = f"{a / b:.2f}x" if b and a == a and b == b else "-"
        cells = [fmt.format(x) if x == x else "-" for x in (a, b)]
        lines.append(f"{label:<{width}} {cells[0]:>20} {cells[1]:>22} {ratio:>13}")
    cpu_ratio, rps_ratio = ours.cpu_us() / ref.cpu_us(), ours.median.rps / ref.median.rps
    met = cpu_ratio <= GOAL_CPU_RATIO and rps_ratio >= GOAL_RPS_RATIO
    lines.append(f"issue 21's goal, CPU <= {GOAL_CPU_RATIO}x Flask's with requests/s >= {GOAL_RPS_RATIO:g}x in the same run: {'met' if met else 'NOT met'} ({cpu_ratio:.2f}x, {rps_ratio:.2f}x)")
    lines.append(f"requests/s of each round: ours {', '.join(f'{r.result.rps:,.0f}' for r in ours.rounds)}; flask {', '.join(f'{r.result.rps:,.0f}' for r in ref.rounds)}")
    lines.append("load average (1 min / 5 min) after each round: " + "; ".join(f"ours {a.load}, flask {b.load}" for a, b in zip(ours.rounds, ref.rounds, strict=False)))
    return "\n".join(lines)


def pid(process: Process) -> int:
    assert process.proc is not None
    return process.proc.pid


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.session", description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=float, default=float(os.environ.get("BENCH_SECONDS", "15")), help="measured seconds per side, split over the rounds (BENCH_SECONDS)")
    p.add_argument("--rounds", type=int, default=3, help="rounds, each measuring ours then Flask")
    p.add_argument("--warmup", type=float, default=2.0, help="unmeasured seconds per side and round")
    p.add_argument("--concurrency", type=int, default=int(os.environ.get("BENCH_CONCURRENCY", "32")), help="connections (BENCH_CONCURRENCY)")
    p.add_argument("--gunicorn-workers", type=int, default=2)
    p.add_argument("--gunicorn-threads", type=int, default=8)
    args = p.parse_args(argv or [])
    per_round = args.seconds / max(args.rounds, 1)

    print(
        f"session bench: {args.concurrency} connections, {args.rounds} rounds of {per_round:g}s measured per side, {os.cpu_count()} CPUs shared by everything; load average {load_average()}",
        flush=True,
    )
    nats_server = NatsServer().start()
    redis_server = RedisServer().start()
    processes: list[Process] = []
    client = redis.Redis.from_url(redis_server.url)
    try:
        prefix = f"bench{uuid.uuid4().hex[:8]}"
        common = {"NATS_URL": nats_server.url, "NATS_SUBJECT_PREFIX": prefix, "OPS_PORT": "0"}
        session = Service("session", service_env(**common, REDIS_URL=redis_server.url, SESSION_KV_BUCKET=f"sessions_{prefix}"))
        processes.append(session.start())
        gateway_port = free_port()
        # Production logging: INFO, so one canonical line per request (gunicorn keeps no access log by default).
        gateway_env = service_env(**common, GATEWAY_PORT=str(gateway_port), AUTH_MODE="dev", LOG_LEVEL="INFO")
        gateway = Process("gateway", [sys.executable, "-m", "services.gateway"], env=gateway_env, cwd=ROOT)
        processes.append(gateway.start())
        gateway_url = f"http://127.0.0.1:{gateway_port}"
        wait_until(lambda: http_ok(f"{gateway_url}/healthz"), timeout=30, what="the gateway")

        flask_port = free_port()
        argv = [sys.executable, "-m", "gunicorn", "-w", str(args.gunicorn_workers), "-k", "gthread", "--threads", str(args.gunicorn_threads)]
        argv += ["-b", f"127.0.0.1:{flask_port}", "bench.flask_ref:create_app()"]
        gunicorn = Process("gunicorn", argv, env=service_env(REDIS_URL=redis_server.url), cwd=ROOT)
        processes.append(gunicorn.start())
        flask_url = f"http://127.0.0.1:{flask_port}"
        wait_until(lambda: http_ok(f"{flask_url}/healthz"), timeout=30, what="gunicorn")

        ours = Side("gateway + session", {"gateway": [pid(gateway)], "session": [pid(session)], "nats-server": [pid(nats_server)], "redis": [pid(redis_server)]})
        ref = Side(f"flask ({args.gunicorn_workers}w x {args.gunicorn_threads}t gthread)", {"gunicorn (all workers)": tree(pid(gunicorn)), "redis": [pid(redis_server)]})
        cookies = {ours.name: login(gateway_url), ref.name: login(flask_url)}
        for _ in range(args.rounds):
            for side, url in ((ours, gateway_url), (ref, flask_url)):
                measure(side, url, cookies[side.name], client, concurrency=args.concurrency, seconds=per_round, warmup_s=args.warmup)
    finally:
        for process in reversed(processes):
            process.stop()
        client.close()
        redis_server.stop()
        nats_server.cleanup()

    print()
    print(table(ours, ref))
    return 0 if ours.errors == 0 else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
