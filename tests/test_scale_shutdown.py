"""Graceful shutdown: on SIGTERM a replica finishes the work it holds, then exits 0."""

from __future__ import annotations

import asyncio
import signal
import socket
from collections import Counter

import aiohttp

from tests.client import browser, events, login
from tests.conftest import System, SystemFactory
from tests.harness import Service, http_status, wait_until
from tests.test_e2e import counting_sql, rows_of, types_of

BIG = 600_000  # ~13 MB of events: more than socket buffers hold, so a client that stops reading stalls it


def start_replica(system: System, name: str, label: str, **extra: str) -> Service:
    """Start one more replica of `name`; the system's teardown stops it and checks it exits 0."""
    svc = Service(name, system.service_env(name, **extra)).start()
    system.services[label] = svc
    return svc


async def exit_code(svc: Service, timeout: float = 60.0) -> int:
    """Wait (in a thread, off the event loop) for a process that was told to stop to exit."""
    assert svc.proc is not None
    return await asyncio.to_thread(svc.proc.wait, timeout)


def _small_receive_buffer(addr_info: tuple) -> socket.socket:  # type: ignore[type-arg]
    family, type_, proto, _, _ = addr_info
    sock = socket.socket(family=family, type=type_, proto=proto)
    # Set before connecting, so the kernel does not grow it: a client that stops reading then
    # holds up the stream within a few hundred kB instead of taking megabytes into its buffers.
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 32 * 1024)
    return sock


def slow_browser(base_url: str) -> aiohttp.ClientSession:
    """A browser whose pauses really pause the stream it reads (see _small_receive_buffer)."""
    connector = aiohttp.TCPConnector(socket_factory=_small_receive_buffer)
    return aiohttp.ClientSession(base_url, cookie_jar=aiohttp.CookieJar(unsafe=True), connector=connector, headers={"Origin": base_url})


async def open_big_stream(client: aiohttp.ClientSession, n: int) -> tuple[aiohttp.ClientResponse, list, object]:
    """Start an n-row query and read up to its first rows part, so the stream is in flight.

    Use a slow_browser: as long as it reads no further, the rest of the stream waits.
    """
    response = await client.post("/api/query", json={"sql": counting_sql(n)})
    assert response.status == 200, await response.text()
    parts: list = []
    stream = events(response)
    async for part in stream:
        parts.append(part)
        if part != "[DONE]" and part["type"] == "data-query-rows":
            break
    assert parts and parts[-1] != "[DONE]" and parts[-1]["type"] == "data-query-rows", f"no rows came: {types_of(parts)}"
    return response, parts, stream


def assert_complete(parts: list, n: int) -> None:
    kinds = types_of(parts)
    assert "tool-output-error" not in kinds, parts[kinds.index("tool-output-error")]
    assert len(rows_of(parts)) == n
    final = [p for p in parts if p != "[DONE]" and p["type"] == "tool-output-available" and not p.get("preliminary")]
    assert len(final) == 1 and final[0]["output"]["row_count"] == n and final[0]["output"]["truncated"] is False
    assert kinds[-3:] == ["finish-step", "finish", "[DONE]"]


def event_names(svc: Service) -> list[str]:
    return [e.get("event", "") for e in svc.events()]


async def test_sigterm_to_a_gateway_finishes_its_in_flight_stream_and_turns_readyz_503(make_system: SystemFactory) -> None:
    """A gateway told to stop in the middle of a 600k-row stream says "not ready", writes every row, then exits 0."""
    system = make_system(SHUTDOWN_GRACE_S="60")
    gateway = system.services["gateway"]
    async with slow_browser(system.url) as client:
        await login(client)
        response, parts, stream = await open_big_stream(client, BIG)
        # The client reads nothing while the gateway is told to stop: the stream is held in flight.
        gateway.send_signal(signal.SIGTERM)
        await asyncio.to_thread(wait_until, lambda: http_status(f"{system.url}/readyz") == 503, 15, "/readyz to answer 503")
        async with client.get("/api/me") as late:  # a request still routed here meanwhile is served, not refused
            assert late.status == 200
        async for part in stream:
            parts.append(part)
        response.release()
    assert_complete(parts, BIG)
    assert await exit_code(gateway) == 0, "\n".join(gateway.lines[-30:])
    await asyncio.to_thread(gateway.wait_for_line, lambda line: '"stopped"' in line, 10)
    names = event_names(gateway)
    streams = [e for e in gateway.events("query_stream")]
    assert len(streams) == 1 and streams[0]["outcome"] == "ok" and streams[0]["rows"] == BIG
    assert names.index("shutting_down") < names.index("query_stream") < names.index("stopped"), "the stream must end during the shutdown"
    assert http_status(f"{system.url}/healthz") is None, "the gateway must no longer listen once it exited"


