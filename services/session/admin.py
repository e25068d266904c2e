"""Operator CLI for the sessions in Redis: list, count, show and delete, with SCAN (never KEYS).

    python -m services.session.admin list --limit 20
    python -m services.session.admin count
    python -m services.session.admin show SID
    python -m services.session.admin delete SID
    python -m services.session.admin delete --prefix P
    python -m services.session.admin delete --user UID    # sign a user out everywhere
    python -m services.session.admin conversations list --user UID
    python -m services.session.admin connections list --user UID   # a user's own databases (never a password)
    python -m services.session.admin erase --user UID     # every conversation, connection and session of a user (audited, and the connections' pools closed, when NATS_URL is set)
    python -m services.session.admin audit --user EMAIL --source S --since 2026-01-01 --format jsonl
    python -m services.session.admin migrate-keys         # history, quota, connection and example keys to their one-slot names
    python -m services.session.admin examples list|approve|delete|verify   # verified examples, over NATS

Reads UPSTASH_REDIS_URL / REDIS_URL, REDIS_TLS and SESSION_KEY_PREFIX like the service; `audit`
reads the audit trail (docs/access.md) from NATS_URL, NATS_SUBJECT_PREFIX and AUDIT_STREAM instead.
Session ids are masked unless --show-sids is given.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import re
import sys
import time
import uuid
from collections.abc import Iterator
from itertools import islice
from typing import Any

import msgpack
import msgspec
import nats
from redis import Redis
from redis.cluster import RedisCluster
from redis.exceptions import RedisError, ResponseError

from services.session import examples_admin
from services.session.config import key_prefix, redis_target
from services.session.connections import decode_records, hash_key
from services.session.keys import (
    EXAMPLES_SOURCES_KEY,
    LEGACY_CONNECTIONS_PREFIX,
    LEGACY_EXAMPLES_PREFIX,
    LEGACY_EXAMPLES_SOURCES_KEY,
    LIMIT_PREFIX,
    connections_key,
    examples_key,
    index_key,
    limit_key,
    list_key,
    titles_key,
)
from services.session.redis_store import WRITEBACK_GUARD_PREFIX
from shared.audit import AuditFilter, as_record, parse_since, read_events, read_stream
from shared.config import ServiceSettings, environ, read_one
from shared.contracts import AUDIT_ERASURE, CONVERSATION_ID_PATTERN, AuditErasure, AuditEvent, ConnectionRef, Subjects
from shared.errors import ConfigError
from shared.logging import mask
from shared.users import user_id

SCAN_COUNT = 500
_GLOB_SPECIAL = re.compile(r"([*?\[\]\\])")
_CONVERSATION_ID = re.compile(CONVERSATION_ID_PATTERN)


def glob_escape(text: str) -> str:
    return _GLOB_SPECIAL.sub(r"\\\1", text)


class Admin:
    def __init__(self, client: Redis, prefix: str, *, show_sids: bool, out: Any = sys.stdout) -> None:
        self._client = client
        self._prefix = prefix
        self._show_sids = show_sids
        self._out = out

    def _print(self, text: str) -> None:
        print(text, file=self._out)

    def _label(self, sid: str) -> str:
        return sid if self._show_sids else mask(sid)

    def keys(self, sid_prefix: str = "") -> Iterator[bytes]:
        pattern = glob_escape(self._prefix + sid_prefix) + "*"
        for key in self._client.scan_iter(match=pattern, count=SCAN_COUNT):
            if not key.startswith(WRITEBACK_GUARD_PREFIX.encode()):
                yield key

    def _sid(self, key: bytes) -> str:
        return key.decode(errors="replace")[len(self._prefix) :]

    def list(self, limit: int) -> int:
        self._print(f"{'SID':<46} {'TTL_S':>9} {'BYTES':>7}  USER")
        keys = [*islice(self.keys(), limit)]
        for start in range(0, len(keys), 100):
            self._list_batch(keys[start : start + 100])
        return 0

    def _list_batch(self, keys: list[bytes]) -> None:
        pipe = self._client.pipeline(transaction=False)
        for key in keys:
            pipe.get(key)
            pipe.ttl(key)
        results = pipe.execute()
        for i, key in enumerate(keys):
            raw, ttl = results[2 * i], results[2 * i + 1]
            if raw is None:
                continue  # expired between SCAN and GET
            session = _decode(raw)
            user = (user_id(session) or "-") if isinstance(session, dict) else "<undecodable>"
            self._print(f"{self._label(self._sid(key)):<46} {ttl:>9} {len(raw):>7}  {user}")

    def count(self) -> int:
        self._print(str(sum(1 for _ in self.keys())))
        return 0

    def show(self, sid: str) -> int:
        key = self._prefix + sid
        pipe = self._client.pipeline(transaction=False)
        pipe.get(key)
        pipe.ttl(key)
        raw, ttl = pipe.execute()
        if raw is None:
            print(f"no session {self._label(sid)}", file=sys.stderr)
            return 1
        session = _decode(raw)
        body = {"sid": self._label(sid), "ttl_s": ttl, "bytes": len(raw), "user_id": user_id(session) if isinstance(session, dict) else None}
        body["session"] = session if isinstance(session, dict) else "<not a MessagePack map>"
        self._print(json.dumps(body, indent=2, default=_json_default, ensure_ascii=False))
        return 0

    def conversations(self, uid: str) -> int:
        """A user's conversations, newest first: id, last update, messages, title."""
        rows = self._client.zrevrange(index_key(uid), 0, -1, withscores=True)
        titles = self._client.hgetall(titles_key(uid))
        pipe = self._client.pipeline(transaction=False)
        for cid, _ in rows:
            pipe.llen(list_key(uid, cid.decode()))
        counts = pipe.execute() if rows else []
        self._print(f"{'CONVERSATION':<38} {'UPDATED_AT (UTC)':<24} {'MESSAGES':>8}  TITLE")
        for (cid, score), count in zip(rows, counts, strict=True):
            updated = dt.datetime.fromtimestamp(score / 1000, dt.UTC).strftime("%Y-%m-%d %H:%M:%S")
            title = titles.get(cid, b"").decode(errors="replace")
            self._print(f"{cid.decode():<38} {updated:<24} {count:>8}  {title}")
        self._print(f"{len(rows)} conversation{'s' if len(rows) != 1 else ''} of user {uid}")
        return 0

    def connections(self, uid: str) -> int:
        """A user's own database connections, by name: what they reach, never the sealed password."""
        records = sorted(decode_records(self._client.hgetall(hash_key(uid))).values(), key=lambda r: (r.name, r.id))
        self._print(f"{'ID':<18} {'NAME':<24} {'DIALECT':<10} {'KEY':<8} {'CREATED_AT':<21} TARGET")
        for r in records:
            host = f"[{r.host}]" if ":" in r.host else r.host
            self._print(f"{r.id:<18} {r.name:<24} {r.dialect:<10} {r.key_id:<8} {r.created_at:<21} {r.user}@{host}:{r.port}/{r.database} tls={r.tls.mode}")
        self._print(f"{len(records)} connection{'s' if len(records) != 1 else ''} of user {uid}")
        return 0

    def erase(self, uid: str) -> list[str]:
        """Erasure on request: every conversation (lists, index, titles), every connection and every session of `uid`. Idempotent.

        Returns the ids of the connections erased, whose pools the query replicas are then told to close (record_erasure).
        """
        ids = {cid.decode() for cid in self._client.zrange(index_key(uid), 0, -1)}
        # Lists whose index entry is gone too. Ids never hold ':', so another user whose id
        # starts with this one plus ':' is never matched.
        prefix = list_key(uid, "")
        for key in self._client.scan_iter(match=glob_escape(prefix) + "*", count=SCAN_COUNT):
            cid = key.decode(errors="replace")[len(prefix) :]
            if _CONVERSATION_ID.match(cid):
                ids.add(cid)
        connection_ids = sorted(field.decode(errors="replace") for field in self._client.hkeys(hash_key(uid)))
        connections = len(connection_ids)
        keys = [*(list_key(uid, cid) for cid in sorted(ids)), index_key(uid), titles_key(uid), hash_key(uid)]
        for start in range(0, len(keys), SCAN_COUNT):
            self._client.unlink(*keys[start : start + SCAN_COUNT])
        sessions = self._delete_user_sessions(uid)
        self._print(
            f"erased {len(ids)} conversation{'s' if len(ids) != 1 else ''}, {connections} connection{'s' if connections != 1 else ''} "
            f"and {sessions} session{'s' if sessions != 1 else ''} of user {uid}"
        )
        return connection_ids

    def migrate_keys(self) -> int:
        """Move history, quota, connection and example keys from their names before the hash tags to the new ones; safe to repeat.

        A history key already at its new name (written by the service since) wins over the old
        one, which is then dropped. DUMP/RESTORE rather than RENAME: on a Redis Cluster the two
        names may live on different nodes. Connection and example hashes (and the set of
        sources) are merged field by field instead, a field at the new name winning, so a
        record written since the deploy is kept and none written before it is lost.
        """
        moved = {"conversation": 0, "index": 0, "titles": 0, "limit": 0, "connections": 0, "examples": 0}
        for key in self._legacy("conversation:*"):
            uid, _, cid = key.removeprefix("conversation:").rpartition(":")
            if uid and _CONVERSATION_ID.match(cid):
                moved["conversation"] += self._move(key, list_key(uid, cid))
        for key in self._legacy("conversations:*"):
            moved["index"] += self._move(key, index_key(key.removeprefix("conversations:")))
        for key in self._legacy("conversation_titles:*"):
            moved["titles"] += self._move(key, titles_key(key.removeprefix("conversation_titles:")))
        for key in self._legacy(LIMIT_PREFIX + "*"):
            limited, name, index = key.removeprefix(LIMIT_PREFIX).rsplit(":", 2) if key.count(":") >= 3 else ("", "", "")
            if limited and index.isdigit():
                moved["limit"] += self._move_counter(key, limit_key(limited), name, int(index))
        for key in self._legacy(LEGACY_CONNECTIONS_PREFIX + "*"):
            moved["connections"] += self._merge_hash(key, connections_key(key.removeprefix(LEGACY_CONNECTIONS_PREFIX)))
        for key in self._legacy(LEGACY_EXAMPLES_PREFIX + "*"):
            if key == LEGACY_EXAMPLES_SOURCES_KEY:
                moved["examples"] += self._merge_set(key, EXAMPLES_SOURCES_KEY)
            elif self._client.type(key) == b"hash":
                source = key.removeprefix(LEGACY_EXAMPLES_PREFIX)
                self._client.sadd(EXAMPLES_SOURCES_KEY, source)  # first: a run stopped after the merge still lists the source
                moved["examples"] += self._merge_hash(key, examples_key(source))
        self._print(json.dumps({"migrated": moved}))
        return 0

    def _legacy(self, pattern: str) -> list[str]:
        """Keys matching `pattern` that carry no hash tag: the names written before the migration."""
        return sorted(k.decode(errors="replace") for k in self._client.scan_iter(match=pattern, count=SCAN_COUNT) if b"{" not in k)

    def _move(self, old: str, new: str) -> int:
        dumped, pttl = self._client.dump(old), self._client.pttl(old)
        if dumped is None:
            return 0  # gone meanwhile (expired, or moved by a concurrent run)
        try:
            self._client.restore(new, max(pttl, 0), dumped)
        except ResponseError as exc:
            if "BUSYKEY" not in str(exc):
                raise
        self._client.delete(old)
        return 1

    def _merge_hash(self, old: str, new: str) -> int:
        if self._client.type(old) != b"hash":
            return 0  # gone meanwhile, or not one of ours: left alone
        for field, value in self._client.hgetall(old).items():
            self._client.hsetnx(new, field, value)
        self._client.delete(old)
        return 1

    def _merge_set(self, old: str, new: str) -> int:
        if self._client.type(old) != b"set":
            return 0
        members = self._client.smembers(old)
        if members:
            self._client.sadd(new, *members)
        self._client.delete(old)
        return 1

    def _move_counter(self, old: str, new: str, name: str, index: int) -> int:
        count, ttl = self._client.get(old), self._client.ttl(old)
        if count is None:
            return 0
        current = self._client.hget(new, name)
        if current is None or int(current.split(b":")[0]) < index:
            self._client.hset(new, name, f"{index}:{int(count)}")
        if ttl > 0 and self._client.ttl(new) < ttl:
            self._client.expire(new, ttl)
        self._client.delete(old)
        return 1

    def delete_user(self, uid: str) -> int:
        """Delete every session whose user id is `uid`: SCAN, GET in batches, decode, delete the matches."""
        total = self._delete_user_sessions(uid)
        self._print(f"deleted {total} session{'s' if total != 1 else ''} of user {uid}")
        return 0

    def _delete_user_sessions(self, uid: str) -> int:
        total = 0
        batch: list[bytes] = []
        for key in self.keys():
            batch.append(key)
            if len(batch) >= SCAN_COUNT:
                total += self._delete_user_batch(uid, batch)
                batch = []
        if batch:
            total += self._delete_user_batch(uid, batch)
        return total

    def _delete_user_batch(self, uid: str, keys: list[bytes]) -> int:
        matches = []
        values = self._client.mget_nonatomic(keys) if isinstance(self._client, RedisCluster) else self._client.mget(keys)
        for key, raw in zip(keys, values, strict=True):
            session = _decode(raw) if raw is not None else None
            if isinstance(session, dict) and user_id(session) == uid:
                matches.append(key)
        if not matches:
            return 0
        # Only keys that still exist count; a session that expired meanwhile is not reported.
        pipe = self._client.pipeline(transaction=False)
        for key in matches:
            pipe.delete(key)
        deleted = 0
        for key, gone in zip(matches, pipe.execute(), strict=True):
            if gone:
                deleted += 1
                self._print(f"deleted {self._label(self._sid(key))}")
        return deleted

    def delete(self, sid: str | None, sid_prefix: str | None) -> int:
        if sid is not None:
            deleted = self._client.delete(self._prefix + sid)
            self._print(f"deleted {deleted}")
            return 0 if deleted else 1
        assert sid_prefix is not None
        total = 0
        batch: list[bytes] = []
        for key in self.keys(sid_prefix):
            batch.append(key)
            if len(batch) >= SCAN_COUNT:
                total += self._client.unlink(*batch)
                batch = []
        if batch:
            total += self._client.unlink(*batch)
        self._print(f"deleted {total}")
        return 0


