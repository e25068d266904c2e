"""The system on a real 3-node NATS JetStream cluster: NATS_URL lists the servers, the KV fallback keeps 3 copies,
and killing the node the gateway is connected to, under load, fails no `/api/me` and leaves no query in silence.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator
from typing import Any

import nats
import pytest

from tests.client import browser, events, login
from tests.clusters import NatsCluster
from tests.conftest import SystemFactory

LOAD_S = 4.0


@pytest.fixture(scope="module")
def cluster() -> Iterator[NatsCluster]:
    servers = NatsCluster().start()
    yield servers
    servers.cleanup()


def query_outcome(status: int, parts: list[Any], refusal: dict[str, Any] | None = None) -> str:
    """ok (the whole result), error (an error part, or a 503 with a JSON error and Retry-After), or what went wrong."""
    if status == 503 and refusal is not None:
        return "error" if refusal.get("error", {}).get("message") else f"503 without a message: {refusal}"
    if status != 200:
        return f"http {status}"
    if any(isinstance(p, dict) and p.get("type") == "tool-output-available" and not p.get("preliminary") for p in parts):
        return "ok"
    errors = [p for p in parts if isinstance(p, dict) and p.get("type") in ("tool-output-error", "error") and (p.get("errorText") or p.get("error"))]
    return "error" if errors and parts[-1] == "[DONE]" else f"silent end: {parts[-3:]}"


async def test_losing_the_gateways_node_under_load_fails_no_me_and_no_query_silently(cluster: NatsCluster, make_system: SystemFactory) -> None:
    system = make_system(nats_url=cluster.url, NATS_JS_REPLICAS="3")
    prefix = system.prefix
    nc = await nats.connect(servers=cluster.url.split(","))
    try:
        js = nc.jetstream()
        info = await js.stream_info(f"KV_sessions_{prefix}")
        assert info.config.num_replicas == 3
        kv = await js.key_value(f"sessions_{prefix}")
        marker = uuid.uuid4().hex
        await kv.put("marker", marker.encode())

        me_failures: list[int] = []
        me_ok = 0
        outcomes: list[str] = []
        stop_at = time.monotonic() + LOAD_S
        killed = asyncio.Event()

        async with browser(system.url) as client:
            await login(client)

            async def me_load() -> None:
                nonlocal me_ok
                while time.monotonic() < stop_at:
                    async with client.get("/api/me") as response:
                        if response.status == 200:
                            me_ok += 1
                        else:
                            me_failures.append(response.status)

            async def query_load() -> None:
                while time.monotonic() < stop_at:
                    async with client.post("/api/query", json={"sql": "SELECT 1 AS one"}) as response:
                        parts = [p async for p in events(response)] if response.status == 200 else []
                        refusal = await response.json() if response.status == 503 and response.headers.get("Retry-After") else None
                        outcomes.append(query_outcome(response.status, parts, refusal))

            async def kill() -> None:
                node = cluster.node_of("gateway")
                await asyncio.to_thread(node.kill)
                killed.set()

            loads = [asyncio.create_task(me_load()) for _ in range(4)] + [asyncio.create_task(query_load()) for _ in range(2)]
            while me_ok < 20:  # kill under load, once requests are flowing
                await asyncio.wait(loads, timeout=0.05)
            await kill()
            await asyncio.gather(*loads)

        assert killed.is_set()
        assert me_failures == [], f"{len(me_failures)} failed /api/me of {me_ok + len(me_failures)}"
        assert outcomes and all(o in ("ok", "error") for o in outcomes), [o for o in outcomes if o not in ("ok", "error")]
        assert system.services["gateway"].events("nats_reconnected"), "the gateway moved to another node"
        assert (await kv.get("marker")).value == marker.encode(), "the KV fallback kept its data with a node gone"
    finally:
        await nc.close()
