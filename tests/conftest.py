"""Test fixtures: the one place that chooses testcontainers or local servers, whole systems, and the reader roles queries run as."""

from __future__ import annotations

import compileall
import os
import secrets
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import AsyncExitStack, asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from urllib.parse import quote, urlsplit, urlunsplit

import asyncmy
import asyncpg
import nats
import pytest
from nats.aio.client import Client as NATS

from services.query.config import QueryConfig
from services.query.service import QueryService
from services.query.service import create_service as create_query_service
from services.session.config import SessionConfig
from services.session.service import SessionService
from services.session.service import create_service as create_session_service
from shared.contracts import Subjects
from tests.harness import ROOT, NatsServer, PostgresCluster, RedisServer, Service, free_port, service_env

# Every image the testcontainers fixtures start, and testcontainers' own reaper unless it is turned off.
IMAGES = {"redis": "redis:7-alpine", "nats": "nats:2.10-alpine", "postgres": "postgres:16-alpine", "mariadb": "mariadb:11"}


def _images_needed() -> list[str]:
    from testcontainers.core.config import testcontainers_config

    return [*IMAGES.values(), *([] if testcontainers_config.ryuk_disabled else [testcontainers_config.ryuk_image])]


def choose_infra() -> tuple[str, str | None]:
    """("testcontainers", None) when a Docker engine answers and has (or can pull) every image; else ("local", why not).

    The reason is None when no Docker engine is configured or answers at all, and a one-line
    warning when one answered but an image could not be had.
    """
    if not os.environ.get("DOCKER_HOST") and not os.path.exists("/var/run/docker.sock"):
        return "local", None
    client = None
    try:
        import docker
        from docker.errors import ImageNotFound

        client = docker.from_env(timeout=10)
        client.ping()
    except Exception:
        if client is not None:
            client.close()
        return "local", None
    image = ""
    try:
        for image in _images_needed():
            try:
                client.images.get(image)
            except ImageNotFound:
                client.images.pull(image)
        return "testcontainers", None
    except Exception as exc:
        reason = " ".join(str(exc).split())[:300]
        return "local", f"WARNING: a Docker engine answered but the image {image} cannot be had ({reason}); the tests use local servers instead"
    finally:
        client.close()


INFRA, INFRA_WARNING = choose_infra()


def pytest_sessionstart(session: pytest.Session) -> None:
    """Byte-compile our own code once, so each of the many service processes the tests start loads it instead of compiling it.

    Under PYTHONDONTWRITEBYTECODE (set on some machines) no process would ever keep what it compiled,
    and every service start would compile its modules afresh. The .pyc files land in __pycache__
    (git-ignored) and are checked against the source's mtime as usual.
    """
    for package in ("services", "shared", "scripts"):
        compileall.compile_dir(ROOT / package, quiet=1)


def pytest_report_header(config: pytest.Config) -> list[str]:
    if INFRA == "testcontainers":
        return ["servers: testcontainers (a Docker engine answered) for NATS, Redis, PostgreSQL and MariaDB"]
    local = "servers: local nats-server and redis-server binaries on free ports, and the PostgreSQL and MariaDB at TEST_POSTGRES_URL / TEST_MYSQL_URL"
    if INFRA_WARNING:
        return [INFRA_WARNING, local]
    return [local + " (no Docker engine answered)"]


@dataclass
class Infra:
    """The NATS and Redis every system in this test session shares."""

    kind: str
    nats_url: str
    redis_url: str


@pytest.fixture(scope="session")
def infra() -> Iterator[Infra]:
    if INFRA == "testcontainers":
        from testcontainers.community.redis import RedisContainer
        from testcontainers.core.container import DockerContainer

        with RedisContainer(IMAGES["redis"]) as redis, DockerContainer(IMAGES["nats"]).with_command("-js").with_exposed_ports(4222) as nats:
            from testcontainers.core.waiting_utils import wait_for_logs

            wait_for_logs(nats, "Server is ready")
            nats_url = f"nats://{nats.get_container_host_ip()}:{nats.get_exposed_port(4222)}"
            redis_url = f"redis://{redis.get_container_host_ip()}:{redis.get_exposed_port(6379)}/0"
            print(f"\n[infra] testcontainers: NATS {nats_url}, Redis {redis_url}")
            yield Infra("testcontainers", nats_url, redis_url)
        return
    nats = NatsServer().start()
    redis = RedisServer().start()
    print(f"\n[infra] local servers: nats-server {nats.url}, redis-server {redis.url}")
    try:
        yield Infra("local", nats.url, redis.url)
    finally:
        nats.cleanup()
        redis.cleanup()


