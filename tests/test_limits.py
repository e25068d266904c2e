"""The limiter (`session.limit`) against real Redis and NATS: windows, atomicity, one command a call, outages.

Each test runs session services on subject prefixes of their own and checks the counters in
Redis itself; the gateway's `Limiter` is the client. What one call does is tested against a
service in this process (`create_service`); replicas and outages against
`python -m services.session` processes.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest
import redis
from aiohttp import web
from nats.aio.client import Client as NATS

from services.gateway import keys
from services.gateway.app import create_app
from services.gateway.clients import Limiter, LimitResult, Window
from services.gateway.config import GatewayConfig
from services.session.keys import limit_key
from shared.bus import request
from shared.errors import ServiceError
from tests import test_session_service
from tests.conftest import Infra
from tests.harness import RedisServer
from tests.redis_proxy import redis_proxy
from tests.test_session_service import Caller, InProcessReplica, commandstats

# Fixtures shared with the session service tests: replicas on subject prefixes of their own, Redis (the NATS client `nc` is conftest's).
start_replica = test_session_service.start_replica
start_session = test_session_service.start_session
rdb = test_session_service.rdb

# Run inside the limit script: Redis counts them in commandstats, but they never cross the network.
_SCRIPT_INTERNAL = {"time", "hmget", "hset", "ttl", "expire"}


def new_key(kind: str = "quota") -> str:
    return f"{kind}:{uuid.uuid4().hex}"


def limiter(nc: NATS, replica: Caller) -> Limiter:
    return Limiter(nc, replica.subjects, timeout=5.0)


def redis_now(rdb: redis.Redis) -> int:
    return int(rdb.time()[0])


def counts(rdb: redis.Redis, key: str) -> dict[str, tuple[int, int]]:
    """Each window's (index, count) in the one hash the limiter keeps for `key`."""
    return {name.decode(): tuple(int(part) for part in value.split(b":")) for name, value in rdb.hgetall(limit_key(key)).items()}  # type: ignore[misc]


