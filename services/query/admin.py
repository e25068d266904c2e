"""Operator CLI of users' connections in the query service (it alone holds CONNECTIONS_KEYS).

    python -m services.query.admin rotate-keys     # re-seal every password with the first key

Reads NATS_URL, NATS_SUBJECT_PREFIX and CONNECTIONS_KEYS like the service; the records are
read and written through the session service. Safe to repeat: records already sealed with
the first key are left alone. Exit code 1 when some record could not be re-sealed (its key
is not in CONNECTIONS_KEYS), 2 on a configuration error.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections import Counter
from typing import TextIO

import msgspec
from nats.aio.client import Client as NATS

from services.query.config import QueryConfig
from services.query.connections.seal import VARIABLE, Keyring
from shared.bus import close, connect, request
from shared.config import environ, read_one
from shared.contracts import ConnectionPut, ConnectionRecords, ConnectionScan, Ok, Subjects
from shared.errors import CONFLICT, ConfigError, ServiceError

TIMEOUT_S = 10.0


async def rotate(nc: NATS, subjects: Subjects, keys: Keyring, out: TextIO) -> int:
    """Re-seal with the first key every record sealed with another one; print the counts."""
    counts: Counter[str] = Counter()
    missing: Counter[str] = Counter()
    cursor: str | None = "0"
    while cursor is not None:
        page = await request(nc, subjects.session_connection("scan"), ConnectionScan(cursor=cursor), timeout=TIMEOUT_S, reply=ConnectionRecords)
        for record in page.records:
            if record.key_id == keys.current:
                counts["current"] += 1
                continue
            try:
                password = keys.open(record.key_id, record.sealed, record.id, record.owner)
            except ServiceError:
                missing[record.key_id] += 1
                continue
            key_id, sealed = keys.seal(password, record.id, record.owner)
            del password
            updated = msgspec.structs.replace(record, key_id=key_id, sealed=sealed)
            try:
                await request(nc, subjects.session_connection("put"), ConnectionPut(updated, create=False, expect_sealed=record.sealed), timeout=TIMEOUT_S, reply=Ok)
            except ServiceError as exc:
                if exc.code not in (CONFLICT, "not_found"):
                    raise
                counts["changed_meanwhile"] += 1  # re-sealed by its owner's change, or deleted: nothing to do
                continue
            counts["resealed"] += 1
        cursor = page.cursor
    failed = sum(missing.values())
    print(f"resealed {counts['resealed']}, already current {counts['current']}, changed meanwhile {counts['changed_meanwhile']}, failed {failed} (key {keys.current!r} seals)", file=out)
    for key_id, count in sorted(missing.items()):
        print(f"  {count} record(s) sealed with key {key_id!r}, which is not in {VARIABLE}: add it back (after the first key) and run again", file=out)
    return 1 if failed else 0


async def amain(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m services.query.admin", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("rotate-keys", help=f"re-seal every stored password with the first key of {VARIABLE}")
    parser.parse_args(argv)
    env = environ()
    try:
        nats_url, prefix = read_one(QueryConfig, "nats_url", env), read_one(QueryConfig, "subject_prefix", env)
        keys = read_one(QueryConfig, "connections_keys", env)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if keys is None:
        print(f"error: set {VARIABLE} (the new key first, then the old ones)", file=sys.stderr)
        return 2
    nc = await connect(nats_url, "query-admin", connect_deadline_s=10.0)
    try:
        return await rotate(nc, Subjects(prefix), keys, sys.stdout)
    except ServiceError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return 3
    finally:
        await close(nc)


if __name__ == "__main__":
    sys.exit(asyncio.run(amain()))