@dataclass
class Databases:
    """Where the engine tests find PostgreSQL and MariaDB, as admin URLs."""

    kind: str
    postgres: str
    mysql: str


@pytest.fixture(scope="session")
def databases() -> Iterator[Databases]:
    if INFRA == "testcontainers":
        from testcontainers.community.mysql import MySqlContainer
        from testcontainers.community.postgres import PostgresContainer

        with PostgresContainer(IMAGES["postgres"], driver=None) as pg, MySqlContainer(IMAGES["mariadb"], username="root", password="test") as my:
            dbs = Databases("testcontainers", pg.get_connection_url(), my.get_connection_url())
            print(f"\n[databases] testcontainers: PostgreSQL and MariaDB ({dbs.postgres}, {dbs.mysql})")
            yield dbs
        return
    dbs = Databases(
        "local",
        os.environ.get("TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test"),
        os.environ.get("TEST_MYSQL_URL", "mysql://root@127.0.0.1:3306/test"),
    )
    print(f"\n[databases] local servers: {dbs.postgres}, {dbs.mysql}")
    yield dbs


def with_account(url: str, user: str, password: str, database: str | None = None) -> str:
    """`url` with its user and password (and, if given, its database) replaced."""
    parts = urlsplit(url)
    netloc = f"{quote(user, safe='')}:{quote(password, safe='')}@{parts.hostname}" + (f":{parts.port}" if parts.port else "")
    path = f"/{database}" if database is not None else parts.path
    return urlunsplit((parts.scheme, netloc, path, parts.query, parts.fragment))


def mysql_connect_args(url: str) -> dict[str, object]:
    parts = urlsplit(url)
    return {"host": parts.hostname, "port": parts.port or 3306, "user": parts.username, "password": parts.password or "", "autocommit": True}


@dataclass
class PostgresReader:
    """A login role that may only read, as docs/query-account.md creates it; `grant` opens a schema to it."""

    role: str
    url: str
    admin_url: str

    async def grant(self, schema: str) -> None:
        conn = await asyncpg.connect(self.admin_url)
        try:
            await conn.execute(f'GRANT USAGE ON SCHEMA "{schema}" TO "{self.role}"; GRANT SELECT ON ALL TABLES IN SCHEMA "{schema}" TO "{self.role}"')
        finally:
            await conn.close()


@asynccontextmanager
async def postgres_reader(admin_url: str) -> AsyncIterator[PostgresReader]:
    """A PostgreSQL reader role of a unique name, its sessions ended and the role dropped at the end."""
    role, password = f"dbg_reader_{uuid.uuid4().hex[:10]}", secrets.token_hex(12)
    conn = await asyncpg.connect(admin_url)
    try:
        await conn.execute(f"CREATE ROLE \"{role}\" LOGIN PASSWORD '{password}' NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS")
        await conn.execute(f'GRANT SET ON PARAMETER temp_file_limit TO "{role}"')  # as docs/query-account.md advises
        yield PostgresReader(role, with_account(admin_url, role, password), admin_url)
    finally:
        await conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = $1", role)
        await conn.execute(f'DROP OWNED BY "{role}"; DROP ROLE "{role}"')
        await conn.close()


@pytest.fixture(scope="session")
async def pg_reader(databases: Databases) -> AsyncIterator[PostgresReader]:
    """A PostgreSQL reader role of this test session."""
    async with postgres_reader(databases.postgres) as reader:
        yield reader


@dataclass
class PasswordPostgres:
    """A PostgreSQL that checks passwords: `admin_url` connects as its superuser."""

    admin_url: str