async def test_each_window_counts_and_reports_its_use(start_session, rdb, nc) -> None:
    replica = await start_session()
    key = new_key()
    windows = [Window("minute", 60, 3), Window("hour", 3600, 100), Window("day", 86400, 0)]

    first = await limiter(nc, replica).hit(key, windows)
    second = await limiter(nc, replica).hit(key, windows)

    assert first.allowed and second.allowed and not second.local
    assert second.retry_after is None
    assert second.windows["minute"].used == 2 and second.windows["minute"].limit == 3
    assert second.windows["hour"].used == 2 and second.windows["hour"].limit == 100
    assert second.windows["day"].used == 0 and second.windows["day"].limit == 0  # off: not counted
    assert 0 < second.windows["minute"].resets_in <= 60
    assert 0 < second.windows["hour"].resets_in <= 3600
    # Fixed windows on Redis's clock, in one hash `limit:{u:<uid>}:quota` (one cluster slot) that outlives the longest window.
    assert limit_key(key) == "limit:{u:" + key.removeprefix("quota:") + "}:quota"
    now = redis_now(rdb)
    stored = counts(rdb, key)
    assert set(stored) == {"minute", "hour"}  # the day window is off: not counted
    for name, seconds in (("minute", 60), ("hour", 3600)):
        assert stored[name][0] in (now // seconds, (now - 1) // seconds) and stored[name][1] == 2
    assert 60 < rdb.ttl(limit_key(key)) <= 3601


async def test_a_refused_call_counts_in_no_window(start_session, rdb, nc) -> None:
    replica = await start_session()
    key = new_key()
    windows = [Window("minute", 60, 2), Window("hour", 3600, 10)]
    client = limiter(nc, replica)

    results = [await client.hit(key, windows) for _ in range(5)]

    assert [r.allowed for r in results] == [True, True, False, False, False]
    refused = results[-1]
    assert refused.windows["minute"].used == 2 and refused.windows["hour"].used == 2
    assert refused.retry_after is not None and 0 < refused.retry_after <= 60
    assert refused.retry_after == refused.windows["minute"].resets_in
    assert sorted(n for _, n in counts(rdb, key).values()) == [2, 2]


async def test_reading_does_not_count(start_session, rdb, nc) -> None:
    replica = await start_session()
    key = new_key()
    windows = [Window("minute", 60, 1)]
    client = limiter(nc, replica)

    before = await client.hit(key, windows, consume=False)
    await client.hit(key, windows)
    after = await client.hit(key, windows, consume=False)

    assert before.allowed and before.windows["minute"].used == 0
    assert not after.allowed and after.windows["minute"].used == 1 and after.retry_after is not None
    assert [n for _, n in counts(rdb, key).values()] == [1]


async def test_a_new_window_starts_afresh(start_session, rdb, nc) -> None:
    replica = await start_session()
    key = new_key("login")
    windows = [Window("second", 1, 1)]
    client = limiter(nc, replica)
    assert (await client.hit(key, windows)).allowed

    # The next one-second window on Redis's clock opens a fresh count (polled with a deadline).
    deadline = asyncio.get_running_loop().time() + 10
    result = await client.hit(key, windows)
    while not result.allowed:
        assert asyncio.get_running_loop().time() < deadline, "the window never reset"
        assert result.retry_after == 1
        result = await client.hit(key, windows)
    assert result.windows["second"].used == 1


async def test_concurrent_hits_never_exceed_the_limit(start_session, rdb, nc) -> None:
    replica = await start_session()
    key = new_key()
    windows = [Window("minute", 60, 10), Window("hour", 3600, 1000)]
    client = limiter(nc, replica)

    results = await asyncio.gather(*(client.hit(key, windows) for _ in range(50)))

    assert sum(r.allowed for r in results) == 10
    assert sorted(r.windows["minute"].used for r in results if r.allowed) == list(range(1, 11))
    assert sorted(n for _, n in counts(rdb, key).values()) == [10, 10]


async def test_two_replicas_share_one_count(start_replica, infra: Infra, redis_server: RedisServer, rdb, nc) -> None:
    a = await start_replica(infra.nats_url, redis_server.url)
    b = await start_replica(infra.nats_url, redis_server.url)
    key = new_key("login")
    windows = [Window("minute", 60, 10)]

    results = await asyncio.gather(*(limiter(nc, replica).hit(key, windows) for replica in [a, b] * 25))

    assert sum(r.allowed for r in results) == 10
    assert not any(r.local for r in results)
    assert [n for _, n in counts(rdb, key).values()] == [10]
    # Both replicas served some of them, and each call was one EVALSHA.
    evalsha = [replica.metric("session_redis_commands_total", command="evalsha") for replica in (a, b)]
    assert all(n > 0 for n in evalsha) and sum(evalsha) == 50


async def test_a_count_whose_reply_was_lost_is_not_sent_again(start_inprocess, redis_server: RedisServer, rdb, nc) -> None:
    """The limit script ran in Redis but its reply never came: the call counts once there, and the replica serves it from its fallback."""
    async with redis_proxy(redis_server.port) as proxy:
        replica = InProcessReplica((await start_inprocess(("session",), REDIS_URL=proxy.url)).subjects)
        client = limiter(nc, replica)
        key = new_key()
        windows = [Window("minute", 60, 10)]
        assert (await client.hit(key, windows)).windows["minute"].used == 1

        proxy.hold_reply_to("EVALSHA")
        result = await client.hit(key, windows)

        assert proxy.held.is_set()
        assert sum(n for _, n in counts(rdb, key).values()) == 2  # one count per call: the lost reply was not resent
        assert result.allowed and result.local  # a timeout is an outage: the router switched to the fallback, as before
        assert commandstats(rdb)["evalsha"] == 2


async def test_one_redis_command_per_call(start_session, rdb, nc) -> None:
    replica = await start_session()
    client = limiter(nc, replica)
    windows = [Window("minute", 60, 5), Window("hour", 3600, 50), Window("day", 86400, 500)]
    await client.hit(new_key(), windows)  # connections are set up before counting
    rdb.config_resetstat()
    sent_before = replica.metric("session_redis_commands_total", command="evalsha")

    key = new_key()
    for _ in range(8):  # five counted, three refused
        await client.hit(key, windows)
    await client.hit(key, windows, consume=False)

    stats = commandstats(rdb)
    assert stats.pop("evalsha") == 9
    assert set(stats) <= _SCRIPT_INTERNAL, stats  # nothing else reached Redis from outside
    assert stats["time"] == 9 and stats["hmget"] == 9  # inside the script: one clock read, one read of all windows
    assert stats["hset"] == 15  # three windows for each of the five counted calls
    assert stats["ttl"] == 5 and 1 <= stats.get("expire", 0) <= 5  # the one hash outlives its longest window
    assert replica.metric("session_redis_commands_total", command="evalsha") - sent_before == 9


async def test_redis_down_counts_locally_per_replica_and_says_so(start_replica, infra: Infra, redis_server: RedisServer, rdb, nc) -> None:
    a = await start_replica(infra.nats_url, redis_server.url)
    b = await start_replica(infra.nats_url, redis_server.url)
    key = new_key()
    windows = [Window("minute", 60, 3)]
    assert (await limiter(nc, a).hit(key, windows)).windows["minute"].used == 1

    redis_server.stop()
    on_a = [await limiter(nc, a).hit(key, windows) for _ in range(5)]
    on_b = [await limiter(nc, b).hit(key, windows) for _ in range(5)]

    # Each replica counts for itself, from zero, and says so in every reply.
    for results in (on_a, on_b):
        assert all(r.local for r in results)
        assert [r.allowed for r in results] == [True, True, True, False, False]
        assert [r.windows["minute"].used for r in results] == [1, 2, 3, 3, 3]
        assert results[-1].retry_after is not None
    for replica in (a, b):
        await replica.wait_for_event("limiter_local")  # the line may still be on its way from the process
        assert len(replica.service.events("limiter_local")) == 1  # once per degradation, not per call

    # Redis back (empty: the test server keeps nothing on disk): counting returns there.
    redis_server.start()
    deadline = asyncio.get_running_loop().time() + 20
    result = await limiter(nc, a).hit(key, windows, consume=False)
    while result.local:
        assert asyncio.get_running_loop().time() < deadline, "the limiter never went back to Redis"
        result = await limiter(nc, a).hit(key, windows, consume=False)
    assert result.windows["minute"].used == 0  # the local counts are dropped, not carried over
    await a.wait_for_event("limiter_redis")
    back = await limiter(nc, a).hit(key, windows)
    assert back.allowed and not back.local and back.windows["minute"].used == 1
    assert [n for _, n in counts(rdb, key).values()] == [1]


async def test_a_store_already_on_its_fallback_sends_the_limiter_local_at_once(start_replica, infra: Infra, redis_server: RedisServer, nc) -> None:
    replica = await start_replica(infra.nats_url, redis_server.url)
    redis_server.stop()
    await replica.call(nc, "get", sid=uuid.uuid4().hex)  # the session store finds Redis down first
    await replica.wait_for_event("store_degraded")

    result = await limiter(nc, replica).hit(new_key(), [Window("minute", 60, 1)])

    assert result.allowed and result.local
    assert (await replica.wait_for_event("limiter_local"))["reason"] == "the session store found Redis down"
    assert replica.metric("session_redis_commands_total", command="evalsha") == 0  # no Redis call was even tried


async def test_a_limiter_that_finds_redis_down_sends_the_whole_replica_to_its_fallback(start_replica, infra: Infra, redis_server: RedisServer, nc) -> None:
    """One outage owner (services/session/outage.py): the limiter's failed call degrades the session store too."""
    replica = await start_replica(infra.nats_url, redis_server.url)
    assert (await replica.call(nc, "ping"))["degraded"] is False
    redis_server.stop()

    result = await limiter(nc, replica).hit(new_key(), [Window("minute", 60, 1)])

    assert result.allowed and result.local
    assert (await replica.wait_for_event("limiter_local"))["reason"] != "the session store found Redis down"  # the limiter found it
    await replica.wait_for_event("store_degraded")
    pong = await replica.call(nc, "ping")
    assert pong["degraded"] is True and pong["store"] != "redis"


async def test_no_redis_configured_counts_locally(start_replica, infra: Infra, nc) -> None:
    replica = await start_replica(infra.nats_url, None)
    key = new_key()

    results = [await limiter(nc, replica).hit(key, [Window("minute", 60, 1)]) for _ in range(2)]

    assert [(r.allowed, r.local) for r in results] == [(True, True), (False, True)]
    event = await replica.wait_for_event("limiter_local")
    assert event["reason"] == "no Redis is configured"


BAD_REQUESTS: list[tuple[dict[str, Any], str]] = [
    ({"windows": [{"name": "m", "seconds": 60, "limit": 1}]}, "missing required field `key`"),
    ({"key": "", "windows": [{"name": "m", "seconds": 60, "limit": 1}]}, "$.key"),
    ({"key": "k" * 201, "windows": [{"name": "m", "seconds": 60, "limit": 1}]}, "$.key"),
    ({"key": "k", "windows": []}, "$.windows"),
    ({"key": "k", "windows": [{"name": f"w{i}", "seconds": 60, "limit": 1} for i in range(5)]}, "$.windows"),
    ({"key": "k", "windows": [{"name": "m", "seconds": 0, "limit": 1}]}, "$.windows[0].seconds"),
    ({"key": "k", "windows": [{"name": "m", "seconds": 60, "limit": -1}]}, "$.windows[0].limit"),
    ({"key": "k", "windows": [{"name": "m", "seconds": "60", "limit": 1}]}, "$.windows[0].seconds"),
    ({"key": "k", "windows": [{"name": "m", "limit": 1}]}, "$.windows[0]"),
    ({"key": "k", "windows": [{"name": "a:b", "seconds": 60, "limit": 1}]}, "$.windows[0].name"),
    ({"key": "k", "windows": [{"name": "m", "seconds": 60, "limit": 1}, {"name": "m", "seconds": 3600, "limit": 1}]}, "unique"),
    ({"key": "k", "windows": [{"name": "m", "seconds": 60, "limit": 1}], "consume": "yes"}, "$.consume"),
    ({"key": 7, "windows": [{"name": "m", "seconds": 60, "limit": 1}]}, "$.key"),
]


async def test_a_bad_request_is_refused_naming_the_field(start_session, rdb, nc) -> None:
    replica = await start_session()

    for payload, path in BAD_REQUESTS:
        with pytest.raises(ServiceError) as raised:
            await request(nc, replica.subjects.session_limit, payload, timeout=5.0)
        assert raised.value.code == "bad_request", payload
        assert path in raised.value.message, (payload, raised.value.message)

    assert not rdb.keys("limit:*")  # nothing was counted
    assert (await limiter(nc, replica).hit(new_key(), [Window("m", 60, 1)])).allowed  # and the replica still serves


async def test_the_gateway_app_holds_a_limiter(infra: Infra, start_session, aiohttp_client) -> None:
    replica = await start_session()
    config = GatewayConfig.from_env({"NATS_URL": infra.nats_url, "NATS_SUBJECT_PREFIX": replica.subjects.prefix})
    app = create_app(config)
    seen: list[LimitResult] = []

    async def probe(request: web.Request) -> web.Response:
        seen.append(await request.app[keys.LIMITER].hit(new_key(), [Window("minute", 60, 1)]))
        return web.json_response({"ok": True})

    app.router.add_get("/probe-limit", probe)
    client = await aiohttp_client(app)

    assert (await client.get("/probe-limit")).status == 200
    assert seen[0].allowed and seen[0].windows["minute"].used == 1 and not seen[0].local
