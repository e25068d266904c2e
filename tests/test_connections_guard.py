"""The SSRF guard and the sealing of users' connections.

The classifier and the keyring are unit-tested without connecting anywhere. The refusals
then run through a query service (in-process, real NATS and Redis) with the default
settings, against a listener on loopback that must never see a connection. A resolver
stands in for DNS only for names this machine cannot resolve; it answers loopback
addresses, so no test reaches outside 127.0.0.0/8 and ::1.
"""

from __future__ import annotations

import asyncio
import base64
import importlib.util
import ipaddress
import os
import socket
import ssl
import uuid
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import redis.asyncio as aioredis
import structlog

from services.query.config import QueryConfig
from services.query.connections.address import AddressPolicy, AddressRefused, classify, parse_networks, parse_ports
from services.query.connections.seal import Keyring
from services.query.service import QueryService
from services.query.service import create_service as create_query
from services.session.config import SessionConfig
from services.session.connections import hash_key
from services.session.service import create_service as create_session
from shared.bus import connect, request
from shared.contracts import (
    ConnectionChanges,
    ConnectionCreate,
    ConnectionList,
    ConnectionRecords,
    ConnectionRef,
    ConnectionSettings,
    ConnectionTls,
    ConnectionUpdate,
    ConnectionView,
    SchemaSearchReply,
    SchemaSearchRequest,
    Subjects,
)
from shared.errors import BUSY, CONNECTION_FAILED, NOT_FOUND, ConfigError, ServiceError
from shared.stream import StreamConsumer
from tests.conftest import Infra, MysqlReader, PostgresReader
from tests.harness import RedisServer, eventually, free_port
from tests.readers import mariadb_database

KEYS = "k1:" + base64.b64encode(os.urandom(32)).decode()


@pytest.mark.parametrize(
    ("address", "reason"),
    [
        ("127.0.0.1", "loopback"),
        ("127.255.0.9", "loopback"),
        ("::1", "loopback"),
        ("::ffff:127.0.0.1", "loopback (inside an IPv6 address)"),
        ("0.0.0.0", "unspecified"),
        ("::", "unspecified"),
        ("169.254.169.254", "cloud metadata"),
        ("fd00:ec2::254", "cloud metadata"),
        ("169.254.10.20", "link-local"),
        ("fe80::1", "link-local"),
        ("fe80::1%2", "link-local"),
        ("10.0.0.1", "private"),
        ("172.16.5.4", "private"),
        ("192.168.1.1", "private"),
        ("::ffff:10.1.2.3", "private (inside an IPv6 address)"),
        ("64:ff9b::a00:1", "private (inside an IPv6 address)"),
        ("2002:a00:1::1", "private (inside an IPv6 address)"),
        ("fd12:3456::1", "unique-local"),
        ("fc00::5", "unique-local"),
        ("224.0.0.1", "multicast"),
        ("239.1.2.3", "multicast"),
        ("ff02::1", "multicast"),
        ("240.0.0.1", "reserved"),
        ("255.255.255.255", "reserved"),
        ("192.0.2.10", "reserved"),
        ("198.18.0.1", "reserved"),
        ("2001:db8::1", "reserved"),
        ("100.64.1.1", "shared (carrier-grade NAT)"),
    ],
)
def test_classifier_refuses_every_address_that_is_not_public(address: str, reason: str) -> None:
    assert classify(ipaddress.ip_address(address)) == reason
    assert AddressPolicy().refusal(ipaddress.ip_address(address), 5432) == f"{reason} address"


@pytest.mark.parametrize("address", ["8.8.8.8", "1.1.1.1", "93.184.216.34", "2606:4700:4700::1111", "::ffff:8.8.8.8"])
def test_classifier_passes_public_addresses(address: str) -> None:
    assert classify(ipaddress.ip_address(address)) is None


