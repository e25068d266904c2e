"""The gateway's rules for clients, over HTTP against the real processes.

A client that stops reading is given up after CLIENT_WRITE_TIMEOUT_S without progress and its query cancelled (a slow but steady one is not);
a client that leaves is logged as `client_gone` at info level; errors aiohttp produces
itself (oversized headers, malformed requests) and non-JSON bodies get our JSON error shape.
"""

from __future__ import annotations

import asyncio
import json
import socket
import struct
import time

import aiohttp
import pytest

from tests.client import browser, login
from tests.conftest import System, SystemFactory
from tests.harness import Service, eventually, wait_until


def big_result_sql(rows: int = 5_000_000) -> str:
    """Far more rows than any socket buffer holds: the stream is still going when the client stops."""
    return f"WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < {rows}) SELECT i, printf('%.200c', 'x') AS pad FROM n"


async def wait_event(service: Service, event: str, start: int = 0, timeout: float = 60.0, **fields: object) -> dict:
    def matches(line: str) -> bool:
        if f'"{event}"' not in line:
            return False
        data = json.loads(line)
        return data.get("event") == event and all(data.get(k) == v for k, v in fields.items())

    return json.loads(await asyncio.to_thread(service.wait_for_line, matches, timeout, start))


def raw_request(port: int, request: bytes, *, rcvbuf: int | None = None) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if rcvbuf is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)  # before connect, so the window stays small
    sock.connect(("127.0.0.1", port))
    sock.sendall(request)
    return sock


def read_response(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    sock.settimeout(10)
    data = b""
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, v in (line.split(":", 1) for line in lines[1:] if ":" in line)}
    return int(lines[0].split()[1]), headers, body


async def query_request(system: System, sql: str, *, close: bool = False) -> bytes:
    """A raw `POST /api/query` of `sql` with a fresh user's session cookie, as the tests' own sockets send it."""
    async with browser(system.url) as client:
        await login(client)
        cookie = next(c for c in client.cookie_jar if c.key == "session")
    body = json.dumps({"sql": sql}).encode()
    connection = "Connection: close\r\n" if close else ""
    headers = f"Sec-Fetch-Site: same-origin\r\nContent-Type: application/json\r\nCookie: session={cookie.value}\r\n{connection}Content-Length: {len(body)}"
    return f"POST /api/query HTTP/1.1\r\nHost: 127.0.0.1\r\n{headers}\r\n\r\n".encode() + body


async def test_a_client_that_stops_reading_is_given_up_and_its_query_cancelled(make_system: SystemFactory) -> None:
    system = make_system(CLIENT_WRITE_TIMEOUT_S="1")
    gateway, query = system.services["gateway"], system.services["query"]
    request = await query_request(system, big_result_sql())
    sock = await asyncio.to_thread(raw_request, system.gateway_port, request, rcvbuf=4096)
    try:
        stalled = await wait_event(gateway, "query_stream", outcome="client_stalled")
        assert stalled["level"] == "info" and stalled["rows"] > 0
        cancelled = await wait_event(query, "query_cancelled")  # the query service stopped the statement
        assert cancelled["level"] == "info"
    finally:
        sock.close()
    assert gateway.events("request_failed") == []
    assert not any("Traceback" in line for line in gateway.lines + query.lines)
    async with browser(system.url) as client:  # the gateway serves on
        async with client.get("/healthz") as health:
            assert health.status == 200


async def test_a_client_that_disconnects_is_client_gone_at_info_without_a_traceback(make_system: SystemFactory) -> None:
    system = make_system()
    gateway, query = system.services["gateway"], system.services["query"]
    async with browser(system.url) as client:
        await login(client)
        response = await client.post("/api/query", json={"sql": big_result_sql()})
        assert response.status == 200
        await response.content.readexactly(64 * 1024)  # the stream is flowing
        response.close()  # drop the connection mid-stream
    gone = await wait_event(gateway, "query_stream", outcome="client_gone")
    assert gone["level"] == "info"
    await wait_event(query, "query_cancelled")
    assert gateway.events("request_failed") == []
    assert [e for e in gateway.events() if e.get("level") in ("error", "critical")] == []
    assert not any("Traceback" in line for line in gateway.lines)


async def test_oversized_headers_get_our_json_error(system: System) -> None:
    async with aiohttp.ClientSession() as client:
        async with client.get(f"{system.url}/api/me", headers={"X-Big": "x" * 20_000}) as response:
            assert response.status in (400, 431)
            assert response.content_type == "application/json"
            error = (await response.json())["error"]
    assert error["code"] in ("bad_request", "headers_too_large") and "header" in error["message"].lower()
    gateway = system.services["gateway"]
    rejected = await wait_event(gateway, "request_rejected")
    assert rejected["level"] == "info"
    assert not any("Traceback" in line or line.startswith("ERROR") for line in gateway.lines)