def _decode(raw: bytes) -> Any:
    try:
        return msgpack.unpackb(raw, raw=False, strict_map_key=False)
    except Exception:
        return None


def _json_default(value: Any) -> Any:
    if isinstance(value, bytes):
        return {"$bytes": value.hex()}
    return repr(value)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m services.session.admin", description="Inspect and delete sessions in Redis (uses SCAN, never KEYS).")
    p.add_argument("--show-sids", action="store_true", help="print session ids in full (they are credentials: handle with care)")
    p.add_argument("--redis-url", help="override UPSTASH_REDIS_URL / REDIS_URL")
    sub = p.add_subparsers(dest="command", required=True)
    ls = sub.add_parser("list", help="list sessions with TTL, size and user id")
    ls.add_argument("--limit", type=int, default=20)
    sub.add_parser("count", help="count sessions")
    show = sub.add_parser("show", help="print one session as JSON")
    show.add_argument("sid")
    delete = sub.add_parser("delete", help="delete one session, every session whose sid starts with a prefix, or every session of a user")
    group = delete.add_mutually_exclusive_group(required=True)
    group.add_argument("sid", nargs="?")
    group.add_argument("--prefix", dest="sid_prefix", help="sid prefix ('' deletes every session)")
    group.add_argument("--user", dest="uid", help="a user id (the token's sub): sign that user out everywhere")
    conversations = sub.add_parser("conversations", help="a user's conversation history")
    conversations_sub = conversations.add_subparsers(dest="conversations_command", required=True)
    conversations_list = conversations_sub.add_parser("list", help="list a user's conversations, newest first")
    conversations_list.add_argument("--user", dest="uid", required=True)
    connections = sub.add_parser("connections", help="a user's own database connections")
    connections_sub = connections.add_subparsers(dest="connections_command", required=True)
    connections_list = connections_sub.add_parser("list", help="list a user's connections (never a password)")
    connections_list.add_argument("--user", dest="uid", required=True)
    erase = sub.add_parser("erase", help="delete every conversation, connection and session of a user (erasure on request); safe to repeat")
    erase.add_argument("--user", dest="uid", required=True)
    sub.add_parser("migrate-keys", help="move history and quota keys to their Redis Cluster names ({u:<uid>} hash tags); safe to repeat")
    examples_admin.add_parser(sub)
    audit = sub.add_parser("audit", help="the audit trail (JetStream, docs/access.md): the newest matching events, oldest first")
    audit.add_argument("--user", help="a user id or email")
    audit.add_argument("--source")
    audit.add_argument("--kind", choices=("query", "sign_in", "sign_out", "connection", "erasure"))
    audit.add_argument("--since", help="an ISO 8601 time (UTC unless it says otherwise) or seconds since the epoch")
    audit.add_argument("--limit", type=int, default=1000)
    audit.add_argument("--format", choices=("jsonl", "table"), default="table")
    return p


