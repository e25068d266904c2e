"""shared.bus.Server over a real NATS: one dispatcher measures every endpoint, and services answer
micro discovery (`$SRV.PING|INFO|STATS`) that nats.py's own `nats.micro` types read.

The services run in this process (their own factories, or a bare Server), so no process start is
paid; the metrics are read from the ops app's /metrics as Prometheus scrapes them.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import msgspec
import nats.micro.request as micro_request
import pytest
from aiohttp.test_utils import TestClient
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.micro.service import ServiceInfo, ServicePing, ServiceStats

from shared.bus import _UP, SERVICE_VERSION, Server, connect, request, wait_connected
from shared.contracts import QUERY_CONNECTION_OPS
from shared.errors import ServiceError
from shared.ops import build_ops_app
from tests.conftest import InProcessFactory
from tests.harness import NatsServer, eventually
from tests.metrics import sample_value

ClientFactory = Callable[..., Awaitable[TestClient[Any, Any]]]


class Echo(msgspec.Struct):
    text: str


class Echoed(msgspec.Struct):
    text: str


@pytest.fixture
async def served(nc: NATS) -> AsyncIterator[tuple[Server, str]]:
    """A bare Server named `echo` with one typed endpoint under a unique subject, and a handler that fails unexpectedly on `boom`."""
    prefix = f"b{uuid.uuid4().hex[:10]}"

    async def echo(req: Echo, _: Msg) -> Echoed:
        if req.text == "boom":
            raise RuntimeError("secret internals")
        if req.text == "missing":
            raise ServiceError("not_found", "nothing called missing")
        return Echoed(req.text)

    server = Server(nc, "echo", metadata={"subject_prefix": prefix})
    await server.add(f"{prefix}.echo", "echo", echo)
    await server.start()
    yield server, prefix
    await server.drain(1.0)


async def discover(nc: NATS, subject: str) -> dict[str, Any]:
    return json.loads((await nc.request(subject, b"", timeout=2)).data)


async def scrape(aiohttp_client: ClientFactory) -> str:
    async def ready() -> dict[str, bool]:
        return {"ok": True}

    client = await aiohttp_client(build_ops_app(ready))
    async with client.get("/metrics") as response:
        return await response.text()


async def test_ping_info_and_stats_answer_by_id_in_the_micro_format(nc: NATS, served: tuple[Server, str]) -> None:
    server, prefix = served
    ping = await discover(nc, f"$SRV.PING.echo.{server.id}")
    info = await discover(nc, f"$SRV.INFO.echo.{server.id}")
    stats = await discover(nc, f"$SRV.STATS.echo.{server.id}")

    assert ping["type"] == "io.nats.micro.v1.ping_response"
    assert ServicePing.from_dict(ping) == ServicePing(id=server.id, name="echo", version=SERVICE_VERSION, metadata={"subject_prefix": prefix})
    assert info["type"] == "io.nats.micro.v1.info_response"
    parsed = ServiceInfo.from_dict(info)
    assert [(e.name, e.subject, e.queue_group) for e in parsed.endpoints] == [("echo", f"{prefix}.echo", "echo")]
    assert stats["type"] == "io.nats.micro.v1.stats_response"
    assert [(e.name, e.num_requests, e.num_errors) for e in ServiceStats.from_dict(stats).endpoints] == [("echo", 0, 0)]


async def test_every_instance_answers_a_ping_to_all_and_to_its_name(nc: NATS, served: tuple[Server, str]) -> None:
    server, _ = served
    for subject in ("$SRV.PING", "$SRV.PING.echo"):
        inbox = nc.new_inbox()
        sub = await nc.subscribe(inbox)
        await nc.publish(subject, b"", reply=inbox)
        ids = set()
        while server.id not in ids:  # other services on this NATS may answer a ping to all as well
            ids.add(ServicePing.from_dict(json.loads((await sub.next_msg(timeout=2)).data)).id)
        await sub.unsubscribe()


async def test_stats_count_requests_and_a_bad_request_as_an_error(nc: NATS, served: tuple[Server, str], aiohttp_client: ClientFactory) -> None:
    server, prefix = served
    subject = f"{prefix}.echo"
    assert await request(nc, subject, Echo("hi"), reply=Echoed) == Echoed("hi")
    assert await request(nc, subject, Echo("again"), reply=Echoed) == Echoed("again")
    with pytest.raises(ServiceError) as refused:
        await request(nc, subject, {"text": 42})
    assert refused.value.code == "bad_request" and "$.text" in refused.value.message

    stats = ServiceStats.from_dict(await discover(nc, f"$SRV.STATS.echo.{server.id}")).endpoints[0]
    assert (stats.num_requests, stats.num_errors) == (3, 1)
    assert stats.last_error.startswith("bad_request:") and "$.text" in stats.last_error
    assert stats.processing_time > 0 and stats.average_processing_time == stats.processing_time // 3

    exposition = await scrape(aiohttp_client)
    assert sample_value(exposition, "bus_request_seconds_count", subject=subject, outcome="ok") == 2
    assert sample_value(exposition, "bus_request_seconds_count", subject=subject, outcome="bad_request") == 1


async def test_an_error_reply_carries_the_code_in_the_body_and_in_micro_headers(nc: NATS, served: tuple[Server, str]) -> None:
    _, prefix = served
    reply = await nc.request(f"{prefix}.echo", msgspec.msgpack.encode(Echo("missing")), timeout=2)
    assert msgspec.msgpack.decode(reply.data) == {"error": {"code": "not_found", "message": "nothing called missing"}}
    assert reply.headers is not None
    assert reply.headers[micro_request.ERROR_CODE_HEADER] == "not_found"
    assert reply.headers[micro_request.ERROR_HEADER] == "nothing called missing"


async def test_an_unexpected_failure_is_counted_and_its_internals_stay_in_the_log(nc: NATS, served: tuple[Server, str], aiohttp_client: ClientFactory) -> None:
    server, prefix = served
    reply = await nc.request(f"{prefix}.echo", msgspec.msgpack.encode(Echo("boom")), timeout=2)
    assert b"secret internals" not in reply.data and "secret internals" not in json.dumps(reply.headers)
    assert msgspec.msgpack.decode(reply.data)["error"]["code"] == "internal"

    stats = ServiceStats.from_dict(await discover(nc, f"$SRV.STATS.echo.{server.id}")).endpoints[0]
    assert (stats.num_requests, stats.num_errors) == (1, 1)
    assert "secret internals" not in stats.last_error
    assert sample_value(await scrape(aiohttp_client), "bus_request_seconds_count", subject=f"{prefix}.echo", outcome="internal") == 1


async def test_a_slow_request_does_not_hold_the_next_one_on_the_same_subject(nc: NATS) -> None:
    """The reason the dispatcher runs each message in its own task (nats.micro's Endpoint awaits it in the subscription)."""
    prefix = f"b{uuid.uuid4().hex[:10]}"
    release = asyncio.Event()

    async def handle(req: Echo, _: Msg) -> Echoed:
        if req.text == "slow":
            await release.wait()
        return Echoed(req.text)

    server = Server(nc, "waiter")
    await server.add(f"{prefix}.wait", "waiter", handle)
    try:
        slow = asyncio.ensure_future(request(nc, f"{prefix}.wait", Echo("slow"), reply=Echoed, timeout=5))
        assert await request(nc, f"{prefix}.wait", Echo("fast"), reply=Echoed, timeout=5) == Echoed("fast")
        assert not slow.done()
        release.set()
        assert await slow == Echoed("slow")
    finally:
        await server.drain(1.0)


async def test_the_session_service_is_discoverable_with_every_endpoint(nc: NATS, start_inprocess: InProcessFactory) -> None:
    running = await start_inprocess(("session",))
    assert running.session is not None
    service_id, subjects = running.session.server.id, running.subjects
    info = ServiceInfo.from_dict(await discover(nc, f"$SRV.INFO.session.{service_id}"))
    assert info.metadata == {"subject_prefix": running.prefix}
    endpoints = {e.name: e.subject for e in info.endpoints}
    assert endpoints["get"] == subjects.session_get and endpoints["get_many"] == subjects.session_get_many
    assert endpoints["conversation_load"] == subjects.session_conversation("load")
    assert endpoints["connection_get"] == subjects.session_connection("get")
    assert all(e.queue_group == "session" for e in info.endpoints)

    with pytest.raises(ServiceError, match=r"\$\.sid"):  # refused before any handler runs
        await request(nc, subjects.session_get, {"sid": 7})
    stats = {e.name: e for e in ServiceStats.from_dict(await discover(nc, f"$SRV.STATS.session.{service_id}")).endpoints}
    assert (stats["get"].num_requests, stats["get"].num_errors) == (1, 1)
    assert stats["set"].num_requests == 0


async def test_the_query_service_is_discoverable(nc: NATS, start_inprocess: InProcessFactory, tmp_path: Path) -> None:
    running = await start_inprocess(("query",), QUERY_SAMPLE_PATH=str(tmp_path / "sample.db"))
    assert running.query is not None
    ping = ServicePing.from_dict(await discover(nc, f"$SRV.PING.query.{running.query.server.id}"))
    assert (ping.name, ping.metadata) == ("query", {"subject_prefix": running.prefix})
    info = ServiceInfo.from_dict(await discover(nc, f"$SRV.INFO.query.{running.query.server.id}"))
    connections = {running.subjects.query_connection(op) for op in QUERY_CONNECTION_OPS}  # users' own databases (docs/connections.md)
    assert {e.subject for e in info.endpoints} == {running.subjects.query_execute, running.subjects.query_ping, running.subjects.query_schema, running.subjects.query_schema_search, *connections}


async def test_a_wait_begun_before_the_disconnect_callback_lasts_until_the_client_is_on_another_server() -> None:
    """nats-py marks the client reconnecting before it calls the disconnect callback; a session read
    waiting in that gap must wait for the next server, not give up at once (a 503 in a cluster)."""
    first, second = NatsServer().start(), NatsServer()  # the second comes up only once the first is gone
    nc = await connect(f"{first.url},{second.url}", "wait-test")
    try:
        assert first.proc is not None
        first.proc.kill()
        await eventually(lambda: _now(not nc.is_connected), "the client noticing the dead server")
        _UP[nc].set()  # as it still is in the gap before on_disconnected runs
        waiting = asyncio.create_task(wait_connected(nc, 30))
        await asyncio.sleep(0)  # the wait has begun
        await asyncio.to_thread(second.start)
        assert await waiting
        assert nc.is_connected and nc.connected_url is not None and nc.connected_url.port == second.port
    finally:
        await nc.close()
        first.cleanup()
        second.cleanup()


async def _now(value: bool) -> bool:
    return value
