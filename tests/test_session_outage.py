"""Redis outages lose nothing: calls keep succeeding on the fallback and every change is written back.

The replicas in these tests run on different subject prefixes, so a call can be sent to one
replica in particular, while they share Redis and the JetStream KV bucket.
"""

from __future__ import annotations

import asyncio
import signal
import uuid
from dataclasses import dataclass, field
from typing import Any

import msgspec
import nats
import redis

from shared.errors import ServiceError
from tests.conftest import Infra
from tests.harness import NatsServer, RedisServer
from tests.test_session_service import Replica, new_sid, start_replica  # noqa: F401 - fixtures


@dataclass
class Traffic:
    """Workers that write through one replica and read through the other, recording every outcome."""

    a: Replica
    b: Replica
    client: nats.NATS
    failures: list[str] = field(default_factory=list)
    expected: dict[str, dict[str, Any]] = field(default_factory=dict)
    tracking: bool = False
    rounds: int = 0
    tracked_rounds: int = 0
    _stop: asyncio.Event = field(default_factory=asyncio.Event)
    _progress: asyncio.Event = field(default_factory=asyncio.Event)

    async def _round(self, worker: int, i: int) -> None:
        tracked = self.tracking  # only rounds that start once both replicas are on the fallback must see everything
        sid = f"w{worker}-{i}-{uuid.uuid4().hex[:8]}"
        data = {"_permanent": True, "user": {"uid": sid}, "n": i}
        try:
            await self.a.call(self.client, "set", sid=sid, data=data)
            read_b = (await self.b.call(self.client, "get", sid=sid))["session"]
            patched = (await self.b.call(self.client, "patch", sid=sid, set={"seen_by": "b"}))["session"]
            read_a = (await self.a.call(self.client, "get", sid=sid))["session"]
        except ServiceError as exc:
            self.failures.append(f"{sid}: {exc!r}")
            return
        if tracked:
            want = {**data, "seen_by": "b"}
            for what, got, expected in (("B read", read_b, data), ("B patch", patched, want), ("A read", read_a, want)):
                if got != expected:
                    self.failures.append(f"{sid}: {what} {got!r}, expected {expected!r}")
            self.expected[sid] = want
            self.tracked_rounds += 1

    async def _worker(self, worker: int) -> None:
        i = 0
        while not self._stop.is_set():
            await self._round(worker, i)
            i += 1
            self.rounds += 1
            self._progress.set()

    async def wait_rounds(self, *, total: int | None = None, tracked: int | None = None, timeout: float = 30.0) -> None:
        async def reached() -> None:
            while not ((total is None or self.rounds >= total) and (tracked is None or self.tracked_rounds >= tracked)):
                self._progress.clear()
                await self._progress.wait()

        await asyncio.wait_for(reached(), timeout)

    def start(self, workers: int) -> list[asyncio.Task[None]]:
        return [asyncio.create_task(self._worker(w)) for w in range(workers)]

    async def stop(self, tasks: list[asyncio.Task[None]]) -> None:
        self._stop.set()
        await asyncio.gather(*tasks)


async def test_redis_killed_mid_traffic_loses_nothing_and_replicas_agree(start_replica, infra: Infra, redis_server: RedisServer, nc) -> None:  # noqa: F811
    bucket = f"sessions_{uuid.uuid4().hex[:10]}"
    a = await start_replica(infra.nats_url, redis_server.url, bucket=bucket)
    b = await start_replica(infra.nats_url, redis_server.url, bucket=bucket)
    traffic = Traffic(a, b, nc)
    tasks = traffic.start(workers=4)
    try:
        await traffic.wait_rounds(total=20)

        await asyncio.to_thread(redis_server.kill)
        for replica in (a, b):
            event = await replica.wait_for_event("store_degraded")
            assert event["store"] == "jetstream" and event["shared"] is True
        traffic.tracking = True
        await traffic.wait_rounds(tracked=40)
        assert (await a.call(nc, "ping"))["store"] == "jetstream"

        await asyncio.to_thread(redis_server.start)  # same port, empty: nothing persisted
        for replica in (a, b):
            await replica.wait_for_event("store_recovered")
        await traffic.wait_rounds(tracked=traffic.tracked_rounds + 40)
    finally:
        await traffic.stop(tasks)

    recovered = [replica.service.events("store_recovered")[0] for replica in (a, b)]
    print(f"\n[outage] {traffic.rounds} rounds, {traffic.tracked_rounds} checked; write-back per replica: {[(e['written'], e['deleted'], e['outage_s']) for e in recovered]}")
    assert traffic.failures == []
    client = redis.Redis.from_url(redis_server.url)
    try:
        stored = {sid: client.get(f"session:{sid}") for sid in traffic.expected}
    finally:
        client.close()
    missing = [sid for sid, raw in stored.items() if raw is None]
    assert missing == [], f"{len(missing)} of {len(stored)} sessions are not in Redis"
    wrong = {sid: msgspec.msgpack.decode(raw) for sid, raw in stored.items() if msgspec.msgpack.decode(raw) != traffic.expected[sid]}
    assert wrong == {}
    for replica in (a, b):
        assert (await replica.call(nc, "ping")) == {"ok": True, "store": "redis", "degraded": False}
        assert replica.metric("session_store_fallback_total") == 1
        assert replica.metric("session_store_degraded") == 0