def test_allowed_networks_and_ports() -> None:
    policy = AddressPolicy(parse_networks("10.1.0.0/16, fd12::/48"), parse_ports("5432,6000-6002"))
    assert policy.refusal(ipaddress.ip_address("10.1.2.3"), 5432) is None
    assert policy.refusal(ipaddress.ip_address("fd12::9"), 6001) is None
    assert policy.refusal(ipaddress.ip_address("10.2.0.1"), 5432) == "private address"
    assert policy.refusal(ipaddress.ip_address("10.1.2.3"), 3306) == "port not in CONNECTIONS_ALLOWED_PORTS"
    with pytest.raises(ConfigError, match="CONNECTIONS_ALLOWED_NETWORKS"):
        parse_networks("10.0.0.0/33")
    with pytest.raises(ConfigError, match="outside 1-65535"):
        parse_ports("0-10")


async def test_every_resolved_address_is_checked() -> None:
    async def resolver(host: str, port: int) -> list[str]:
        return ["8.8.8.8", "10.0.0.7"]

    with pytest.raises(AddressRefused, match="10.0.0.7: private address"):
        await AddressPolicy().resolve("mixed.test", 5432, resolver)


def test_keyring_binds_a_blob_to_its_key_record_and_owner() -> None:
    keys = Keyring.parse(KEYS)
    assert keys is not None
    key_id, sealed = keys.seal("s3cret", "rec1", "alice")
    assert key_id == "k1" and b"s3cret" not in sealed
    assert keys.open(key_id, sealed, "rec1", "alice") == "s3cret"
    for record, owner in (("rec2", "alice"), ("rec1", "bob")):
        with pytest.raises(ServiceError, match="does not open with key 'k1' for this record"):
            keys.open(key_id, sealed, record, owner)
    other = Keyring.parse("k9:" + base64.b64encode(os.urandom(32)).decode())
    assert other is not None
    with pytest.raises(ServiceError, match="sealed with key 'k1', which is not in CONNECTIONS_KEYS"):
        other.open(key_id, sealed, "rec1", "alice")


def test_keyring_configuration_errors_name_the_variable_never_the_key() -> None:
    short = base64.b64encode(b"0123456789abcdef").decode()
    for raw, expected in ((f"k1:{short}", "must be 32 bytes"), ("k1:not base64!", "not valid base64"), ("nocolon", "must look like id:base64"), (f"{KEYS},{KEYS}", "twice")):
        with pytest.raises(ConfigError, match="CONNECTIONS_KEYS") as caught:
            Keyring.parse(raw)
        assert expected in str(caught.value) and short not in str(caught.value)
    assert Keyring.parse(" ") is None
    assert KEYS.split(":", 1)[1] not in repr(Keyring.parse(KEYS))


@dataclass
class Resolver:
    """DNS for names of these tests only (each answer list is used in turn); counts what it was asked."""

    answers: dict[str, list[list[str]]] = field(default_factory=dict)
    asked: list[str] = field(default_factory=list)

    async def __call__(self, host: str, port: int) -> list[str]:
        self.asked.append(host)
        if host.endswith(".test"):
            queue = self.answers.get(host)
            if not queue:
                raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
            return queue.pop(0) if len(queue) > 1 else queue[0]
        loop = asyncio.get_running_loop()
        infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP)
        return [str(info[4][0]) for info in infos]


@dataclass
class Stack:
    subjects: Subjects
    nats_url: str
    redis_url: str
    resolver: Resolver
    query: QueryService
    owner: str = field(default_factory=lambda: f"guard-{uuid.uuid4().hex[:8]}")

    async def create(self, **settings: Any) -> ConnectionView:
        nc = await connect(self.nats_url, "test")
        try:
            body = ConnectionSettings(**({"name": "db", "dialect": "postgresql", "database": "test", "user": "u", "password": "pw", "tls": ConnectionTls("disable")} | settings))
            return await request(nc, self.subjects.query_connection("create"), ConnectionCreate(self.owner, body), timeout=30, reply=ConnectionView)
        finally:
            await nc.close()

    async def listed(self) -> list[str]:
        """The names the session service lists for the owner (Redis, or the fallback during an outage)."""
        nc = await connect(self.nats_url, "test")
        try:
            reply = await request(nc, self.subjects.session_connection("list"), ConnectionList(self.owner), timeout=10, reply=ConnectionRecords)
        finally:
            await nc.close()
        return [record.name for record in reply.records]

    async def stored(self) -> dict[bytes, bytes]:
        client = aioredis.from_url(self.redis_url)
        try:
            return await client.hgetall(hash_key(self.owner))
        finally:
            await client.aclose()