@pytest.mark.parametrize(
    "request_bytes",
    [
        b"GARBAGE\r\n\r\n",
        b"GET /api/me HTTP/1.1\r\nHost: x\r\nBad Header Without Colon\r\n\r\n",
        b"GET /" + b"a" * 20_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",
        b"POST /auth/login HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\nZZ\r\nabc\r\n0\r\n\r\n",
        b"POST /auth/login HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Encoding: gzip\r\nContent-Length: 5\r\n\r\nabcde",
    ],
    ids=["not-http", "bad-header", "long-url", "bad-chunk", "bad-gzip"],
)
async def test_malformed_requests_get_our_json_error(system: System, request_bytes: bytes) -> None:
    sock = await asyncio.to_thread(raw_request, system.gateway_port, request_bytes)
    try:
        status, headers, body = await asyncio.to_thread(read_response, sock)
    finally:
        sock.close()
    assert 400 <= status < 500
    assert headers["content-type"].startswith("application/json")
    error = json.loads(body)["error"]
    assert set(error) == {"code", "message"} and error["message"]
    gateway = system.services["gateway"]
    assert gateway.events("request_failed") == [] and not any("Traceback" in line for line in gateway.lines)


async def test_unknown_routes_and_methods_keep_the_json_shape(system: System) -> None:
    async with browser(system.url) as client:
        async with client.get("/nope") as response:
            assert response.status == 404 and (await response.json())["error"]["code"] == "not_found"
        async with client.get("/auth/login") as response:
            assert response.status == 405 and (await response.json())["error"]["code"] == "method_not_allowed"


@pytest.mark.parametrize(
    ("path", "content_type", "data"),
    [
        ("/auth/login", "text/plain", b'{"email": "t@example.com", "name": "T"}'),
        ("/auth/login", "application/x-www-form-urlencoded", b"email=t%40example.com&name=T"),
        ("/auth/login", "multipart/form-data; boundary=b", b'--b\r\nContent-Disposition: form-data; name="email"\r\n\r\nt@example.com\r\n--b--\r\n'),
        ("/auth/login", "application/json; charset=latin-1", b'{"email": "t@example.com", "name": "T"}'),
        ("/auth/login", None, b'{"email": "t@example.com", "name": "T"}'),
        ("/api/query", "text/plain", b'{"sql": "SELECT 1"}'),
    ],
    ids=["text", "form", "multipart", "latin1", "none", "query-text"],
)
async def test_a_body_that_is_not_json_gets_415_and_changes_nothing(system: System, path: str, content_type: str | None, data: bytes) -> None:
    import redis

    assert system.redis_url is not None
    store = redis.Redis.from_url(system.redis_url)
    try:
        before = set(store.scan_iter("session:*"))
        headers = {"Content-Type": content_type} if content_type else {}
        async with aiohttp.ClientSession(skip_auto_headers=("Content-Type",)) as client:
            async with client.post(f"{system.url}{path}", data=data, headers=headers) as response:
                assert response.status == 415, await response.text()
                error = (await response.json())["error"]
                assert response.cookies.get("session") is None
        assert error["code"] == "unsupported_media_type" and "application/json" in error["message"]
        assert set(store.scan_iter("session:*")) == before  # no session was created
    finally:
        store.close()


@pytest.mark.parametrize("content_type", ["application/json", "application/json; charset=utf-8", "Application/JSON; charset=UTF-8"])
async def test_json_with_or_without_a_utf8_charset_is_accepted(system: System, content_type: str) -> None:
    async with browser(system.url) as client:
        async with client.post("/auth/login", data=b'{"email": "j@example.com", "name": "J"}', headers={"Content-Type": content_type}) as response:
            assert response.status == 200, await response.text()


async def test_a_client_that_leaves_before_the_answer_starts_is_client_gone_at_info(make_system: SystemFactory) -> None:
    system = make_system(start=("session", "query", "gateway"))
    gateway = system.services["gateway"]
    request = await query_request(system, "SELECT 1")
    for _ in range(5):  # the gateway is still looking up the session when the connection is reset
        sock = await asyncio.to_thread(raw_request, system.gateway_port, request)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")  # close with RST
        sock.close()

    def answered() -> list[dict]:
        return [e for e in gateway.events() if e.get("path") == "/api/query" and e["event"] in ("request", "request_failed")]

    await asyncio.to_thread(wait_until, lambda: len(answered()) == 5, 30.0, "the five requests to be logged")
    lines = answered()
    assert gateway.events("request_failed") == []
    assert [e for e in lines if e.get("level") not in ("info", "debug")] == []
    assert not any("Traceback" in line for line in gateway.lines)
    assert all(e.get("outcome") in ("client_gone", None) for e in lines)
    assert any(e.get("outcome") == "client_gone" and e["status"] == 499 for e in lines)