async def test_a_gateway_stuck_on_a_stalled_client_still_exits_0_once_the_grace_is_over(make_system: SystemFactory) -> None:
    """SHUTDOWN_GRACE_S bounds the shutdown: a client that stops reading cannot keep the gateway alive."""
    system = make_system(SHUTDOWN_GRACE_S="1")
    gateway = system.services["gateway"]
    async with slow_browser(system.url) as client:
        await login(client)
        response, _, _ = await open_big_stream(client, BIG)
        gateway.send_signal(signal.SIGTERM)
        assert await exit_code(gateway) == 0, "\n".join(gateway.lines[-30:])
        response.close()
    await asyncio.to_thread(gateway.wait_for_line, lambda line: '"stopped"' in line, 10)
    assert gateway.events("shutdown_grace_elapsed"), "\n".join(gateway.lines[-12:])
    streams = gateway.events("query_stream")
    assert len(streams) == 1 and streams[0]["outcome"] == "cancelled" and streams[0]["rows"] < BIG


async def test_sigterm_to_a_query_replica_finishes_its_in_flight_stream(make_system: SystemFactory) -> None:
    """The query replica that runs a stream finishes it (every row) after SIGTERM, while a second replica takes new queries."""
    system = make_system()
    first = system.services["query"]
    async with slow_browser(system.url) as client:
        await login(client)
        response, parts, stream = await open_big_stream(client, BIG)
        # Only `first` existed when the stream started, so it is the one producing it.
        start_replica(system, "query", "query-2")
        first.send_signal(signal.SIGTERM)
        async with browser(system.url) as other:
            await login(other, "bob@example.com", "Bob")
            async with other.post("/api/query", json={"sql": counting_sql(50)}) as fresh:
                fresh_parts = [p async for p in events(fresh)]
        async for part in stream:
            parts.append(part)
        response.release()
    assert_complete(parts, BIG)
    assert_complete(fresh_parts, 50)
    assert await exit_code(first) == 0, "\n".join(first.lines[-30:])


async def test_sigterm_to_a_session_replica_under_load_fails_no_call(make_system: SystemFactory) -> None:
    """With a second session replica up, SIGTERM to one during steady /api/me load costs zero failed calls."""
    system = make_system()
    first = system.services["session"]
    start_replica(system, "session", "session-2")
    outcomes: Counter[str] = Counter()
    calls = [0]  # read from the wait_until thread, so a plain int rather than the Counter
    during_drain = 0
    draining = False
    done = asyncio.Event()
    stopped = asyncio.Event()
    calls_after_stop = 0

    async def client_loop(index: int) -> None:
        nonlocal calls_after_stop, during_drain
        async with browser(system.url) as client:
            await login(client, f"load{index}@example.com", f"Load {index}")
            for _ in range(5000):  # bounded; the test ends the loop long before
                if done.is_set():
                    return
                overlaps = draining
                async with client.get("/api/me") as response:
                    body = await response.read()
                    outcomes["ok" if response.status == 200 else f"{response.status} {body[:120]!r}"] += 1
                calls[0] += 1
                during_drain += overlaps or draining
                if stopped.is_set():
                    calls_after_stop += 1
                    if calls_after_stop >= 300:
                        done.set()

    clients = [asyncio.create_task(client_loop(i)) for i in range(6)]
    try:
        await asyncio.to_thread(wait_until, lambda: calls[0] >= 300, 30, "300 calls before the SIGTERM")
        draining = True
        first.send_signal(signal.SIGTERM)
        code = await exit_code(first)
        draining = False
        stopped.set()
        await asyncio.wait_for(asyncio.gather(*clients), 60)
    finally:
        done.set()
        for task in clients:
            task.cancel()
    print(f"\n[session drain] calls: {dict(outcomes)}, {during_drain} of them between the SIGTERM and the replica's exit")
    assert code == 0, "\n".join(first.lines[-30:])
    assert calls_after_stop >= 300 and set(outcomes) == {"ok"}, dict(outcomes)
    assert during_drain > 0, "no call overlapped the drain, so it proved nothing"


async def test_every_service_exits_0_on_sigterm(make_system: SystemFactory) -> None:
    """Each service, idle or after serving, stops on SIGTERM with exit code 0 and no traceback."""
    system = make_system()
    async with browser(system.url) as client:
        await login(client)
        async with client.post("/api/query", json={"sql": counting_sql(10)}) as response:
            assert_complete([p async for p in events(response)], 10)
    codes = system.stop()
    assert codes == {"gateway": 0, "query": 0, "session": 0}, codes
    for name, svc in system.services.items():
        assert not any("Traceback" in line for line in svc.lines), f"{name} printed a traceback:\n" + "\n".join(svc.lines[-30:])
