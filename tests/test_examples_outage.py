"""Verified examples and the outage router: an examples call goes through `router.call`, like history.

A Redis failure met by an examples call moves the whole session replica to its fallback (one
outage owner, services/session/outage.py); during the outage examples fail at once with
`unavailable`, and once Redis is back (this private one keeps no data across its restart)
they are stored in it again.
"""

from __future__ import annotations

import uuid

import pytest
import redis.asyncio as aioredis

from services.session.examples import source_key
from shared.bus import request
from shared.errors import ServiceError
from tests import test_session_service
from tests.conftest import Infra
from tests.harness import RedisServer

start_replica = test_session_service.start_replica


async def test_an_examples_call_that_finds_redis_down_sends_the_replica_to_its_fallback(start_replica, infra: Infra, redis_server: RedisServer, nc) -> None:
    replica = await start_replica(infra.nats_url, redis_server.url)
    source = f"src_{uuid.uuid4().hex[:8]}"
    proposal = {"source": source, "question": "How many gadgets were sold?", "sql": "SELECT count(*) FROM gadgets", "author": "u1", "approved": True}
    example = (await request(nc, replica.subjects.session_examples("propose"), proposal, timeout=5.0))["example"]
    assert (await replica.call(nc, "ping"))["degraded"] is False
    redis_server.stop()

    with pytest.raises(ServiceError) as raised:
        await request(nc, replica.subjects.session_examples("similar"), {"source": source, "question": "How many gadgets were sold?"}, timeout=10.0)

    assert raised.value.code == "unavailable"
    await replica.wait_for_event("store_degraded")  # the examples call found the outage: every store now uses the fallback
    pong = await replica.call(nc, "ping")
    assert pong["degraded"] is True and pong["store"] != "redis"
    with pytest.raises(ServiceError) as again:  # during the outage: at once, from the router's mode
        await request(nc, replica.subjects.session_examples("propose"), {**proposal, "question": "Gadgets sold?"}, timeout=5.0)
    assert again.value.code == "unavailable" and "Redis is down" in again.value.message

    redis_server.start()
    await replica.wait_for_event("store_recovered")
    again_stored = (await request(nc, replica.subjects.session_examples("propose"), proposal, timeout=5.0))["example"]
    assert again_stored["id"] == example["id"]
    client = aioredis.Redis.from_url(redis_server.url)
    try:
        assert await client.hexists(source_key(source), example["id"])
    finally:
        await client.aclose()