def _nats(env: dict[str, str]) -> tuple[str, str]:
    """NATS_URL and NATS_SUBJECT_PREFIX, read as every service reads them."""
    return read_one(ServiceSettings, "nats_url", env), read_one(ServiceSettings, "subject_prefix", env)


async def _read_audit(env: dict[str, str], wanted: AuditFilter) -> list[AuditEvent]:
    nats_url, prefix = _nats(env)
    nc = await nats.connect(nats_url, connect_timeout=5, max_reconnect_attempts=0)
    try:
        return await read_events(nc, read_stream(env, prefix), Subjects(prefix), wanted)
    finally:
        await nc.close()


async def _publish_erasure(env: dict[str, str], uid: str, connection_ids: list[str]) -> None:
    nats_url, prefix = _nats(env)
    subjects = Subjects(prefix)
    nc = await nats.connect(nats_url, connect_timeout=5, max_reconnect_attempts=0)
    try:
        # As a deletion through the API does (services/session/connections.py): every query replica closes the pools it holds.
        for connection_id in connection_ids:
            await nc.publish(subjects.query_connection_closed, msgspec.msgpack.encode(ConnectionRef(uid, connection_id)))
        await nc.flush(timeout=5)
        event = AuditErasure(id=uuid.uuid4().hex, time=time.time(), user_id=uid, by="admin erase")
        await nc.jetstream().publish(subjects.audit(AUDIT_ERASURE), msgspec.msgpack.encode(event), timeout=5, headers={"Nats-Msg-Id": event.id})
    finally:
        await nc.close()


