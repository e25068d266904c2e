"""Per-service NATS credentials against a real nats-server run with deploy/nats/authorization.conf.

Each service connects as its own user; the test then tries, with each service's own
credentials, what that service must not do, and checks the server refused it by effect (a
subscriber that may read the subject saw nothing). A refused credential ends a service
with one JSON line and exit code 2, without the password in its output.
"""

from __future__ import annotations

import asyncio
import os
import sys
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator

import nats
import nkeys
import pytest
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from services.gateway.config import GatewayConfig
from shared.bus import connect, subscribed
from shared.errors import ConfigError
from tests.client import browser, login, run_query
from tests.conftest import System, SystemFactory
from tests.harness import ROOT, NatsServer, Process, free_port, service_env

CONFIG = ROOT / "deploy" / "nats" / "authorization.conf"
# nats-server parses a variable's value as a config value: a password must not start with a digit (see the config's note).
PASSWORDS = {name: "p" + uuid.uuid4().hex for name in ("gateway", "session", "query")}


@pytest.fixture(scope="module")
def auth_nats() -> Iterator[NatsServer]:
    server = NatsServer()
    server.argv += ["-c", str(CONFIG)]
    server.env = {**os.environ, **{f"{name.upper()}_NATS_PASSWORD": password for name, password in PASSWORDS.items()}}
    server.start()
    yield server
    server.cleanup()


def credentials(name: str) -> dict[str, str]:
    return {"NATS_USER": name, "NATS_PASSWORD": PASSWORDS[name]}


class Refusals:
    """The errors the server sent one client, awaited as they come (the server's -ERR is asynchronous)."""

    def __init__(self) -> None:
        self.errors: list[str] = []
        self._changed = asyncio.Condition()

    async def add(self, exc: Exception) -> None:
        async with self._changed:
            self.errors.append(str(exc))
            self._changed.notify_all()

    async def wait_for(self, what: str) -> None:
        def seen() -> bool:
            return any(f"permissions violation for {what}".lower() in e.lower() for e in self.errors)

        async with self._changed:
            await asyncio.wait_for(self._changed.wait_for(seen), 10)


async def as_service(server: NatsServer, name: str) -> tuple[NATS, Refusals]:
    """A client with `name`'s credentials and inbox prefix, and the errors the server sends it."""
    refusals = Refusals()
    client = await nats.connect(server.url, user=name, password=PASSWORDS[name], inbox_prefix=f"_INBOX.{name}", error_cb=refusals.add, allow_reconnect=False)
    return client, refusals


@pytest.fixture
async def clients(auth_nats: NatsServer) -> AsyncIterator[dict[str, tuple[NATS, Refusals]]]:
    made = {name: await as_service(auth_nats, name) for name in PASSWORDS}
    yield made
    for client, _ in made.values():
        await client.close()


async def assert_serves_without_nats_errors(system: System) -> None:
    """A sign-in, `/api/me` and `SELECT 1` go through `system`, and no service logged a NATS error."""
    async with browser(system.url) as client:
        await login(client)
        async with client.get("/api/me") as response:
            assert response.status == 200
        response, parts = await run_query(client, "SELECT 1 AS x")
        assert response.status == 200 and any(p.get("type") == "data-rows" or "rows" in str(p) for p in parts if isinstance(p, dict)), parts
    for name, service in system.services.items():
        assert not service.events("nats_error"), (name, service.events("nats_error"))


async def test_every_service_runs_with_its_own_credentials(auth_nats: NatsServer, make_system: SystemFactory) -> None:
    system = make_system(nats_url=auth_nats.url, start=(), NATS_SUBJECT_PREFIX="dbgenie")
    for name in ("session", "query", "gateway"):
        system.start(name, **credentials(name))
    await assert_serves_without_nats_errors(system)


def collect(into: list[bytes]) -> Callable[[Msg], Awaitable[None]]:
    async def append(msg: Msg) -> None:
        into.append(msg.data)

    return append


async def test_each_services_forbidden_publish_is_refused(clients) -> None:
    watcher, _ = clients["session"]  # the session service may read dbgenie.session.>
    seen: list[bytes] = []
    await watcher.subscribe("dbgenie.session.get", cb=collect(seen))
    await subscribed(watcher)

    query, query_errors = clients["query"]
    await query.publish("dbgenie.session.get", b"forged by query")
    await query.flush()
    await query_errors.wait_for('publish to "dbgenie.session.get"')

    session, session_errors = clients["session"]
    await session.publish("dbgenie.query.execute", b"forged by session")
    await session.flush()
    await session_errors.wait_for('publish to "dbgenie.query.execute"')

    gateway, _ = clients["gateway"]
    await gateway.publish("dbgenie.session.get", b"allowed")
    await gateway.flush()
    await watcher.flush()
    assert seen == [b"allowed"], "only the gateway's request reached the session subject"