@pytest.mark.parametrize("value", ["0", "-1", "soon"])
def test_client_write_timeout_must_be_a_positive_number(value: str) -> None:
    from services.gateway.config import GatewayConfig
    from shared.errors import ConfigError

    with pytest.raises(ConfigError, match="CLIENT_WRITE_TIMEOUT_S"):
        GatewayConfig.from_env({"CLIENT_WRITE_TIMEOUT_S": value})
    assert GatewayConfig.from_env({"CLIENT_WRITE_TIMEOUT_S": "2.5"}).client_write_timeout_s == 2.5


def dechunk(body: bytes) -> bytes:
    """The payload of an HTTP/1.1 chunked body."""
    out, pos = bytearray(), 0
    while True:
        line_end = body.index(b"\r\n", pos)
        size = int(body[pos:line_end].split(b";")[0], 16)
        if size == 0:
            return bytes(out)
        out += body[line_end + 2 : line_end + 2 + size]
        pos = line_end + 2 + size + 2


def read_slowly_then_fully(sock: socket.socket, slow_for_s: float) -> tuple[bytes, bytes]:
    """Read 4 KiB every 0.1 s for `slow_for_s` (a slow but steady client), then the rest at full speed."""
    sock.settimeout(30)
    slow = b""
    end = time.monotonic() + slow_for_s
    while time.monotonic() < end:
        chunk = sock.recv(4096)
        if not chunk:
            break
        slow += chunk
        time.sleep(0.1)  # the client's pace, not a wait for something
    rest = bytearray()
    try:
        while chunk := sock.recv(1 << 20):
            rest += chunk
    except ConnectionResetError:  # the gateway gave the client up: what came so far is the answer
        pass
    return slow, bytes(rest)


async def test_a_slow_but_steady_client_is_not_given_up(make_system: SystemFactory) -> None:
    """CLIENT_WRITE_TIMEOUT_S counts time without progress: a client that keeps taking bytes, however slowly, gets every row."""
    system = make_system(CLIENT_WRITE_TIMEOUT_S="1")
    gateway = system.services["gateway"]
    rows = 60_000  # about 13 MB of rows parts: far more than the socket buffers and the slow phase take
    request = await query_request(system, big_result_sql(rows), close=True)
    sock = await asyncio.to_thread(raw_request, system.gateway_port, request, rcvbuf=4096)
    try:
        slow, rest = await asyncio.to_thread(read_slowly_then_fully, sock, 3.0)  # three times the timeout
    finally:
        sock.close()
    assert rest, "the stream ended during the slow phase"  # it was still streaming past the timeout
    head, _, chunked = (slow + rest).partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200")
    assert chunked.endswith(b"\r\n0\r\n\r\n"), "the stream was cut off before its end"
    parts = [json.loads(line[6:]) for line in dechunk(chunked).split(b"\n\n") if line.startswith(b"data: {")]
    received = [row for part in parts if part["type"] == "data-query-rows" for row in part["data"]["rows"]]
    assert [row[0] for row in received] == list(range(1, rows + 1))
    assert parts[-1]["type"] == "finish"
    done = await wait_event(gateway, "query_stream", outcome="ok")
    assert done["rows"] == rows
    assert gateway.events("query_stream") == [done]  # no client_stalled
    assert not any("Traceback" in line for line in gateway.lines)


async def test_a_client_that_hangs_up_while_a_write_waits_is_client_gone_at_info(make_system: SystemFactory) -> None:
    """The client stops reading (the gateway's writes wait for it), then resets the connection: client_gone, not a 500."""
    system = make_system(CLIENT_WRITE_TIMEOUT_S="120")
    gateway, query = system.services["gateway"], system.services["query"]
    request = await query_request(system, big_result_sql())
    sock = await asyncio.to_thread(raw_request, system.gateway_port, request, rcvbuf=4096)
    sock.settimeout(10)
    assert (await asyncio.to_thread(sock.recv, 4096)).startswith(b"HTTP/1.1 200")  # the stream flows, then nobody reads
    client_port = sock.getsockname()[1]

    async def gateway_waits() -> bool:  # its kernel queue to us holds data we do not take: its next writes wait
        return await asyncio.to_thread(server_send_queue, system.gateway_port, client_port) > 0

    await eventually(gateway_waits, "the gateway's writes to wait on the client")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()  # a reset
    gone = await wait_event(gateway, "query_stream", outcome="client_gone")
    assert gone["level"] == "info"
    await wait_event(query, "query_cancelled")
    assert gateway.events("request_failed") == []
    assert not any("Traceback" in line for line in gateway.lines)


def server_send_queue(server_port: int, client_port: int) -> int:
    """Bytes the kernel holds unsent on the server's side of one loopback connection (/proc/net/tcp's tx_queue)."""
    with open("/proc/net/tcp") as table:
        for line in table.readlines()[1:]:
            fields = line.split()
            local, remote = fields[1].split(":"), fields[2].split(":")
            if int(local[1], 16) == server_port and int(remote[1], 16) == client_port:
                return int(fields[4].split(":")[0], 16)
    return 0