@pytest.fixture(scope="session")
def scram_postgres(databases: Databases) -> Iterator[PostgresCluster | PasswordPostgres]:
    """A PostgreSQL that checks passwords, unlike the shared local one (it trusts loopback).

    Under testcontainers, the PostgreSQL container already does (the official image asks for
    scram-sha-256 over TCP); otherwise a private cluster of the local PostgreSQL binaries,
    stopped and removed at the end.
    """
    if databases.kind == "testcontainers":
        yield PasswordPostgres(databases.postgres)
        return
    cluster = PostgresCluster()
    try:
        yield cluster.start()
    finally:
        cluster.cleanup()


@dataclass
class MysqlReader:
    """A MariaDB account with SELECT and SHOW VIEW only; `grant` opens a database to it, `url` connects to one."""

    user: str
    password: str
    admin_url: str

    def url(self, database: str) -> str:
        return with_account(self.admin_url, self.user, self.password, database)

    async def grant(self, database: str) -> None:
        conn = await asyncmy.connect(**mysql_connect_args(self.admin_url))
        try:
            async with conn.cursor() as cur:
                await cur.execute(f"GRANT SELECT, SHOW VIEW ON `{database}`.* TO '{self.user}'@'%'")
        finally:
            conn.close()


@pytest.fixture(scope="session")
async def my_reader(databases: Databases) -> AsyncIterator[MysqlReader]:
    """A MariaDB reader account of this test session (unique name), dropped at the end."""
    user, password = f"dbg_reader_{uuid.uuid4().hex[:10]}", secrets.token_hex(12)
    conn = await asyncmy.connect(**mysql_connect_args(databases.mysql))
    try:
        async with conn.cursor() as cur:
            await cur.execute(f"CREATE USER '{user}'@'%' IDENTIFIED BY '{password}'")
        yield MysqlReader(user, password, databases.mysql)
    finally:
        async with conn.cursor() as cur:
            await cur.execute(f"DROP USER IF EXISTS '{user}'@'%'")
        conn.close()


@dataclass
class System:
    """A gateway, a session and a query service on one NATS, under a subject prefix of their own."""

    nats_url: str
    redis_url: str | None
    prefix: str
    gateway_port: int
    env: dict[str, str]
    services: dict[str, Service] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.gateway_port}"

    def service_env(self, name: str, **extra: str) -> dict[str, str]:
        env = dict(self.env)
        env["OPS_PORT"] = str(free_port())
        if name == "gateway":
            env["GATEWAY_PORT"] = str(self.gateway_port)
        env.update(extra)
        return service_env(**env)

    def start(self, name: str, **extra: str) -> Service:
        svc = Service(name, self.service_env(name, **extra)).start()
        self.services[name] = svc
        return svc

    def start_all(self, names: tuple[str, ...]) -> None:
        """Start the services side by side (none waits for another to be up), then wait until each is ready."""
        launched = []
        for name in names:
            svc = Service(name, self.service_env(name)).launch()
            self.services[name] = svc
            launched.append(svc)
        for svc in launched:
            svc.ready()

    def restart(self, name: str) -> Service:
        old = self.services[name]
        assert old.stop() == 0, f"{name} did not exit cleanly on SIGTERM:\n" + "\n".join(old.lines[-30:])
        svc = Service(name, old.env or {}).start()
        self.services[name] = svc
        return svc

    def stop(self) -> dict[str, int]:
        return {name: svc.stop() for name, svc in reversed(list(self.services.items()))}


SystemFactory = Callable[..., System]


@pytest.fixture
def make_system(infra: Infra) -> Iterator[SystemFactory]:
    """Build systems for one test; every one is stopped with SIGTERM afterwards and must exit 0."""
    built: list[System] = []

    def build(*, nats_url: str | None = None, redis_url: str | None = "default", start: tuple[str, ...] = ("session", "query", "gateway"), **env: str) -> System:
        prefix = f"t{uuid.uuid4().hex[:10]}"
        redis = infra.redis_url if redis_url == "default" else redis_url
        base = {"NATS_URL": nats_url or infra.nats_url, "NATS_SUBJECT_PREFIX": prefix, "AUTH_MODE": "dev", "SESSION_KV_BUCKET": f"sessions_{prefix}"}
        if redis:
            base["REDIS_URL"] = redis
        base.update(env)
        system = System(base["NATS_URL"], redis, prefix, free_port(), base)
        built.append(system)
        system.start_all(start)
        return system

    yield build
    failures = []
    for system in built:
        for name, code in system.stop().items():
            if code != 0:
                failures.append(f"{name} exited {code}")
    assert not failures, f"services did not stop cleanly: {failures}"