async def test_frozen_redis_deletes_and_replacements_during_the_outage_are_written_back(start_replica, infra: Infra, redis_server: RedisServer, nc) -> None:  # noqa: F811
    replica = await start_replica(infra.nats_url, redis_server.url)
    gone, replaced, old_login = new_sid(), new_sid(), new_sid()
    for sid in (gone, replaced, old_login):
        await replica.call(nc, "set", sid=sid, data={"before": True})

    redis_server.send_signal(signal.SIGSTOP)  # a Redis that stops answering: timeouts, not refused connections
    try:
        created = new_sid()
        await replica.call(nc, "set", sid=created, data={"during": 1})
        assert (await replica.wait_for_event("store_degraded"))["store"] == "jetstream"
        await replica.call(nc, "delete", sid=gone)
        await replica.call(nc, "set", sid=replaced, data={"during": 2})
        rotated = new_sid()
        await replica.call(nc, "set", sid=rotated, data={"during": 3}, replace_sid=old_login)
        assert (await replica.call(nc, "get", sid=replaced))["session"] == {"during": 2}
        assert (await replica.call(nc, "get", sid=gone))["session"] is None
    finally:
        redis_server.send_signal(signal.SIGCONT)

    recovered = await replica.wait_for_event("store_recovered")
    assert recovered["written"] == 3 and recovered["deleted"] == 2
    client = redis.Redis.from_url(redis_server.url)
    try:
        assert client.exists(f"session:{gone}", f"session:{old_login}") == 0
        assert msgspec.msgpack.decode(client.get(f"session:{replaced}")) == {"during": 2}
        assert msgspec.msgpack.decode(client.get(f"session:{created}")) == {"during": 1}
        assert msgspec.msgpack.decode(client.get(f"session:{rotated}")) == {"during": 3}
    finally:
        client.close()


async def test_without_jetstream_one_replica_writes_its_memory_back(start_replica, redis_server: RedisServer) -> None:  # noqa: F811
    plain = NatsServer(jetstream=False).start()
    client = await nats.connect(plain.url)
    try:
        replica = await start_replica(plain.url, redis_server.url)
        kept, dropped = new_sid(), new_sid()

        await asyncio.to_thread(redis_server.kill)
        await replica.call(client, "set", sid=kept, data={"user": "u-1"})
        assert (await replica.wait_for_event("store_degraded"))["store"] == "memory"
        await replica.call(client, "set", sid=dropped, data={"user": "u-2"})
        assert (await replica.call(client, "patch", sid=kept, set={"c": 1}))["session"] == {"user": "u-1", "c": 1}
        assert await replica.call(client, "delete", sid=dropped) == {"deleted": True}
        assert (await replica.call(client, "ping"))["store"] == "memory"

        await asyncio.to_thread(redis_server.start)
        await replica.wait_for_event("store_recovered")
        rdb = redis.Redis.from_url(redis_server.url)
        try:
            assert msgspec.msgpack.decode(rdb.get(f"session:{kept}")) == {"user": "u-1", "c": 1}
            assert rdb.exists(f"session:{dropped}") == 0
        finally:
            rdb.close()
        assert replica.service.stop() == 0
    finally:
        await client.close()
        plain.cleanup()