async def start_stack(stack: AsyncExitStack, infra: Infra, tmp_path: Path, resolver: Resolver, redis_url: str | None = None, **env: str) -> Stack:
    prefix = f"g{uuid.uuid4().hex[:10]}"
    redis_url = redis_url or infra.redis_url
    base = {"NATS_URL": infra.nats_url, "NATS_SUBJECT_PREFIX": prefix, "REDIS_URL": redis_url, "SESSION_KV_BUCKET": f"sessions_{prefix}"}
    await stack.enter_async_context(create_session(SessionConfig.from_env(base | {"OPS_PORT": str(free_port())})))
    query_env = base | {"OPS_PORT": str(free_port()), "QUERY_SAMPLE_PATH": str(tmp_path / "sample.db"), "CONNECTIONS_KEYS": KEYS} | env
    query = await stack.enter_async_context(create_query(QueryConfig.from_env(query_env), resolver=resolver))
    return Stack(Subjects(prefix), infra.nats_url, redis_url, resolver, query)


@pytest.fixture
async def listener() -> AsyncIterator[tuple[int, list[str]]]:
    """A TCP port listening on 127.0.0.1 and ::1 that records every connection it accepts."""
    accepted: list[str] = []

    def on_connect(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(str(writer.get_extra_info("peername")))
        writer.close()

    port = free_port()
    servers = [await asyncio.start_server(on_connect, "127.0.0.1", port), await asyncio.start_server(on_connect, "::1", port)]
    yield port, accepted
    for server in servers:
        server.close()
        await server.wait_closed()


LOOPBACK_SPELLINGS = ["127.0.0.1", "127.1", "2130706433", "0x7f000001", "localhost", "[::1]", "::ffff:127.0.0.1", "0.0.0.0", "db.loopback.test", "flip.test"]


async def test_default_settings_refuse_loopback_in_every_spelling_and_connect_nowhere(infra: Infra, tmp_path: Path, listener: tuple[int, list[str]]) -> None:
    port, accepted = listener
    # flip.test answers loopback first, a public address second: resolved once, it is refused once and for all.
    resolver = Resolver({"db.loopback.test": [["127.0.0.1"]], "flip.test": [["127.0.0.1"], ["93.184.216.34"]]})
    async with AsyncExitStack() as stack:
        guard = await start_stack(stack, infra, tmp_path, resolver, CONNECTIONS_CONNECT_TIMEOUT_S="0.1")
        messages = {}
        for host in LOOPBACK_SPELLINGS:
            with pytest.raises(ServiceError) as caught:
                await guard.create(host=host, port=port)
            assert caught.value.code == CONNECTION_FAILED, (host, caught.value.message)
            shown = host if ":" not in host or host.startswith("[") else f"[{host}]"
            messages[host] = caught.value.message.replace(f"{shown}:{port}", "HOST")
        # Unreachable (nothing listens) and not resolving: the very same answer.
        closed = free_port()
        with pytest.raises(ServiceError) as unreachable:
            await guard.create(host="127.0.0.1", port=closed)
        with pytest.raises(ServiceError) as unknown:
            await guard.create(host="nowhere.test", port=port)
        assert set(messages.values()) == {unreachable.value.message.replace(f"127.0.0.1:{closed}", "HOST"), unknown.value.message.replace(f"nowhere.test:{port}", "HOST")}
        assert resolver.asked.count("flip.test") == 1
        assert accepted == [], "a refused address was connected to"
        assert await guard.stored() == {}


async def test_connection_goes_to_the_address_that_was_checked(infra: Infra, tmp_path: Path, pg_reader: PostgresReader) -> None:
    """Rebinding: the name answers an allowed address, then a refused one; the connection uses the first, and the name is resolved once."""
    parts = urlsplit(pg_reader.url)
    resolver = Resolver({"rebind.test": [["127.0.0.1"], ["127.0.0.2"]]})
    async with AsyncExitStack() as stack:
        guard = await start_stack(stack, infra, tmp_path, resolver, CONNECTIONS_ALLOWED_NETWORKS="127.0.0.1/32")
        view = await guard.create(host="rebind.test", port=parts.port or 5432, user=parts.username or "", password=parts.password or "")
        assert view.host == "rebind.test"
        assert resolver.asked.count("rebind.test") == 1
        stored = await guard.stored()
        assert list(stored) == [view.id.encode()]
        assert (parts.password or "").encode() not in stored[view.id.encode()]
        # 127.0.0.2 is loopback outside the allowed network: asked again, the name is refused.
        with pytest.raises(ServiceError, match="cannot reach a database at rebind.test"):
            await guard.create(name="again", host="rebind.test", port=parts.port or 5432, user=parts.username or "", password=parts.password or "")


async def test_a_connection_added_while_redis_is_down_is_written_back(infra: Infra, tmp_path: Path, pg_reader: PostgresReader, redis_server: RedisServer) -> None:
    """Records ride the sessions' outage machinery: kept in the JetStream fallback during the outage, then written back."""
    parts = urlsplit(pg_reader.url)
    account = {"host": "127.0.0.1", "port": parts.port or 5432, "user": parts.username or "", "password": parts.password or ""}
    async with AsyncExitStack() as stack:
        guard = await start_stack(stack, infra, tmp_path, Resolver(), redis_url=redis_server.url, CONNECTIONS_ALLOWED_NETWORKS="127.0.0.1/32")
        await guard.create(name="before", **account)
        await asyncio.to_thread(redis_server.kill)
        during = await guard.create(name="during", **account)
        assert "during" in await guard.listed()
        await asyncio.to_thread(redis_server.start)  # same port, empty: nothing persisted

        async def written_back() -> bool:
            try:
                return during.id.encode() in await guard.stored()
            except (OSError, aioredis.RedisError):
                return False

        await eventually(written_back, "the connection added during the outage is in Redis", timeout=20)
        assert await guard.listed() == ["during"]
        assert (parts.password or "").encode() not in (await guard.stored())[during.id.encode()]


async def test_each_user_runs_at_most_their_share_of_queries_and_idle_pools_close(infra: Infra, tmp_path: Path, pg_reader: PostgresReader) -> None:
    """QUERY_MAX_CONCURRENT_PER_USER=1: a second query of the same user is `busy` while the first streams; another user's runs.
    QUERY_POOL_IDLE_S: once nothing runs, the pools close by themselves."""
    parts = urlsplit(pg_reader.url)
    account = {"host": "127.0.0.1", "port": parts.port or 5432, "user": parts.username or "", "password": parts.password or ""}
    async with AsyncExitStack() as stack:
        guard = await start_stack(stack, infra, tmp_path, Resolver(), CONNECTIONS_ALLOWED_NETWORKS="127.0.0.1/32", QUERY_MAX_CONCURRENT_PER_USER="1", QUERY_POOL_IDLE_S="0.3")
        mine = await guard.create(name="mine", **account)
        other = Stack(guard.subjects, guard.nats_url, guard.redis_url, guard.resolver, guard.query)
        theirs = await other.create(name="theirs", **account)
        nc = await connect(guard.nats_url, "test")
        stack.push_async_callback(nc.close)
        # Never read: the producer waits for credit, so this query keeps running.
        holding = StreamConsumer(nc, guard.subjects)
        await holding.start("SELECT g FROM generate_series(1, 50000000) g", None, connection=ConnectionRef(guard.owner, mine.id))
        second = StreamConsumer(nc, guard.subjects)
        with pytest.raises(ServiceError) as busy:
            await second.start("SELECT 1", None, connection=ConnectionRef(guard.owner, mine.id))
        assert busy.value.code == BUSY and "QUERY_MAX_CONCURRENT_PER_USER" in busy.value.message
        ran = StreamConsumer(nc, guard.subjects)
        await ran.start("SELECT 1 AS one", None, connection=ConnectionRef(other.owner, theirs.id))
        kinds = [type(message).__name__ async for message in ran.messages()]
        await ran.close()
        assert kinds[-1] == "StreamEnd", kinds
        await holding.close()
        pools = guard.query.connections.pools
        assert pools is not None

        async def all_closed() -> bool:
            return pools.open_count == 0

        await eventually(all_closed, "idle pools closed", timeout=10)
        again = StreamConsumer(nc, guard.subjects)
        await again.start("SELECT 2 AS two", None, connection=ConnectionRef(guard.owner, mine.id))
        assert [type(message).__name__ async for message in again.messages()][-1] == "StreamEnd"
        await again.close()


async def test_search_schema_reaches_a_users_connection_for_its_owner_only_and_a_change_drops_its_index(infra: Infra, tmp_path: Path, my_reader: MysqlReader) -> None:
    """`query.schema.search` on a user's connection: another user's request with its id is not found and opens nothing;
    once the connection is changed (another database), the search reads the new one, not the index of the old.
    With QUERY_SCHEMA_CONNECTION_INDEXES=1, searching another connection drops the first one's index."""
    crates = ("CREATE TABLE alpha_crates (id INT PRIMARY KEY, colour VARCHAR(10))", "INSERT INTO alpha_crates VALUES (1, 'red'), (2, 'blue')")
    async with AsyncExitStack() as stack:
        first = urlsplit(await stack.enter_async_context(mariadb_database(my_reader, crates)))
        guard = await start_stack(stack, infra, tmp_path, Resolver(), CONNECTIONS_ALLOWED_NETWORKS="127.0.0.1/32", QUERY_SCHEMA_CONNECTION_INDEXES="1")
        account = {"dialect": "mysql", "host": "127.0.0.1", "port": first.port or 3306, "user": my_reader.user, "password": my_reader.password}
        view = await guard.create(name="crates", database=first.path.lstrip("/"), **account)
        nc = await connect(guard.nats_url, "test")
        stack.push_async_callback(nc.close)
        pools = guard.query.connections.pools
        assert pools is not None

        async def search(owner: str, connection: str = view.id) -> SchemaSearchReply:
            ask = SchemaSearchRequest(query="crates colour", connection=ConnectionRef(owner, connection))
            return await request(nc, guard.subjects.query_schema_search, ask, timeout=30, reply=SchemaSearchReply)

        with pytest.raises(ServiceError) as before:
            await search("eve")
        assert before.value.code == NOT_FOUND and pools.open_count == 0  # nothing opened for eve
        mine = await search(guard.owner)
        assert (mine.source, [t.name for t in mine.tables]) == ("crates", ["alpha_crates"])
        with pytest.raises(ServiceError) as after:
            await search("eve")  # the owner's index and pool are there now: still not eve's
        assert after.value.code == NOT_FOUND and after.value.message == before.value.message and pools.open_count == 1

        # Made now, so that the first index could not see it (the account reads every database granted to it).
        second = urlsplit(await stack.enter_async_context(mariadb_database(my_reader, ("CREATE TABLE beta_crates (id INT PRIMARY KEY, colour VARCHAR(10))",))))
        changes = ConnectionChanges(database=second.path.lstrip("/"))
        await request(nc, guard.subjects.query_connection("update"), ConnectionUpdate(ConnectionRef(guard.owner, view.id), changes), timeout=30, reply=ConnectionView)

        async def pool_closed() -> bool:
            return pools.open_count == 0

        await eventually(pool_closed, "the changed connection's pool closed by the broadcast")
        changed = await search(guard.owner)  # well within QUERY_SCHEMA_CACHE_S of the first index
        assert "beta_crates" in [t.name for t in changed.tables]  # the new database's own tables are unqualified

        other = await guard.create(name="others", database=first.path.lstrip("/"), **account)
        with structlog.testing.capture_logs() as logs:
            assert "alpha_crates" in [t.name for t in (await search(guard.owner, other.id)).tables]
        dropped = [e for e in logs if e["event"] == "schema_index_dropped"]
        assert [(e["connection"], e["reason"]) for e in dropped] == [(view.id, "QUERY_SCHEMA_CONNECTION_INDEXES")]


def test_make_run_generates_a_key_once_into_var(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    spec = importlib.util.spec_from_file_location("run_script", Path(__file__).resolve().parent.parent / "scripts" / "run.py")
    assert spec is not None and spec.loader is not None
    run = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(run)
    monkeypatch.setattr(run, "ROOT", tmp_path)
    monkeypatch.setattr(run, "KEY_FILE", tmp_path / "var" / "connections.key")
    env: dict[str, str] = {}
    run.connections_key(env)
    assert "generated a key for users' own database connections into var/connections.key" in capsys.readouterr().out
    assert (tmp_path / "var" / "connections.key").stat().st_mode & 0o777 == 0o600
    keys = Keyring.parse(env["CONNECTIONS_KEYS"])
    assert keys is not None and keys.current == "dev1"
    again: dict[str, str] = {}
    run.connections_key(again)
    assert again == env, "the same key on every start"
    given = {"CONNECTIONS_KEYS": KEYS}
    run.connections_key(given)
    assert given == {"CONNECTIONS_KEYS": KEYS}


def _certificates(tmp_path: Path, host: str) -> tuple[str, Path, Path]:
    """A CA (its PEM) and a server certificate for `host` that it signed (files for the server)."""
    import datetime as dt

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=1))
        .not_valid_after(now + dt.timedelta(hours=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host)]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=1))
        .not_valid_after(now + dt.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(host)]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    cert_path, key_path = tmp_path / "server.pem", tmp_path / "server.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    return ca.public_bytes(serialization.Encoding.PEM).decode(), cert_path, key_path


