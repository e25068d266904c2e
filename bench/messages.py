"""`python -m bench.messages`: the cost of one NATS message, encoded and decoded, and one session.get round trip.

Codec: a rows message (a 192 KiB chunk, QUERY_CHUNK_BYTES' default), an ack and a
session.get request and reply, each encoded and decoded the way the services did with
hand-built maps (msgpack-python) and the way they do with the Structs of
shared/contracts.py (msgspec, typed decoders), in the same run. Round trip: a session
service on its own nats-server and redis-server, `session.get` asked through
shared.bus.request, one at a time and 32 at once, with the session process's CPU time per
call read from /proc.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgpack
import nats
import redis

from bench.stack import service_env
from tests.harness import NatsServer, RedisServer, Service

SESSION = {"_permanent": True, "user": {"uid": "u-1", "email": "bench@example.com", "name": "Bench", "roles": ["user"]}, "conversation_id": "c-1", "csrf": "x" * 43}


def per_op_us(fn: Callable[[], Any], seconds: float = 0.3) -> float:
    """Median of 5 rounds of µs per call."""
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < 0.05:
        fn()
        n += 1
    rounds = []
    for _ in range(5):
        count = max(1, int(n * seconds / 0.05 / 5))
        t0 = time.perf_counter()
        for _ in range(count):
            fn()
        rounds.append((time.perf_counter() - t0) / count * 1e6)
    return statistics.median(rounds)


def codec() -> list[tuple[str, float, float]]:
    import msgspec

    from shared import contracts as c
    from shared.codec import decode_map, encode, encode_message

    stream = msgspec.msgpack.Decoder(c.StreamMessage)
    control = msgspec.msgpack.Decoder(c.ControlMessage)
    get = msgspec.msgpack.Decoder(c.SessionGet)
    rows = b"[" + b",".join(b'[%d,"row %d",%d.5,true,null]' % (i, i, i) for i in range(6000)) + b"]"
    rows = rows[: 192 * 1024]
    legacy_rows = msgpack.packb({"t": "rows", "seq": 7, "offset": 42000, "count": 6000, "rows": rows}, use_bin_type=True)
    legacy_ack = msgpack.packb({"t": "ack", "seq": 7}, use_bin_type=True)
    legacy_get = msgpack.packb({"sid": "s" * 43}, use_bin_type=True)

    def old_decode_rows() -> Any:
        m = decode_map(legacy_rows)
        return m["t"] == "rows" and int(m["seq"]), int(m["count"]), m["rows"]

    def new_decode_rows() -> Any:
        match stream.decode(legacy_rows):
            case c.StreamRows(seq=seq, count=count, rows=body):
                return seq, count, body

    def old_decode_get() -> Any:
        m = decode_map(legacy_get)
        sid = m.get("sid")
        if not isinstance(sid, str) or not sid:
            raise ValueError
        return sid

    reply = msgpack.packb({"session": SESSION}, use_bin_type=True)
    return [
        (
            "rows message (192 KiB): encode",
            per_op_us(lambda: msgpack.packb({"t": "rows", "seq": 7, "offset": 42000, "count": 6000, "rows": rows}, use_bin_type=True)),
            per_op_us(lambda: encode_message(c.StreamRows(7, 42000, 6000, rows))),
        ),
        ("rows message (192 KiB): decode + check", per_op_us(old_decode_rows), per_op_us(new_decode_rows)),
        ("ack: encode", per_op_us(lambda: msgpack.packb({"t": "ack", "seq": 7}, use_bin_type=True)), per_op_us(lambda: encode_message(c.Ack(7)))),
        ("ack: decode", per_op_us(lambda: decode_map(legacy_ack)), per_op_us(lambda: control.decode(legacy_ack))),
        ("session.get request: decode + check", per_op_us(old_decode_get), per_op_us(lambda: get.decode(legacy_get).sid)),
        (
            "session.get reply: encode",
            per_op_us(lambda: msgpack.packb({"session": SESSION}, use_bin_type=True)),
            per_op_us(lambda: encode_message(c.SessionReply(msgspec.Raw(encode(SESSION))))),
        ),
        ("session.get reply: decode (gateway)", per_op_us(lambda: decode_map(reply)), per_op_us(lambda: decode_map(reply))),
    ]


def cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def round_trips(nats_url: str, prefix: str, sid: str, pid: int, calls: int) -> dict[str, float]:
    from shared.bus import request
    from shared.contracts import Subjects

    subject = Subjects(prefix).session_get
    nc = await nats.connect(nats_url)
    try:
        for _ in range(200):  # warm-up
            await request(nc, subject, {"sid": sid})
        latencies = []
        cpu0 = cpu_s(pid)
        for _ in range(calls):
            t0 = time.perf_counter()
            reply = await request(nc, subject, {"sid": sid})
            latencies.append(time.perf_counter() - t0)
        sequential_cpu = (cpu_s(pid) - cpu0) / calls
        assert reply["session"] == SESSION, reply
        latencies.sort()

        in_flight = 32
        cpu0, t0 = cpu_s(pid), time.perf_counter()
        for _ in range(calls // in_flight):
            await asyncio.gather(*(request(nc, subject, {"sid": sid}) for _ in range(in_flight)))
        elapsed = time.perf_counter() - t0
        concurrent_cpu = (cpu_s(pid) - cpu0) / (calls // in_flight * in_flight)
        return {
            "p50_us": latencies[len(latencies) // 2] * 1e6,
            "p99_us": latencies[int(len(latencies) * 0.99)] * 1e6,
            "session_cpu_us_sequential": sequential_cpu * 1e6,
            "calls_per_s_32": calls // in_flight * in_flight / elapsed,
            "session_cpu_us_32": concurrent_cpu * 1e6,
        }
    finally:
        await nc.close()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.messages", description=__doc__.splitlines()[0])
    p.add_argument("--calls", type=int, default=4000, help="session.get calls per measurement")
    args = p.parse_args(argv or [])
    print(f"messages bench: {os.cpu_count()} CPUs shared by everything, load average {os.getloadavg()[0]:.2f}", flush=True)

    try:
        rows = codec()
    except (ImportError, AttributeError) as exc:  # a checkout from before the Structs: only the round trip
        print(f"codec: not measured ({exc})")
    else:
        print(f"\n{'µs per message':<40} {'maps (msgpack)':>15} {'Structs (msgspec)':>18} {'ratio':>7}")
        for label, old, new in rows:
            print(f"{label:<40} {old:>15.2f} {new:>18.2f} {new / old:>6.2f}x")

    nats_server = NatsServer().start()
    redis_server = RedisServer().start()
    session: Service | None = None
    try:
        prefix = f"bench{uuid.uuid4().hex[:8]}"
        env = service_env(NATS_URL=nats_server.url, NATS_SUBJECT_PREFIX=prefix, OPS_PORT="0", REDIS_URL=redis_server.url, SESSION_KV_BUCKET=f"sessions_{prefix}", LOG_LEVEL="INFO")
        session = Service("session", env).start()
        assert session.proc is not None
        sid = uuid.uuid4().hex
        client = redis.Redis.from_url(redis_server.url)
        client.set(f"session:{sid}", msgpack.packb(SESSION, use_bin_type=True), ex=3600)
        client.close()
        figures = asyncio.run(round_trips(nats_server.url, prefix, sid, session.proc.pid, args.calls))
    finally:
        if session is not None:
            session.stop()
        redis_server.stop()
        nats_server.cleanup()
    print(f"\nsession.get round trip ({args.calls} calls, INFO logging), load average {os.getloadavg()[0]:.2f}")
    print(f"  one at a time: p50 {figures['p50_us']:.0f} µs, p99 {figures['p99_us']:.0f} µs; session process CPU {figures['session_cpu_us_sequential']:.0f} µs per call")
    print(f"  32 at once: {figures['calls_per_s_32']:,.0f} calls/s; session process CPU {figures['session_cpu_us_32']:.0f} µs per call")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
