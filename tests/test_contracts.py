"""Every NATS subject decodes its payload with its contract (shared/contracts.py).

A malformed request gets a `bad_request` error reply naming the field path, from the real
session and query services over real NATS, and changes nothing. Stream and control messages
keep the byte layout they had as hand-built maps, and a malformed stream message ends the
stream with an error naming its field.
"""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path
from typing import Any

import msgpack
import msgspec
import pytest
import redis
from nats.aio.client import Client as NATS

from shared import contracts as c
from shared.codec import encode, encode_message
from shared.errors import BAD_REQUEST, INTERNAL, UNAVAILABLE, ServiceError
from shared.stream import StreamConsumer
from tests.conftest import Infra, System
from tests.harness import Service, free_port, service_env


async def ask(nc: NATS, subject: str, data: bytes) -> Any:
    return msgpack.unpackb((await nc.request(subject, data, timeout=10)).data)


def subject_of(subjects: c.Subjects, name: str) -> str:
    if name.startswith("conversation_"):
        return subjects.session_conversation(name.removeprefix("conversation_"))
    return getattr(subjects, name)


def execute(**fields: Any) -> dict[str, Any]:
    return {"sql": "SELECT 1", "stream_id": uuid.uuid4().hex, "inbox": f"_INBOX.{uuid.uuid4().hex}", "window": 8, **fields}


# (subject, payload, what the error message says: the Struct and the field path)
MALFORMED = [
    ("session_get", {"sid": 12}, "invalid SessionGet: Expected `str`, got `int` - at `$.sid`"),
    ("session_get", {}, "invalid SessionGet: Object missing required field `sid`"),
    ("session_set", {"sid": "SID", "data": {"user": "u"}, "replace_sid": ["x"]}, "invalid SessionSet: Expected `str | null`, got `array` - at `$.replace_sid`"),
    ("session_set", {"sid": "SID", "data": {7: "u"}}, "invalid SessionSet: Expected `str`, got `int` - at `key` in `$.data`"),
    ("session_patch", {"sid": "SID", "set": {"user": "mallory"}, "unset": ["a", 1]}, "invalid SessionPatch: Expected `str`, got `int` - at `$.unset[1]`"),
    ("session_delete", {"sid": ""}, "invalid SessionDelete: Expected `str` of length >= 1 - at `$.sid`"),
    ("session_ping", [1, 2], "invalid Ping: Expected `object`, got `array`"),
    ("session_limit", {"key": "k", "windows": [{"name": "m", "seconds": 0, "limit": 1}]}, "invalid LimitRequest: Expected `int` >= 1 - at `$.windows[0].seconds`"),
    ("session_get_many", {"reads": [{"sid": "SID"}, {"sid": None}]}, "invalid SessionGetMany: Expected `str`, got `None` - at `$.reads[1].sid`"),
    ("conversation_load", {"uid": "u-1", "id": "c/1"}, "invalid ConversationLoad: Expected `str` matching regex '^[A-Za-z0-9_-]{1,128}$' - at `$.id`"),
    ("conversation_patch", {"uid": "", "id": "c-1"}, "invalid ConversationPatch: Expected `str` of length >= 1 - at `$.uid`"),
    ("query_execute", execute(sql="   "), "invalid QueryExecute: Expected `str` matching regex '\\\\S' - at `$.sql`"),
    ("query_execute", execute(stream_id="a.>"), "invalid QueryExecute: Expected `str` matching regex '^[A-Za-z0-9_-]{1,64}$' - at `$.stream_id`"),
    ("query_execute", execute(inbox="_INBOX.*"), "invalid QueryExecute: Expected `str` matching regex '^[^\\\\s*>]+$' - at `$.inbox`"),
    ("query_execute", execute(window=0), "invalid QueryExecute: Expected `int` >= 1 - at `$.window`"),
    ("query_execute", execute(source=5), "invalid QueryExecute: Expected `str | null`, got `int` - at `$.source`"),
    ("query_ping", "ping", "invalid Ping: Expected `object`, got `str`"),
    ("query_schema", {"tables": [""]}, "invalid SchemaRequest: Expected `str` of length >= 1 - at `$.tables[0]`"),
]


@pytest.mark.parametrize(("subject", "payload", "message"), MALFORMED, ids=[f"{s}-{i}" for i, (s, _, _) in enumerate(MALFORMED)])
async def test_a_malformed_request_gets_bad_request_naming_the_field(system: System, nc: NATS, subject: str, payload: Any, message: str) -> None:
    subjects = c.Subjects(system.prefix)
    assert system.redis_url is not None
    rdb = redis.Redis.from_url(system.redis_url)
    sid = f"contract_{uuid.uuid4().hex}"
    stored = encode({"user": {"uid": "u-1"}})
    rdb.set(f"session:{sid}", stored, ex=60)
    if isinstance(payload, dict) and payload.get("sid") == "SID":
        payload = {**payload, "sid": sid}
    try:
        reply = await ask(nc, subject_of(subjects, subject), encode(payload))
        assert reply == {"error": {"code": BAD_REQUEST, "message": message}}
        assert rdb.get(f"session:{sid}") == stored  # nothing was written
    finally:
        rdb.delete(f"session:{sid}")
        rdb.close()


SUBJECTS = ["session_get", "session_get_many", "session_set", "session_patch", "session_delete", "session_ping", "session_limit"]
SUBJECTS += [f"conversation_{op}" for op in c.CONVERSATION_OPS] + ["query_execute", "query_ping", "query_schema"]


