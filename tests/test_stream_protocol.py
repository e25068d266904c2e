"""The stream protocol's two ends (shared/stream.py) against a scripted peer over a real NATS.

The consumer gets crafted stream messages in its inbox (gaps, duplicates, lost meta, lost tail
rows, lost acks); the producer talks to a fake consumer that acknowledges as it is told; and a
relay between the real producer and the real consumer drops chosen messages. So every loss
branch runs on every test run, instead of only when a NATS restart happens to lose something
(tests/test_scale_failures.py, which stays as the real-outage check).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import msgspec
import orjson
import pytest
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from shared import contracts as c
from shared.bus import subscribed
from shared.codec import decode_map, encode
from shared.errors import INTERNAL, UNAVAILABLE, ServiceError
from shared.stream import StreamCancelled, StreamConsumer, StreamProducer

LOST = "was lost while the message bus reconnected"


def wire(kind: str, **fields: Any) -> bytes:
    """One stream or control message as it travels on NATS."""
    return encode({"t": kind, **fields})


def as_map(message: c.StreamMessage) -> dict[str, Any]:
    """A stream message as the map it travels as, "t" included."""
    return msgspec.to_builtins(message, builtin_types=(bytes,))


def rows(seq: int, offset: int, values: list[list[Any]]) -> bytes:
    return wire(c.STREAM_ROWS, seq=seq, offset=offset, count=len(values), rows=orjson.dumps(values))


META = wire(c.STREAM_META, columns=[{"name": "i", "type": "integer"}], preview=[[1]])


@pytest.fixture
def subjects() -> c.Subjects:
    return c.Subjects(f"s{uuid.uuid4().hex[:10]}")


@dataclass
class ScriptedReplica:
    """Answers query.execute like a query replica, then lets the test publish whatever it likes to the inbox."""

    nc: NATS
    subjects: c.Subjects
    requests: asyncio.Queue[dict[str, Any]] = field(default_factory=asyncio.Queue)
    controls: asyncio.Queue[dict[str, Any]] = field(default_factory=asyncio.Queue)
    subs: list[Subscription] = field(default_factory=list)

    async def open(self) -> None:
        async def on_execute(msg: Msg) -> None:
            req = decode_map(msg.data)
            self.subs.append(await self.nc.subscribe(self.subjects.query_control(req["stream_id"]), cb=self._on_control))
            await subscribed(self.nc)
            await self.requests.put(req)
            await msg.respond(encode({"accepted": True}))

        self.subs.append(await self.nc.subscribe(self.subjects.query_execute, cb=on_execute))
        await subscribed(self.nc)

    async def _on_control(self, msg: Msg) -> None:
        await self.controls.put(decode_map(msg.data))

    async def close(self) -> None:
        for sub in self.subs:
            await sub.unsubscribe()


@pytest.fixture
async def replica(nc: NATS, subjects: c.Subjects) -> AsyncIterator[ScriptedReplica]:
    scripted = ScriptedReplica(nc, subjects)
    await scripted.open()
    yield scripted
    await scripted.close()


async def consume(nc: NATS, subjects: c.Subjects, replica: ScriptedReplica, script: list[bytes], *, idle_timeout_s: float = 5.0) -> tuple[list[dict[str, Any]], ServiceError | None]:
    """Start a stream, publish `script` into its inbox, and read it all: the messages the consumer yielded and the error it raised."""
    consumer = StreamConsumer(nc, subjects, window=4, idle_timeout_s=idle_timeout_s)
    await consumer.start("SELECT 1", None)
    req = await replica.requests.get()
    for data in script:
        await nc.publish(req["inbox"], data)
    await nc.flush()
    seen: list[dict[str, Any]] = []
    try:
        async for message in consumer.messages():
            seen.append(as_map(message))
    except ServiceError as exc:
        return seen, exc
    finally:
        await consumer.close()
    return seen, None


async def next_control(replica: ScriptedReplica) -> dict[str, Any]:
    """The next control message the consumer sent, as the producer would receive it."""
    return await asyncio.wait_for(replica.controls.get(), 10)


def kinds(messages: list[dict[str, Any]]) -> list[str]:
    return [m["t"] for m in messages]


# --- the consumer against a scripted producer ----------------------------------------------


async def test_a_complete_stream_is_yielded_in_order_and_each_rows_message_acknowledged(nc: NATS, subjects: c.Subjects, replica: ScriptedReplica) -> None:
    script = [META, rows(1, 0, [[1], [2]]), wire(c.STREAM_HEARTBEAT, seq=1), rows(2, 2, [[3]]), wire(c.STREAM_END, row_count=3, truncated=False)]
    seen, error = await consume(nc, subjects, replica, script)
    assert error is None
    assert kinds(seen) == ["meta", "rows", "rows", "end"]
    # The heartbeat re-sends the last ack (acks are cumulative, and one may have been lost).
    assert [await next_control(replica) for _ in range(3)] == [{"t": c.CONTROL_ACK, "seq": seq} for seq in (1, 1, 2)]
    await replica.nc.flush()
    assert replica.controls.empty(), "a finished stream is neither cancelled nor acknowledged again"


@pytest.mark.parametrize(
    ("case", "script", "yielded"),
    [
        ("a gap in the rows", [META, rows(1, 0, [[1]]), rows(3, 2, [[3]])], ["meta", "rows"]),
        ("a rows message twice", [META, rows(1, 0, [[1]]), rows(1, 0, [[1]])], ["meta", "rows"]),
        ("rows before meta (meta lost)", [rows(1, 0, [[1]])], []),
        ("end without meta", [wire(c.STREAM_END, row_count=0, truncated=False)], []),
        ("the last rows lost before end", [META, rows(1, 0, [[1]]), wire(c.STREAM_END, row_count=2, truncated=False)], ["meta", "rows"]),
        ("a heartbeat past the rows received", [META, rows(1, 0, [[1]]), wire(c.STREAM_HEARTBEAT, seq=2)], ["meta", "rows"]),
        ("the first rows lost, told by a heartbeat", [META, wire(c.STREAM_HEARTBEAT, seq=1)], ["meta"]),
    ],
)
async def test_a_loss_ends_the_stream_with_unavailable_and_never_as_a_complete_result(
    nc: NATS, subjects: c.Subjects, replica: ScriptedReplica, case: str, script: list[bytes], yielded: list[str]
) -> None:
    seen, error = await consume(nc, subjects, replica, script)
    assert error is not None, case
    assert error.code == UNAVAILABLE and LOST in error.message
    assert kinds(seen) == yielded
    while (control := await next_control(replica))["t"] != c.CONTROL_CANCEL:
        assert control["t"] == c.CONTROL_ACK
    # The producer is told to stop (and was waited for: next_control times out otherwise).


async def test_an_unknown_stream_message_is_an_internal_error(nc: NATS, subjects: c.Subjects, replica: ScriptedReplica) -> None:
    seen, error = await consume(nc, subjects, replica, [META, wire("surprise")])
    assert kinds(seen) == ["meta"]
    assert error is not None and error.code == INTERNAL and "surprise" in error.message


async def test_a_silent_producer_ends_the_stream_after_the_idle_timeout(nc: NATS, subjects: c.Subjects, replica: ScriptedReplica) -> None:
    seen, error = await consume(nc, subjects, replica, [META], idle_timeout_s=0.2)
    assert kinds(seen) == ["meta"]
    assert error is not None and error.code == UNAVAILABLE and "stopped answering" in error.message


# --- the producer against a scripted consumer ----------------------------------------------


@dataclass
class FakeConsumer:
    """Owns an inbox, reads what the producer publishes, and acknowledges or cancels when told to."""

    nc: NATS
    subjects: c.Subjects
    window: int
    stream_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    inbox: str = ""
    sub: Subscription | None = None

    async def open(self) -> None:
        self.inbox = self.nc.new_inbox()
        self.sub = await self.nc.subscribe(self.inbox)
        await subscribed(self.nc)

    def request(self) -> dict[str, Any]:
        return {"sql": "SELECT 1", "source": None, "stream_id": self.stream_id, "inbox": self.inbox, "window": self.window}

    async def next(self) -> dict[str, Any]:
        assert self.sub is not None
        return decode_map((await self.sub.next_msg(timeout=10)).data)

    async def control(self, data: bytes) -> None:
        await self.nc.publish(self.subjects.query_control(self.stream_id), data)
        await self.nc.flush()


async def open_producer(nc: NATS, subjects: c.Subjects, fake: FakeConsumer, **kwargs: Any) -> StreamProducer:
    producer = StreamProducer(nc, subjects, c.QueryExecute(**fake.request()), **kwargs)
    await producer.open()
    await nc.flush()
    return producer


async def test_the_producer_never_has_more_than_a_window_unacknowledged_and_ignores_stale_acks(nc: NATS, subjects: c.Subjects) -> None:
    fake = FakeConsumer(nc, subjects, window=2)
    await fake.open()
    producer = await open_producer(nc, subjects, fake)
    try:

        async def send_all() -> None:
            for seq in range(1, 7):
                await producer.send_rows(orjson.dumps([[seq]]), seq - 1, 1)
            await producer.end(6, False)

        sending = asyncio.create_task(send_all())
        acked = 0
        received: list[int] = []
        while True:
            message = await fake.next()
            if message["t"] == c.STREAM_END:
                break
            if message["t"] != c.STREAM_ROWS:
                continue
            assert message["seq"] <= acked + 2, f"rows {message['seq']} sent with only {acked} acknowledged"
            received.append(message["seq"])
            if message["seq"] == acked + 2:  # the window is full: acknowledge one, then a stale and a garbage control message
                acked += 1
                await fake.control(wire(c.CONTROL_ACK, seq=acked))
                await fake.control(wire(c.CONTROL_ACK, seq=acked - 1))
                await fake.control(b"\xc1 not messagepack")
        await sending
        assert received == [1, 2, 3, 4, 5, 6]
    finally:
        await producer.close()


async def test_a_cancel_stops_a_producer_waiting_for_credit(nc: NATS, subjects: c.Subjects) -> None:
    fake = FakeConsumer(nc, subjects, window=1)
    await fake.open()
    producer = await open_producer(nc, subjects, fake)
    try:
        await producer.send_rows(b"[[1]]", 0, 1)
        blocked = asyncio.create_task(producer.send_rows(b"[[2]]", 1, 1))
        assert (await fake.next())["seq"] == 1
        await fake.control(wire(c.CONTROL_CANCEL))
        with pytest.raises(StreamCancelled):
            await blocked
        assert producer.cancelled.is_set()
    finally:
        await producer.close()


async def test_a_consumer_that_stops_acknowledging_is_given_up_on(nc: NATS, subjects: c.Subjects) -> None:
    fake = FakeConsumer(nc, subjects, window=1)
    await fake.open()
    producer = await open_producer(nc, subjects, fake, ack_timeout_s=0.2)
    try:
        await producer.send_rows(b"[[1]]", 0, 1)
        with pytest.raises(StreamCancelled, match="no acknowledgement"):
            await producer.send_rows(b"[[2]]", 1, 1)
    finally:
        await producer.close()


async def test_an_idle_producer_sends_heartbeats_carrying_the_last_rows_seq(nc: NATS, subjects: c.Subjects) -> None:
    fake = FakeConsumer(nc, subjects, window=4)
    await fake.open()
    producer = await open_producer(nc, subjects, fake, heartbeat_s=0.05)
    try:
        await producer.send_rows(b"[[1]]", 0, 1)
        assert (await fake.next())["seq"] == 1
        while (message := await fake.next())["t"] != c.STREAM_HEARTBEAT:
            pass
        assert message == {"t": c.STREAM_HEARTBEAT, "seq": 1}
    finally:
        await producer.close()


# --- the real producer and the real consumer, with a relay that drops messages ----------------


async def relayed_stream(nc: NATS, subjects: c.Subjects, replica: ScriptedReplica, drop: Callable[[dict[str, Any]], bool], *, total: int = 5) -> tuple[list[dict[str, Any]], ServiceError | None]:
    """Run a real producer to a relay that forwards to the real consumer every message except those `drop` picks."""
    consumer = StreamConsumer(nc, subjects, window=2, idle_timeout_s=5.0)
    await consumer.start("SELECT 1", None)
    req = await replica.requests.get()
    relay_inbox = nc.new_inbox()

    async def relay(msg: Msg) -> None:
        if not drop(decode_map(msg.data)):
            await nc.publish(req["inbox"], msg.data)

    relay_sub = await nc.subscribe(relay_inbox, cb=relay)
    await subscribed(nc)
    # The scripted replica's own control subscription would take the acks too; the producer has its own.
    producer = StreamProducer(nc, subjects, c.QueryExecute(**{**req, "inbox": relay_inbox}), heartbeat_s=0.05)
    await producer.open()
    await nc.flush()

    async def produce() -> None:
        await producer.send_meta([c.ColumnInfo("i", "integer")], [[1]])
        for seq in range(1, total + 1):
            await producer.send_rows(orjson.dumps([[seq]]), seq - 1, 1)
        await producer.end(total, False)

    producing = asyncio.create_task(produce())
    seen: list[dict[str, Any]] = []
    error: ServiceError | None = None
    try:
        async for message in consumer.messages():
            seen.append(as_map(message))
    except ServiceError as exc:
        error = exc
    finally:
        await consumer.close()
        # A consumer that gave up cancels: the producer stops instead of waiting for credit.
        await asyncio.gather(producing, return_exceptions=True)
        await producer.close()
        await relay_sub.unsubscribe()
    return seen, error


async def test_without_losses_the_relayed_stream_is_complete(nc: NATS, subjects: c.Subjects, replica: ScriptedReplica) -> None:
    seen, error = await relayed_stream(nc, subjects, replica, lambda _m: False)
    assert error is None
    assert [m["seq"] for m in seen if m["t"] == c.STREAM_ROWS] == [1, 2, 3, 4, 5]
    assert seen[-1] == {"t": c.STREAM_END, "row_count": 5, "truncated": False}


@pytest.mark.parametrize(
    ("case", "drop"),
    [
        ("a middle rows message", lambda m: m["t"] == c.STREAM_ROWS and m["seq"] == 3),
        ("the meta message", lambda m: m["t"] == c.STREAM_META),
        ("the last rows message", lambda m: m["t"] == c.STREAM_ROWS and m["seq"] == 5),
    ],
)
async def test_a_message_lost_between_producer_and_consumer_is_reported_as_a_loss(nc: NATS, subjects: c.Subjects, replica: ScriptedReplica, case: str, drop: Callable[[dict[str, Any]], bool]) -> None:
    seen, error = await relayed_stream(nc, subjects, replica, drop)
    assert error is not None, case
    assert error.code == UNAVAILABLE and LOST in error.message
    assert not [m for m in seen if m["t"] == c.STREAM_END], "a lossy stream never ends as complete"