async def test_each_services_forbidden_subscribe_is_refused(clients) -> None:
    query, query_errors = clients["query"]
    stolen: list[bytes] = []
    await query.subscribe("_INBOX.gateway.>", cb=collect(stolen))
    await query.subscribe("dbgenie.session.>", cb=collect(stolen))
    await query.flush()
    await query_errors.wait_for('subscription to "_INBOX.gateway.>"')
    await query_errors.wait_for('subscription to "dbgenie.session.>"')

    gateway, gateway_errors = clients["gateway"]
    await gateway.subscribe("dbgenie.session.>", cb=collect(stolen))
    await gateway.flush()
    await gateway_errors.wait_for('subscription to "dbgenie.session.>"')

    session, _ = clients["session"]

    async def pong(msg: Msg) -> None:
        await msg.respond(b"pong")

    await session.subscribe("dbgenie.session.ping", cb=pong)
    await subscribed(session)
    reply = await gateway.request("dbgenie.session.ping", b"", timeout=5)
    assert reply.data == b"pong" and reply.subject.startswith("_INBOX.gateway.")
    assert stolen == [], "neither the query service nor the gateway read a session request or reply"


async def test_a_refused_password_is_a_configuration_error(auth_nats: NatsServer) -> None:
    config = GatewayConfig.from_env({"NATS_URL": auth_nats.url, "NATS_USER": "gateway", "NATS_PASSWORD": "wrong"})
    with pytest.raises(ConfigError, match="refused the credentials of gateway \\(NATS_USER\\)"):
        await connect(config.nats_url, "gateway", credentials=config.nats_credentials, connect_deadline_s=5)


def test_a_service_with_a_wrong_password_exits_with_one_json_line(auth_nats: NatsServer) -> None:
    wrong = "wrong-" + uuid.uuid4().hex
    env = service_env(NATS_URL=auth_nats.url, NATS_USER="session", NATS_PASSWORD=wrong, OPS_PORT=str(free_port()), NATS_SUBJECT_PREFIX="dbgenie")
    service = Process("session", [sys.executable, "-m", "services.session"], env=env, cwd=ROOT).start()
    code = service.proc.wait(60)  # type: ignore[union-attr]
    service.wait_for_line(lambda line: '"service_failed"' in line, timeout=10)
    failed = service.events("service_failed")
    assert code == 2 and len(failed) == 1
    assert failed[0]["reason"] == "configuration" and "refused the credentials of session (NATS_USER)" in failed[0]["error"]
    assert not any(wrong in line for line in service.lines), "the password is never printed"


def test_credentials_of_two_kinds_are_refused_at_start() -> None:
    with pytest.raises(ConfigError, match="one kind of NATS credentials"):
        GatewayConfig.from_env({"NATS_USER": "a", "NATS_PASSWORD": "b", "NATS_NKEY_SEED": "SUAAAA"}).nats_credentials  # noqa: B018
    with pytest.raises(ConfigError, match="NATS_CREDS names no readable file"):
        GatewayConfig.from_env({"NATS_CREDS": str(ROOT / "no-such.creds")}).nats_credentials  # noqa: B018
    with pytest.raises(ConfigError, match="go together"):
        GatewayConfig.from_env({"NATS_USER": "a"}).nats_credentials  # noqa: B018
    assert GatewayConfig.from_env({}).nats_credentials.options() == {}


@pytest.fixture(scope="module")
def nkey_user(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[NatsServer, str]]:
    """A nats-server that knows one user by its nkey, and that user's seed."""
    seed = nkeys.encode_seed(os.urandom(32), nkeys.PREFIX_BYTE_USER).decode()
    public = nkeys.from_seed(seed.encode()).public_key.decode()
    config = tmp_path_factory.mktemp("nkey") / "nkey.conf"
    config.write_text(f'authorization {{ users = [ {{ nkey: "{public}" }} ] }}\n')
    server = NatsServer(jetstream=False)
    server.argv += ["-c", str(config)]
    server.start()
    yield server, seed
    server.cleanup()


async def test_an_nkey_seed_or_its_file_connects_and_another_seed_is_refused(nkey_user: tuple[NatsServer, str], tmp_path) -> None:
    server, seed = nkey_user
    seed_file = tmp_path / "user.nk"
    seed_file.write_text(seed)
    for given in (seed, str(seed_file)):
        config = GatewayConfig.from_env({"NATS_URL": server.url, "NATS_NKEY_SEED": given})
        nc = await connect(config.nats_url, "gateway", credentials=config.nats_credentials, connect_deadline_s=5)
        try:
            assert nc.is_connected
        finally:
            await nc.close()
    stranger = nkeys.encode_seed(os.urandom(32), nkeys.PREFIX_BYTE_USER).decode()
    config = GatewayConfig.from_env({"NATS_URL": server.url, "NATS_NKEY_SEED": stranger})
    with pytest.raises(ConfigError, match="refused the credentials of gateway \\(NATS_NKEY_SEED\\)"):
        await connect(config.nats_url, "gateway", credentials=config.nats_credentials, connect_deadline_s=5)