def _error_response(code: str, message: str) -> bytes:
    fields = b"".join(kind + value.encode() + b"\0" for kind, value in ((b"S", "FATAL"), (b"V", "FATAL"), (b"C", code), (b"M", message))) + b"\0"
    return b"E" + (len(fields) + 4).to_bytes(4, "big") + fields


async def test_verify_full_checks_the_certificate_against_the_host_name_given_not_the_address(infra: Infra, tmp_path: Path) -> None:
    """The connection goes to 127.0.0.1, yet verify-full checks the certificate against `db.test`, the name the user gave.

    The server is PostgreSQL's wire protocol up to authentication, on loopback: it accepts the
    SSLRequest, does TLS with a certificate for db.test, reads the startup message and refuses
    the password (a PostgreSQL with TLS is not among this machine's servers).
    """
    ca_pem, cert_path, key_path = _certificates(tmp_path, "db.test")
    server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_tls.load_cert_chain(cert_path, key_path)

    async def postgres_until_auth(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await reader.readexactly(8)  # SSLRequest
            writer.write(b"S")
            await writer.drain()
            await writer.start_tls(server_tls)
            length = int.from_bytes(await reader.readexactly(4), "big")
            await reader.readexactly(length - 4)  # the startup message
            writer.write(_error_response("28P01", 'password authentication failed for user "u"'))
            await writer.drain()
        except (OSError, ssl.SSLError, asyncio.IncompleteReadError):
            pass  # the client refused our certificate
        finally:
            writer.close()

    server = await asyncio.start_server(postgres_until_auth, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    resolver = Resolver({"db.test": [["127.0.0.1"]], "elsewhere.test": [["127.0.0.1"]]})
    try:
        async with AsyncExitStack() as stack:
            guard = await start_stack(stack, infra, tmp_path, resolver, CONNECTIONS_ALLOWED_NETWORKS="127.0.0.1/32")
            with pytest.raises(ServiceError) as matched:
                await guard.create(host="db.test", port=port, tls=ConnectionTls("verify-full", ca_pem))
            assert "refused the user name or password" in matched.value.message  # TLS passed: the server got as far as the password
            with pytest.raises(ServiceError) as mismatched:
                await guard.create(host="elsewhere.test", port=port, tls=ConnectionTls("verify-full", ca_pem))
            assert "TLS (verify-full) failed" in mismatched.value.message and "elsewhere.test" in mismatched.value.message
            with pytest.raises(ServiceError) as untrusted:
                await guard.create(host="db.test", port=port, tls=ConnectionTls("verify-full"))
            assert "TLS (verify-full) failed" in untrusted.value.message
            assert await guard.stored() == {}
    finally:
        server.close()
        await server.wait_closed()
