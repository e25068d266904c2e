"""The scaling proof: 2 gateways, 2 session and 2 query replicas under steady load lose no call to a SIGTERM and heal after a NATS restart."""

from __future__ import annotations

import asyncio
import signal
import time
from collections import Counter
from dataclasses import dataclass, field

import aiohttp

from tests.client import browser, events, login
from tests.conftest import System, SystemFactory
from tests.harness import (
    NatsServer,
    RedisServer,
    Service,
    free_port,
    http_status,
    wait_until,
)
from tests.test_e2e import counting_sql, rows_of, types_of

CLIENTS = 8
SMALL = 20
CALL_TIMEOUT_S = 30.0  # far above any healthy call: reaching it means the call hung
MAX_ITERATIONS = 20_000  # per client; the orchestration ends the load long before


@dataclass
class Call:
    kind: str  # "me" or "query"
    outcome: str  # "ok", "503", "tool-error", or a failure description
    started: float
    ended: float


@dataclass
class Load:
    """Clients that log in once, then loop GET /api/me and a small query, recording every outcome."""

    urls: list[str]
    calls: list[Call] = field(default_factory=list)
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    tool_errors: Counter[str] = field(default_factory=Counter)
    outcomes: Counter[str] = field(default_factory=Counter)
    _progress: asyncio.Event = field(default_factory=asyncio.Event)

    async def more(self, n: int, timeout: float, outcome: str | None = None) -> None:
        """Wait until `n` more calls completed (only those with `outcome`, when given)."""

        def count() -> int:
            return len(self.calls) if outcome is None else self.outcomes[outcome]

        target = count() + n
        try:
            async with asyncio.timeout(timeout):
                while count() < target:
                    self._progress.clear()
                    await self._progress.wait()
        except TimeoutError:
            raise TimeoutError(f"fewer than {n} more {outcome or ''} calls in {timeout}s: {self.summary()}") from None

    def _record(self, call: Call) -> None:
        self.calls.append(call)
        self.outcomes[call.outcome] += 1
        self._progress.set()

    async def _me(self, client: aiohttp.ClientSession) -> str:
        async with client.get("/api/me") as response:
            if response.status == 200:
                return "ok" if (await response.json()).get("user") else "200 without a user"
            return await refusal(response)

    async def _query(self, client: aiohttp.ClientSession) -> str:
        async with client.post("/api/query", json={"sql": counting_sql(SMALL)}) as response:
            if response.status != 200:
                return await refusal(response)
            parts = [p async for p in events(response)]
        kinds = types_of(parts)
        if kinds[-3:] != ["finish-step", "finish", "[DONE]"]:
            return f"stream ended without finish: {kinds[-3:]}"
        if "tool-output-error" in kinds:
            self.tool_errors[parts[kinds.index("tool-output-error")]["errorText"]] += 1
            return "tool-error"
        final = [p for p in parts if p != "[DONE]" and p["type"] == "tool-output-available" and not p.get("preliminary")]
        try:
            rows = rows_of(parts)
        except AssertionError as exc:
            return f"broken rows: {exc}"
        if len(final) != 1 or final[0]["output"]["row_count"] != SMALL or len(rows) != SMALL:
            return f"incomplete: {len(rows)} rows, {len(final)} final outputs"
        return "ok"

    async def _timed(self, kind: str, call) -> None:  # type: ignore[no-untyped-def]
        started = time.monotonic()
        try:
            outcome = await asyncio.wait_for(call, CALL_TIMEOUT_S)
        except TimeoutError:
            outcome = "hang"
        except aiohttp.ClientError as exc:
            outcome = f"connection error {type(exc).__name__}"
        self._record(Call(kind, outcome, started, time.monotonic()))

    async def client(self, index: int) -> None:
        async with browser(self.urls[index % len(self.urls)]) as client:
            await login(client, f"user{index}@example.com", f"User {index}")
            for _ in range(MAX_ITERATIONS):
                if self.stop.is_set():
                    return
                await self._timed("me", self._me(client))
                if self.stop.is_set():
                    return
                await self._timed("query", self._query(client))

    def summary(self, calls: list[Call] | None = None) -> dict[str, int]:
        return dict(Counter(f"{c.kind}:{c.outcome}" for c in (self.calls if calls is None else calls)))


async def refusal(response: aiohttp.ClientResponse) -> str:
    """ "503" for a proper fail-fast refusal (Retry-After and a JSON error); anything else describes the failure."""
    body = await response.read()
    if response.status == 503 and response.headers.get("Retry-After") and body.startswith(b'{"error"'):
        return "503"
    return f"{response.status} {body[:100]!r}"


def add(system: System, label: str, name: str, **extra: str) -> Service:
    svc = Service(name, system.service_env(name, **extra))
    system.services[label] = svc
    return svc


def latency(calls: list[Call]) -> str:
    if not calls:
        return "-"
    spans = sorted(c.ended - c.started for c in calls)
    return f"p50 {spans[len(spans) // 2] * 1000:.1f} ms, max {spans[-1] * 1000:.1f} ms"


