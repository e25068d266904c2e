"""Read-only database accounts for tests: a PostgreSQL role and a MariaDB user made for one test, dropped after.

Each gets a unique name and a password, may only read (USAGE on its own schema, SELECT on its
own database), and is yielded as the URL a query service would be configured with.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from urllib.parse import urlsplit, urlunsplit

import asyncmy
import asyncpg


def with_credentials(url: str, user: str, password: str, database: str | None = None) -> str:
    parts = urlsplit(url)
    parts = parts._replace(netloc=f"{user}:{password}@{parts.hostname}:{parts.port}")
    if database is not None:
        parts = parts._replace(path=f"/{database}")
    return urlunsplit(parts)


@asynccontextmanager
async def postgres_reader(admin_url: str, setup: str = "") -> AsyncIterator[tuple[str, str]]:
    """(URL, name): a LOGIN role with USAGE on a schema of the same name; `setup` runs as admin, `{s}` naming the schema."""
    name = f"qr_{uuid.uuid4().hex[:10]}"
    password = uuid.uuid4().hex
    admin = await asyncpg.connect(admin_url)
    try:
        await admin.execute(f"CREATE ROLE {name} LOGIN PASSWORD '{password}'; CREATE SCHEMA {name}; {setup.format(s=name)}")
        await admin.execute(f"GRANT USAGE ON SCHEMA {name} TO {name}; GRANT SELECT ON ALL TABLES IN SCHEMA {name} TO {name}")
        yield with_credentials(admin_url, name, password), name
    finally:
        # The role's own sessions end first, or it cannot be dropped.
        await admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = $1", name)
        await admin.execute(f"DROP SCHEMA IF EXISTS {name} CASCADE")
        await admin.execute(f"DROP ROLE IF EXISTS {name}")
        await admin.close()


@asynccontextmanager
async def mariadb_reader(admin_url: str, setup: tuple[str, ...] = ()) -> AsyncIterator[tuple[str, str]]:
    """(URL, name): a user with SELECT on a database of the same name; `setup` statements run as admin in it."""
    name = f"qr_{uuid.uuid4().hex[:10]}"
    password = uuid.uuid4().hex
    url = urlsplit(admin_url)
    admin = await asyncmy.connect(host=url.hostname, port=url.port or 3306, user=url.username, password=url.password or "")
    try:
        async with admin.cursor() as cur:
            await cur.execute(f"CREATE DATABASE {name}")
            await cur.execute(f"USE {name}")
            for statement in setup:
                await cur.execute(statement)
            await cur.execute("COMMIT")
            await cur.execute(f"CREATE USER '{name}'@'%' IDENTIFIED BY '{password}'")
            await cur.execute(f"GRANT SELECT ON {name}.* TO '{name}'@'%'")
        yield with_credentials(admin_url, name, password, name), name
    finally:
        async with admin.cursor() as cur:
            await cur.execute(f"DROP USER IF EXISTS '{name}'@'%'")
            await cur.execute(f"DROP DATABASE IF EXISTS {name}")
        admin.close()