@contextmanager
def running_system(infra: Infra, tag: str, start: tuple[str, ...] = ("session", "query", "gateway"), **env: str) -> Iterator[System]:
    """A system on the shared NATS and Redis under a subject prefix of its own (`tag` + uuid), in dev auth mode.

    `env` adds to or overrides its environment. Afterwards every service is stopped with SIGTERM and must exit 0.
    """
    prefix = f"{tag}{uuid.uuid4().hex[:10]}"
    base = {"NATS_URL": infra.nats_url, "NATS_SUBJECT_PREFIX": prefix, "AUTH_MODE": "dev", "REDIS_URL": infra.redis_url, "SESSION_KV_BUCKET": f"sessions_{prefix}"}
    system = System(infra.nats_url, infra.redis_url, prefix, free_port(), base | env)
    try:
        system.start_all(start)
        yield system
    finally:
        codes = system.stop()
    assert all(code == 0 for code in codes.values()), f"services did not stop cleanly: {codes}"


@dataclass
class InProcess:
    """Session and query services running in this test process, by their own factories, under one subject prefix."""

    prefix: str
    env: dict[str, str]
    session: SessionService | None = None
    query: QueryService | None = None

    @property
    def subjects(self) -> Subjects:
        return Subjects(self.prefix)


@asynccontextmanager
async def inprocess_services(infra: Infra, start: tuple[str, ...] = ("session", "query"), **env: str) -> AsyncIterator[InProcess]:
    """What `running_system` starts as processes, in this process (no ops port): for tests whose subject is not a process.

    `env` adds to or overrides the environment; on exit each service drains and closes.
    """
    prefix = f"i{uuid.uuid4().hex[:10]}"
    base = {"NATS_URL": infra.nats_url, "NATS_SUBJECT_PREFIX": prefix, "AUTH_MODE": "dev", "REDIS_URL": infra.redis_url, "SESSION_KV_BUCKET": f"sessions_{prefix}", "OPS_PORT": "0"} | env
    async with AsyncExitStack() as stack:
        running = InProcess(prefix, base)
        if "session" in start:
            running.session = await stack.enter_async_context(create_session_service(SessionConfig.from_env(base)))
        if "query" in start:
            running.query = await stack.enter_async_context(create_query_service(QueryConfig.from_env(base)))
        yield running


InProcessFactory = Callable[..., Awaitable[InProcess]]


@pytest.fixture
async def start_inprocess(infra: Infra) -> AsyncIterator[InProcessFactory]:
    """`await start_inprocess(("query",), **env)`: services in this process, stopped at the end of the test."""
    async with AsyncExitStack() as stack:

        async def start(services: tuple[str, ...] = ("session", "query"), **env: str) -> InProcess:
            return await stack.enter_async_context(inprocess_services(infra, services, **env))

        yield start


@pytest.fixture
async def nc(infra: Infra) -> AsyncIterator[NATS]:
    """A NATS client of the test's own on the shared NATS."""
    client = await nats.connect(infra.nats_url)
    yield client
    await client.close()


@pytest.fixture(scope="module")
def system(infra: Infra) -> Iterator[System]:
    """One running system shared by the tests of a module that do not break anything."""
    with running_system(infra, "m") as system:
        yield system


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    """A private redis-server for a test that kills it or counts its commands."""
    server = RedisServer().start()
    yield server
    server.cleanup()


@pytest.fixture
def nats_server() -> Iterator[NatsServer]:
    """A private nats-server (JetStream on) for a test that restarts it."""
    server = NatsServer().start()
    yield server
    server.cleanup()