async def test_two_of_everything_survive_replica_sigterm_and_a_nats_restart(make_system: SystemFactory, nats_server: NatsServer, redis_server: RedisServer) -> None:
    system = make_system(nats_url=nats_server.url, redis_url=redis_server.url, start=())
    second_gateway_port = free_port()
    # Stop order at teardown is the reverse of this: gateways first, then query, then session.
    session_a, session_b = add(system, "session", "session"), add(system, "session-2", "session")
    query_a, query_b = add(system, "query", "query"), add(system, "query-2", "query")
    add(system, "gateway", "gateway"), add(system, "gateway-2", "gateway", GATEWAY_PORT=str(second_gateway_port))
    await asyncio.gather(*(asyncio.to_thread(svc.start) for svc in system.services.values()))
    urls = [system.url, f"http://127.0.0.1:{second_gateway_port}"]
    for url in urls:
        await asyncio.to_thread(wait_until, lambda url=url: http_status(f"{url}/readyz") == 200, 30, f"{url} ready")

    load = Load(urls)
    clients = [asyncio.create_task(load.client(i)) for i in range(CLIENTS)]
    marks: dict[str, float] = {}
    try:
        # 1. Steady load, then SIGTERM one session and one query replica while it runs.
        await load.more(200, 30)
        marks["sigterm"] = time.monotonic()
        session_a.send_signal(signal.SIGTERM)
        query_a.send_signal(signal.SIGTERM)
        codes = await asyncio.gather(asyncio.to_thread(session_a.proc.wait, 60), asyncio.to_thread(query_a.proc.wait, 60))
        marks["drained"] = time.monotonic()
        assert codes == [0, 0], f"replicas exited {codes}"
        await load.more(200, 30)

        # 2. NATS goes away under load: calls fail fast with 503, then succeed again without any restart.
        marks["nats_down"] = time.monotonic()
        await asyncio.to_thread(nats_server.stop)
        await load.more(50, 30, "503")
        await asyncio.to_thread(nats_server.start)
        marks["nats_up"] = time.monotonic()
        for url in urls:
            await asyncio.to_thread(wait_until, lambda url=url: http_status(f"{url}/readyz") == 200, 30, f"{url} ready again")
        marks["healed"] = time.monotonic()
        await load.more(200, 30)
    finally:
        load.stop.set()
        results = await asyncio.wait_for(asyncio.gather(*clients, return_exceptions=True), CALL_TIMEOUT_S + 10)
    errors = [r for r in results if isinstance(r, BaseException)]
    assert not errors, errors

    before_gap = [c for c in load.calls if c.ended < marks["nats_down"]]
    gap = [c for c in load.calls if c.ended >= marks["nats_down"] and c.started < marks["healed"]]
    after = [c for c in load.calls if c.started >= marks["healed"]]
    during_drain = [c for c in before_gap if c.ended >= marks["sigterm"] and c.started <= marks["drained"]]
    print(f"\n[proof] {CLIENTS} clients over 2 gateways; {len(load.calls)} calls in {load.calls[-1].ended - load.calls[0].started:.1f} s")
    print(f"[proof] before the NATS restart ({len(before_gap)} calls, {len(during_drain)} overlapping the replica SIGTERMs): {load.summary(before_gap)}")
    print(f"[proof] drain of one session and one query replica took {(marks['drained'] - marks['sigterm']) * 1000:.0f} ms")
    print(f"[proof] NATS gap (stop to ready again, {(marks['healed'] - marks['nats_down']) * 1000:.0f} ms, {len(gap)} calls): {load.summary(gap)}")
    print(f"[proof] after healing ({len(after)} calls): {load.summary(after)}")
    for outcome in sorted(load.outcomes):
        print(f"[proof] latency of {outcome!r} calls ({load.outcomes[outcome]}): {latency([c for c in load.calls if c.outcome == outcome])}")
    print(f"[proof] max latency of any call: {max(c.ended - c.started for c in load.calls) * 1000:.0f} ms (a hang would be {CALL_TIMEOUT_S:g} s)")
    if load.tool_errors:
        print(f"[proof] tool-output-error texts: {dict(load.tool_errors)}")

    session_failures = [c for c in before_gap if c.kind == "me" and c.outcome != "ok"]
    assert not session_failures, f"session calls failed while a replica drained: {load.summary(session_failures)}"
    assert {c.outcome for c in before_gap if c.kind == "query"} <= {"ok", "tool-error"}, load.summary(before_gap)
    assert {c.outcome for c in gap} <= {"ok", "503", "tool-error"}, f"the NATS gap caused more than 503s: {load.summary(gap)}"
    assert {c.outcome for c in after} == {"ok"}, f"calls failed after NATS came back: {load.summary(after)}"
    assert session_b.running and query_b.running, "the surviving replicas must ride out the NATS restart"
