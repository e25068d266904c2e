"""Somewhere for the session's reader role/account (tests/conftest.py) to read: a schema or database made for one test module.

Each has a unique name, is opened to the reader with `grant`, and is dropped at the end.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import asyncmy
import asyncpg

from tests.conftest import MysqlReader, PostgresReader, mysql_connect_args


@asynccontextmanager
async def postgres_schema(reader: PostgresReader, setup: str = "") -> AsyncIterator[str]:
    """A schema the reader may use; `setup` runs as admin first, `{s}` naming the schema."""
    name = f"qr_{uuid.uuid4().hex[:10]}"
    admin = await asyncpg.connect(reader.admin_url)
    try:
        await admin.execute(f"CREATE SCHEMA {name}; {setup.format(s=name)}")
        await reader.grant(name)
        yield name
    finally:
        await admin.execute(f"DROP SCHEMA IF EXISTS {name} CASCADE")
        await admin.close()


@asynccontextmanager
async def mariadb_database(reader: MysqlReader, setup: tuple[str, ...] = ()) -> AsyncIterator[str]:
    """A database the reader may SELECT from, as its URL; `setup` statements run in it as admin first."""
    name = f"qr_{uuid.uuid4().hex[:10]}"
    admin = await asyncmy.connect(**mysql_connect_args(reader.admin_url))
    try:
        async with admin.cursor() as cur:
            await cur.execute(f"CREATE DATABASE {name}")
            await cur.execute(f"USE {name}")
            for statement in setup:
                await cur.execute(statement)
        await reader.grant(name)
        yield reader.url(name)
    finally:
        async with admin.cursor() as cur:
            await cur.execute(f"DROP DATABASE IF EXISTS {name}")
        admin.close()