def record_erasure(env: dict[str, str], uid: str, connection_ids: list[str]) -> None:
    """When NATS_URL is set: close the erased connections' pools on every query replica, and record the erasure's audit
    event (docs/access.md). A failure is said; the erasure stands."""
    if not env.get("NATS_URL"):
        pools = f"; query replicas close the pools of its {len(connection_ids)} connection(s) only once idle (QUERY_POOL_IDLE_S)" if connection_ids else ""
        print(f"note: NATS_URL is not set, so the erasure is not in the audit trail{pools}", file=sys.stderr)
        return
    try:
        asyncio.run(_publish_erasure(env, uid, connection_ids))
    except Exception as exc:
        print(f"warning: the erasure is done, but its connections' pools may stay open until idle and it is not in the audit trail: {type(exc).__name__}: {exc}", file=sys.stderr)


def audit(args: argparse.Namespace, env: dict[str, str], out: Any = sys.stdout) -> int:
    """`admin audit`: print the matching events as JSON lines or a table."""
    try:
        since = parse_since(args.since) if args.since else None
    except ValueError as exc:
        print(f"error: --since: {exc}", file=sys.stderr)
        return 2
    wanted = AuditFilter(user=args.user, source=args.source, kind=args.kind, since=since, limit=max(1, args.limit))
    try:
        found = asyncio.run(_read_audit(env, wanted))
    except Exception as exc:  # NATS unreachable, no such stream: one clear line
        print(f"error: cannot read the audit trail: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 3
    for event in found:
        record = as_record(event)
        if args.format == "jsonl":
            out.write(json.dumps(record, ensure_ascii=False) + "\n")
        else:
            when = dt.datetime.fromtimestamp(event.time, dt.UTC).strftime("%Y-%m-%d %H:%M:%S")
            what = f"{record.get('source', '')} {record.get('outcome', '')} {str(record.get('sql', '')).replace(chr(10), ' ')[:80]}".strip()
            out.write(f"{when}  {record['kind']:<10} {event.email or event.user_id:<30} {what}\n")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    env = dict(environ())
    if args.command == "examples":
        return examples_admin.main(args, env)
    if args.command == "audit":
        return audit(args, env)
    if args.redis_url:
        env["REDIS_URL"] = args.redis_url
        env.pop("UPSTASH_REDIS_URL", None)
    try:
        target = redis_target(env)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if target is None:
        print("error: set REDIS_URL or UPSTASH_REDIS_URL (or pass --redis-url)", file=sys.stderr)
        return 2
    client: Redis = (RedisCluster if target.cluster else Redis).from_url(target.url, socket_connect_timeout=5, socket_timeout=10)  # type: ignore[assignment]
    admin = Admin(client, key_prefix(env), show_sids=args.show_sids)
    try:
        if args.command == "list":
            return admin.list(max(args.limit, 0))
        if args.command == "count":
            return admin.count()
        if args.command == "show":
            return admin.show(args.sid)
        if args.command == "migrate-keys":
            return admin.migrate_keys()
        if args.command in ("conversations", "connections", "erase"):
            if not args.uid.strip():
                print("error: --user needs a user id", file=sys.stderr)
                return 2
            if args.command == "conversations":
                return admin.conversations(args.uid.strip())
            if args.command == "connections":
                return admin.connections(args.uid.strip())
            if args.command == "erase":
                erased = admin.erase(args.uid.strip())
                record_erasure(env, args.uid.strip(), erased)
                return 0
        if args.uid is not None:
            if not args.uid.strip():
                print("error: --user needs a user id", file=sys.stderr)
                return 2
            return admin.delete_user(args.uid.strip())
        return admin.delete(args.sid, args.sid_prefix)
    except RedisError as exc:
        print(f"error: Redis at {target.display}: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 3
    finally:
        client.close()


if __name__ == "__main__":
    sys.exit(main())
