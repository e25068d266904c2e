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
from dataclasses import dataclass

import redis

from bench.cpu import load_average, snapshot, tree
from bench.loadgen import LoadResult, run_load
from tests.harness import (
    ROOT,
    NatsServer,
    Process,
    RedisServer,
    Service,
    free_port,
    service_env,
    wait_until,
)

EMAIL, NAME = "bench@example.com", "Bench"
_NOT_COUNTED = {"info", "config|resetstat"}


@dataclass
class Side:
    name: str
    result: LoadResult
    redis_commands: dict[str, int]
    cpu_s: dict[str, float]
    """CPU seconds each process (role) used during the measured load."""
    load: str
    """The machine's load average when the measured load ended."""

    @property
    def commands_per_request(self) -> float:
        return sum(self.redis_commands.values()) / self.result.requests if self.result.requests else float("nan")

    def cpu_us(self, role: str | None = None) -> float:
        """CPU µs per request of one role, or of all of them."""
        used = sum(self.cpu_s.values()) if role is None else self.cpu_s.get(role, 0.0)
        return 1e6 * used / self.result.requests if self.result.requests else float("nan")


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


def measure(name: str, base_url: str, client: redis.Redis, roles: dict[str, list[int]], *, concurrency: int, seconds: float, warmup_s: float) -> Side:
    cookie = login(base_url)
    headers = {"Cookie": f"session={cookie}"}
    url = f"{base_url}/api/me"
    run_load(url, concurrency=concurrency, duration_s=warmup_s, headers=headers)
    client.config_resetstat()
    before = snapshot(roles)
    result = run_load(url, concurrency=concurrency, duration_s=seconds, headers=headers)
    after = snapshot(roles)
    side = Side(name, result, commandstats(client), {role: after[role] - before[role] for role in roles}, load_average())
    cpu = {role: round(side.cpu_us(role)) for role in roles}
    print(f"  {name}: {json.dumps(result.summary())}; redis {side.redis_commands}; CPU µs/request {cpu}; load average {side.load}", flush=True)
    if result.errors:
        print(f"  warning: {result.errors} of {result.requests} requests failed on {name}: {result.statuses}", file=sys.stderr)
    return side


def table(ours: Side, ref: Side) -> str:
    rows = [
        ("requests/s", ours.result.rps, ref.result.rps, "{:,.0f}"),
        ("p50 latency (ms)", ours.result.p50_ms, ref.result.p50_ms, "{:.2f}"),
        ("p99 latency (ms)", ours.result.p99_ms, ref.result.p99_ms, "{:.2f}"),
        ("Redis commands / request", ours.commands_per_request, ref.commands_per_request, "{:.2f}"),
        ("failed requests", ours.result.errors, ref.result.errors, "{:,.0f}"),
    ]
    for role in ours.cpu_s:
        rows.append((f"CPU µs / request: {role}", ours.cpu_us(role), ref.cpu_us(role) if role in ref.cpu_s else float("nan"), "{:,.0f}"))
    for role in ref.cpu_s:
        if role not in ours.cpu_s:
            rows.append((f"CPU µs / request: {role}", float("nan"), ref.cpu_us(role), "{:,.0f}"))
    rows.append(("CPU µs / request: total", ours.cpu_us(), ref.cpu_us(), "{:,.0f}"))
    width = 30
    lines = [f"{'GET /api/me':<{width}} {ours.name:>20} {ref.name:>22} {'ours / flask':>13}"]
    for label, a, b, fmt in rows:
        ratio = f"{a / b:.2f}x" if b and a == a and b == b else "-"
        cells = [fmt.format(x) if x == x else "-" for x in (a, b)]
        lines.append(f"{label:<{width}} {cells[0]:>20} {cells[1]:>22} {ratio:>13}")
    lines.append(f"load average at the end of each side: ours {ours.load}; flask {ref.load}")
    return "\n".join(lines)


def pid(process: Process) -> int:
    assert process.proc is not None
    return process.proc.pid


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.session", description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=float, default=float(os.environ.get("BENCH_SECONDS", "15")), help="measured seconds per side (BENCH_SECONDS)")
    p.add_argument("--warmup", type=float, default=2.0, help="unmeasured seconds per side")
    p.add_argument("--concurrency", type=int, default=int(os.environ.get("BENCH_CONCURRENCY", "32")), help="connections (BENCH_CONCURRENCY)")
    p.add_argument("--gunicorn-workers", type=int, default=2)
    p.add_argument("--gunicorn-threads", type=int, default=8)
    args = p.parse_args(argv or [])

    print(f"session bench: {args.concurrency} connections, {args.seconds:g}s measured per side, {os.cpu_count()} CPUs shared by everything", flush=True)
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
        print(f"  load average before: {load_average()}", flush=True)
        roles = {"gateway": [pid(gateway)], "session": [pid(session)], "nats-server": [pid(nats_server)], "redis": [pid(redis_server)]}
        ours = measure("gateway + session", gateway_url, client, roles, concurrency=args.concurrency, seconds=args.seconds, warmup_s=args.warmup)
        for process in (gateway, session):
            process.stop()

        flask_port = free_port()
        argv = [sys.executable, "-m", "gunicorn", "-w", str(args.gunicorn_workers), "-k", "gthread", "--threads", str(args.gunicorn_threads)]
        argv += ["-b", f"127.0.0.1:{flask_port}", "bench.flask_ref:create_app()"]
        gunicorn = Process("gunicorn", argv, env=service_env(REDIS_URL=redis_server.url), cwd=ROOT)
        processes.append(gunicorn.start())
        flask_url = f"http://127.0.0.1:{flask_port}"
        wait_until(lambda: http_ok(f"{flask_url}/healthz"), timeout=30, what="gunicorn")
        roles = {"gunicorn (all workers)": tree(pid(gunicorn)), "redis": [pid(redis_server)]}
        ref = measure(f"flask ({args.gunicorn_workers}w x {args.gunicorn_threads}t gthread)", flask_url, client, roles, concurrency=args.concurrency, seconds=args.seconds, warmup_s=args.warmup)
    finally:
        for process in reversed(processes):
            process.stop()
        client.close()
        redis_server.stop()
        nats_server.cleanup()

    print()
    print(table(ours, ref))
    return 0 if ours.result.errors == 0 else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