@pytest.mark.parametrize("subject", SUBJECTS)
async def test_bytes_that_are_not_messagepack_get_bad_request(system: System, nc: NATS, subject: str) -> None:
    reply = await ask(nc, subject_of(c.Subjects(system.prefix), subject), b"\xc1")  # a byte MessagePack never uses
    assert reply["error"]["code"] == BAD_REQUEST
    assert reply["error"]["message"].startswith("payload is not valid MessagePack")


async def test_well_formed_requests_still_get_their_replies(system: System, nc: NATS) -> None:
    subjects = c.Subjects(system.prefix)
    sid = f"contract_{uuid.uuid4().hex}"
    assert await ask(nc, subjects.session_set, encode({"sid": sid, "data": {"user": {"uid": "u-2"}}})) == {"ok": True}
    assert await ask(nc, subjects.session_patch, encode({"sid": sid, "set": {"n": 1}})) == {"session": {"user": {"uid": "u-2"}, "n": 1}}
    assert await ask(nc, subjects.session_get, encode({"sid": sid, "unknown": "ignored"})) == {"session": {"user": {"uid": "u-2"}, "n": 1}}
    assert await ask(nc, subjects.session_delete, encode({"sid": sid})) == {"deleted": True}
    assert (await ask(nc, subjects.session_ping, encode({})))["ok"] is True
    pong = msgspec.convert(await ask(nc, subjects.query_ping, encode({})), c.QueryPong)
    assert pong.default in pong.sources


def test_stream_and_control_messages_keep_their_byte_layout() -> None:
    """The Structs encode exactly as the maps the services exchanged before them."""
    pairs: list[tuple[msgspec.Struct, dict[str, Any]]] = [
        (c.StreamMeta([c.ColumnInfo("id", "integer")], [[1]]), {"t": "meta", "columns": [{"name": "id", "type": "integer"}], "preview": [[1]]}),
        (c.StreamRows(3, 100, 2, b"[[1],[2]]"), {"t": "rows", "seq": 3, "offset": 100, "count": 2, "rows": b"[[1],[2]]"}),
        (c.StreamEnd(102, False), {"t": "end", "row_count": 102, "truncated": False}),
        (c.StreamError(c.ErrorBody("query_failed", "no such table")), {"t": "error", "error": {"code": "query_failed", "message": "no such table"}}),
        (c.StreamHeartbeat(3), {"t": "hb", "seq": 3}),
        (c.Ack(3), {"t": "ack", "seq": 3}),
        (c.Cancel(), {"t": "cancel"}),
        (c.ErrorReply(c.ErrorBody("bad_request", "x")), {"error": {"code": "bad_request", "message": "x"}}),
    ]
    for struct, legacy in pairs:
        assert encode_message(struct) == encode(legacy), struct


async def test_a_malformed_stream_message_ends_the_stream_with_an_error_naming_the_field(infra: Infra, nc: NATS) -> None:
    """A scripted query replica accepts, then publishes a meta message whose column lacks its type."""
    subjects = c.Subjects(f"k{uuid.uuid4().hex[:10]}")
    inboxes: asyncio.Queue[str] = asyncio.Queue()

    async def replica(msg: Any) -> None:
        request = msgspec.msgpack.decode(msg.data, type=c.QueryExecute)
        await inboxes.put(request.inbox)
        await msg.respond(encode_message(c.QueryAccepted(True)))

    sub = await nc.subscribe(subjects.query_execute, cb=replica)
    consumer = StreamConsumer(nc, subjects)
    try:
        await consumer.start("SELECT 1", None)
        await nc.publish(await inboxes.get(), encode({"t": "meta", "columns": [{"name": "id"}], "preview": []}))
        with pytest.raises(ServiceError) as caught:
            async for _ in consumer.messages():
                pass
        assert caught.value.code == INTERNAL
        assert caught.value.message == "unexpected stream message: Object missing required field `type` - at `$.columns[0]`"
    finally:
        await consumer.close()
        await sub.unsubscribe()


async def test_a_source_that_does_not_answer_gets_a_clear_error_before_the_gateway_gives_up(infra: Infra, nc: NATS, tmp_path: Path) -> None:
    """A database that accepts connections and never answers: query.execute replies `unavailable`
    within QUERY_OPEN_TIMEOUT_S, inside the gateway's QUERY_START_TIMEOUT_S, and the other source still serves."""
    assert c.QUERY_OPEN_TIMEOUT_S < c.QUERY_START_TIMEOUT_S
    held: list[asyncio.StreamWriter] = []

    async def silent(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)  # read nothing, answer nothing

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    prefix = f"q{uuid.uuid4().hex[:10]}"
    env = service_env(
        NATS_URL=infra.nats_url,
        NATS_SUBJECT_PREFIX=prefix,
        OPS_PORT=str(free_port()),
        QUERY_SAMPLE_PATH=str(tmp_path / "sample.db"),
        QUERY_SOURCES=f"stuck=postgresql://reader@127.0.0.1:{port}/nothing",
    )
    service = await asyncio.to_thread(Service("query", env).start)
    try:
        subjects = c.Subjects(prefix)
        consumer = StreamConsumer(nc, subjects)
        with pytest.raises(ServiceError) as caught:
            await consumer.start("SELECT 1", "stuck")
        assert (caught.value.code, caught.value.message) == (UNAVAILABLE, "the database stuck is not answering; try again")
        assert held, "the query service did try to connect"

        consumer = StreamConsumer(nc, subjects)
        await consumer.start("SELECT 1 AS one", None)
        kinds = [message.t async for message in consumer.messages()]
        await consumer.close()
        assert kinds == ["meta", "rows", "end"]
    finally:
        assert await asyncio.to_thread(service.stop) == 0, "\n".join(service.lines[-30:])
        for writer in held:
            writer.close()
        server.close()
        await server.wait_closed()
