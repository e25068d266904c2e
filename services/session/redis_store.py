"""Sessions in Redis, one command per call, in the exact bytes Flask-Session 0.8 reads and writes.

A session is a plain MessagePack map under `<SESSION_KEY_PREFIX><sid>` with a TTL of
SESSION_LIFETIME. Field-level patches run as one Lua script (patch.lua, loaded with redis-py's
`register_script`) that splices the MessagePack bytes rather than decoding them with cmsgpack:
untouched fields keep their exact bytes (bin stays bin, a float stays a float, an empty map
stays a map), big integers keep their precision, and the script needs no Lua library that
Redis-compatible services may lack.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import redis.exceptions as rex
from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.connection import Connection
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.commands.core import AsyncScript

from services.session.config import RedisTarget
from services.session.keys import WRITEBACK_GUARD_PREFIX, guard_key
from services.session.metrics import REDIS_COMMANDS

WRITEBACK_GUARD_TTL_S = 60
CLUSTER_MAX_CONNECTIONS_PER_NODE = 1024
PROBE_KEY = WRITEBACK_GUARD_PREFIX + "probe"
"""Written while Redis is degraded to learn whether it takes writes again (same ACL key pattern as the guards)."""

PATCH_LUA = Path(__file__).with_name("patch.lua").read_text()
"""The MessagePack-splicing patch script (patch.lua), tested on its own in tests/test_session_patch_lua.py."""

_ROTATE_LUA = r"""
-- Login rotation: store the new session and delete the old one in one call.
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
return redis.call('DEL', KEYS[2])
"""

_WRITEBACK_LUA = r"""
-- Write back one session changed during an outage, unless a newer version of it was already written back.
-- KEYS[1]: session key; KEYS[2]: guard key. ARGV: version (20 digits), lifetime, guard TTL, '1' + value or '0' to delete.
local seen = redis.call('GET', KEYS[2])
if seen and seen >= ARGV[1] then return 0 end
if ARGV[4] == '1' then
  redis.call('SET', KEYS[1], ARGV[5], 'EX', ARGV[2])
else
  redis.call('DEL', KEYS[1])
end
redis.call('SET', KEYS[2], ARGV[1], 'EX', ARGV[3])
return 1
"""


class RedisUnavailable(Exception):
    """Raised when Redis cannot be reached or refuses service for now; the caller falls back."""

    readable = False
    """True when Redis still answers reads (it refuses only writes: OOM, READONLY)."""


class RedisWritesRefused(RedisUnavailable):
    """Raised when Redis answers but refuses writes (OOM under noeviction, READONLY replica)."""

    readable = True


class RedisRefused(RedisUnavailable):
    """Raised when Redis refuses this client itself (credentials, ACL, protected mode); the caller falls back."""

    def __init__(self, cause: str, detail: str) -> None:
        super().__init__(f"{cause}: {detail}")
        self.cause = cause
        self.detail = detail

    @property
    def hint(self) -> str:
        return _REFUSAL_HINTS[self.cause]


class CorruptSession(Exception):
    """Raised when the value under a session key is not a MessagePack map (or not a string at all)."""


# Replies that mean "Redis cannot serve right now" rather than "this command is wrong".
# redis-py strips the code of the replies it knows (OOM, READONLY, ...) from the message and
# keeps it in `status_code`; other clients and proxies may leave it in the text.
_WRITE_REFUSALS = frozenset({"OOM", "READONLY"})
_OUTAGE_CODES = frozenset({"MASTERDOWN", "LOADING", "CLUSTERDOWN", "TRYAGAIN", "BUSY"})
_QUOTA_REPLIES = ("max requests limit", "max daily request limit", "max concurrent connections")
_REFUSAL_HINTS = {
    "authentication": "Redis refused the credentials: check the user and password in REDIS_URL / UPSTASH_REDIS_URL",
    "permission": "the Redis ACL user lacks a command or key this service needs (GETEX, GET, SET, DEL, EVALSHA, SCRIPT LOAD, PING on the session and dbgenie:session-writeback:* keys)",
    "protected_mode": "Redis is in protected mode: set a password (requirepass or an ACL user) and put it in REDIS_URL, or bind Redis to a private address",
}


def _code(exc: BaseException) -> str:
    """The Redis error code of a reply (OOM, NOPERM, WRONGTYPE...), or '' when there is none."""
    code = getattr(exc, "status_code", None)
    if isinstance(code, str) and code:
        return code.upper()
    first = str(exc).split(" ", 1)[0]
    return first if first.isupper() else ""


def refusal_cause(exc: BaseException) -> str | None:
    """authentication, permission or protected_mode when Redis refuses this client; else None."""
    code = _code(exc)
    if isinstance(exc, rex.AuthenticationError) or code in ("NOAUTH", "WRONGPASS"):
        return "authentication"
    if isinstance(exc, rex.NoPermissionError) or code == "NOPERM":
        return "permission"
    if code == "DENIED" or "protected mode" in str(exc):
        return "protected_mode"
    return None


def is_outage(exc: BaseException) -> bool:
    if isinstance(exc, rex.ResponseError):
        return _code(exc) in _WRITE_REFUSALS | _OUTAGE_CODES or any(q in str(exc) for q in _QUOTA_REPLIES)
    return isinstance(exc, (rex.ConnectionError, rex.TimeoutError, OSError, TimeoutError))


def classify(exc: BaseException) -> Exception | None:
    """The exception a store call raises for a Redis failure, or None for one the caller must see."""
    cause = refusal_cause(exc)
    if cause is not None:
        return RedisRefused(cause, describe(exc))
    if _code(exc) == "WRONGTYPE":
        return CorruptSession("the key holds another Redis type (WRONGTYPE)")
    if isinstance(exc, rex.ResponseError) and _code(exc) in _WRITE_REFUSALS:
        return RedisWritesRefused(describe(exc))
    if is_outage(exc):
        return RedisUnavailable(describe(exc))
    return None


def describe(exc: BaseException) -> str:
    text = str(exc).strip()
    code = _code(exc)
    if code and not text.startswith(code):
        text = f"{code} {text}"
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def create_client(target: RedisTarget, *, max_connections: int = 64) -> Redis:
    """A client tuned for a remote Redis (Upstash): short timeouts, one quick retry, health checks.

    A dead or unreachable Redis is noticed within about a second, so calls switch to the
    fallback store quickly instead of waiting on redis-py's default backoff. For a Redis
    Cluster it is redis-py's cluster client (typed as Redis: it takes the same commands).
    """
    # Two attempts (one retry) of 0.45 s each: a Redis that stops answering is left within a second.
    options: dict[str, Any] = {
        "socket_connect_timeout": 0.45,
        "socket_timeout": 0.45,
        "socket_keepalive": True,
        "health_check_interval": 10,
        "retry": Retry(ExponentialBackoff(cap=0.05, base=0.01), 1),
        "client_name": "dbgenie-session",
    }
    if target.cluster:
        cluster = RedisCluster.from_url(
            target.url,
            # redis-py's cluster pool never waits for a free connection: past its bound a call fails
            # (and would read as an outage), so each node's pool is bounded only against a runaway.
            max_connections=CLUSTER_MAX_CONNECTIONS_PER_NODE,
            require_full_coverage=False,  # keep serving the slots still covered while a master fails over
            **options,
        )
        return cluster  # type: ignore[return-value]
    pool = BlockingConnectionPool.from_url(target.url, max_connections=max_connections, timeout=1.0, **options)  # timeout: waiting for a free connection
    return Redis(connection_pool=pool)


async def send_once(client: Redis, *args: Any) -> Any:
    """Run one command that must not run twice (it counts or appends): only what comes before sending it is retried.

    redis-py retries a command after a timeout or a lost connection, yet a command whose reply
    was late may have run: a second run would count or append again. Here the pool connects and
    checks the connection (with the client's one quick retry) before a byte of the command is
    written; the command itself is written and read once, and any failure is raised (the outage
    router then serves the call from the fallback). A connection that failed mid-command is
    closed, so a late reply is never read as another command's.
    """
    if isinstance(client, RedisCluster):
        return await _send_once_to_node(client, *args)
    pool = client.connection_pool
    conn = await pool.get_connection()
    try:
        await conn.send_command(*args)
        return await client.parse_response(conn, args[0])
    except rex.ResponseError:
        raise  # a whole reply was read: the connection is in step
    except BaseException:
        await conn.disconnect()
        raise
    finally:
        await pool.release(conn)


async def _send_once_to_node(client: RedisCluster, *args: Any) -> Any:
    """send_once on a Redis Cluster: to the master of the first key's slot (an EVALSHA's KEYS are all in one slot).

    A MOVED or ASK reply (a failover or resharding) is raised like any error, never followed:
    the script may not run twice. The client then reads the slots afresh, so the next call
    goes to the new master.
    """
    await client.initialize()  # the slots are read at the first command; done once
    command = str(args[0]).upper()
    key = args[3] if command in ("EVALSHA", "EVAL") else args[1]
    node = client.get_node_from_key(key)
    conn = node.acquire_connection()
    try:
        await conn.connect()  # with the client's own quick retry, before a byte of the command is written
        await conn.send_command(*args)
        return await node.parse_response(conn, command)
    except (rex.MovedError, rex.AskError):
        await _read_slots_again(client)
        raise
    except rex.ResponseError:
        raise  # a whole reply was read: the connection is in step
    except BaseException:
        await conn.disconnect()
        await _read_slots_again(client)
        raise
    finally:
        node.release(conn)


async def _read_slots_again(client: RedisCluster) -> None:
    """Best effort: learn the cluster's masters again after a node failed or a slot moved."""
    try:
        await client.nodes_manager.initialize()
    except (rex.RedisError, OSError, TimeoutError):
        pass  # no node answers yet: the next failing call reads them again


def _classified(replies: list[Any]) -> list[bytes | None | Exception]:
    """A batch's replies, each error one as a store call would raise it for that command alone."""
    return [(classify(reply) or reply) if isinstance(reply, Exception) else reply for reply in replies]


def _version_arg(version: int) -> str:
    return f"{version:020d}"


class RedisStore:
    """The session operations on Redis; each public call is one Redis command."""

    def __init__(self, client: Redis, *, key_prefix: str, lifetime_s: int) -> None:
        self._client = client
        self._cluster = isinstance(client, RedisCluster)
        self._prefix = key_prefix
        self._lifetime = lifetime_s
        self._counters = {name: REDIS_COMMANDS.labels(command=name) for name in ("getex", "get", "set", "del", "evalsha", "script_load", "ping")}
        self._patch = client.register_script(PATCH_LUA)
        self._rotate = client.register_script(_ROTATE_LUA)
        self._writeback = client.register_script(_WRITEBACK_LUA)
        self._script_client = _ScriptClient(self)
        self._prefix_bytes = key_prefix.encode()
        lifetime = str(lifetime_s).encode()
        self._getex_tail = b"\r\n$2\r\nEX\r\n$%d\r\n%b\r\n" % (len(lifetime), lifetime)

    def key(self, sid: str) -> str:
        return self._prefix + sid

    async def _run(self, command: str, call, count: int = 1):  # type: ignore[no-untyped-def]
        """Await `call` (`count` commands named `command`), raising a Redis failure as classify() maps it."""
        self._counters[command].inc(count)
        try:
            return await call
        except rex.NoScriptError:
            raise
        except (rex.RedisError, OSError, TimeoutError) as exc:
            mapped = classify(exc)
            if mapped is not None:
                raise mapped from exc
            raise

    async def _script(self, script: AsyncScript, keys: list[str], args: list[str | bytes | int]) -> object:
        """EVALSHA, loading the script first if Redis restarted or flushed its script cache (redis-py's Script)."""
        return await script(keys=keys, args=args, client=self._script_client)  # type: ignore[arg-type]

    async def ping(self) -> None:
        await self._run("ping", self._client.ping())

    async def check_writable(self) -> None:
        """One small write with a short TTL: Redis may answer PING yet refuse writes (OOM, READONLY)."""
        await self._run("set", self._client.set(PROBE_KEY, b"1", ex=WRITEBACK_GUARD_TTL_S))

    async def load_scripts(self) -> None:
        for script in (self._patch, self._rotate, self._writeback):
            await self._run("script_load", self._client.script_load(script.script))

    async def get(self, sid: str) -> bytes | None:
        """GETEX: read the session and slide its expiry in one command."""
        return await self._run("getex", self._client.getex(self.key(sid), ex=self._lifetime))

    async def get_many(self, sids: Sequence[str]) -> list[bytes | None | Exception]:
        """One pipeline (no MULTI) of GETEX, one command per sid, as `get` sends them one by one (a lone sid: `get` itself).

        The commands are packed here and written on one pooled connection, with the client's
        retry, rather than through redis-py's Pipeline, whose per-command bookkeeping cost
        about as much as the rest of a read in the session service (docs/benchmarks.md).

        Each result is the bytes, None, or the exception `get` would raise for that sid alone
        (CorruptSession for WRONGTYPE, RedisUnavailable and its kinds for an outage). A failure
        of the connection itself raises, as for `get`.
        """
        if len(sids) == 1:  # a lone read (a quiet gateway) skips the pipeline's own cost
            try:
                return [await self.get(sids[0])]
            except (CorruptSession, rex.ResponseError) as exc:
                return [exc]
        if self._cluster:
            return await self._get_many_cluster(sids)
        getex = self._getex_tail
        packed = b"".join(b"*4\r\n$5\r\nGETEX\r\n$%d\r\n%b%b" % (len(key), key, getex) for key in (self._prefix_bytes + sid.encode() for sid in sids))
        return _classified(await self._run("getex", self._send_packed(packed, len(sids)), count=len(sids)))

    async def _send_packed(self, packed: bytes, count: int) -> list[Any]:
        """Write `count` packed commands on one pooled connection and read their replies (with the client's retry)."""
        pool = self._client.connection_pool
        conn = await pool.get_connection()
        try:
            return await conn.retry.call_with_retry(lambda: _pipelined(conn, packed, count), lambda _: conn.disconnect())
        finally:
            await pool.release(conn)

    async def _get_many_cluster(self, sids: Sequence[str]) -> list[bytes | None | Exception]:
        """The pipeline of GETEX on a Redis Cluster: redis-py's cluster pipeline sends one batch per node."""
        pipe = self._client.pipeline(transaction=False)
        for sid in sids:
            pipe.getex(self.key(sid), ex=self._lifetime)
        return _classified(await self._run("getex", pipe.execute(raise_on_error=False), count=len(sids)))

    async def peek(self, sid: str) -> bytes | None:
        """GET: read the session without sliding its expiry (which a Redis refusing writes would refuse)."""
        return await self._run("get", self._client.get(self.key(sid)))

    async def set(self, sid: str, value: bytes, replace_sid: str | None = None) -> None:
        """SET EX, or one script that also deletes `replace_sid` (login rotation)."""
        if replace_sid and replace_sid != sid and self._cluster:
            # The two sessions hash to different slots: SET the new one, then DEL the old one.
            await self._run("set", self._client.set(self.key(sid), value, ex=self._lifetime))
            await self._run("del", self._client.delete(self.key(replace_sid)))
        elif replace_sid and replace_sid != sid:
            await self._script(self._rotate, [self.key(sid), self.key(replace_sid)], [value, self._lifetime])
        else:
            await self._run("set", self._client.set(self.key(sid), value, ex=self._lifetime))

    async def patch(self, sid: str, pairs: list[tuple[str, bytes]], unset: list[str]) -> bytes | None:
        """Set and remove top-level fields atomically; the new bytes, or None when there is no session.

        `pairs` holds, per field to set, its name and its MessagePack key+value bytes.
        """
        args: list[str | bytes | int] = [self._lifetime, len(pairs)]
        for name, pair in pairs:
            args += [name, pair]
        args += unset
        result = await self._script(self._patch, [self.key(sid)], args)
        if result is None:
            return None
        if isinstance(result, int):
            raise CorruptSession("the stored value is not a MessagePack map")
        assert isinstance(result, bytes)
        return result

    async def delete(self, sid: str) -> bool:
        return bool(await self._run("del", self._client.delete(self.key(sid))))

    async def write_back(self, sid: str, value: bytes | None, version: int) -> bool:
        """Apply one outage change (a value, or None for a deletion); False if a newer one was already applied."""
        keys = [self.key(sid), guard_key(self.key(sid))]
        args: list[str | bytes | int] = [_version_arg(version), self._lifetime, WRITEBACK_GUARD_TTL_S]
        args += ["1", value] if value is not None else ["0"]
        return bool(await self._script(self._writeback, keys, args))

    async def close(self) -> None:
        await close_client(self._client)


async def close_client(client: Redis) -> None:
    """Close a client and its pool: a pool passed in stays open after a plain aclose(); a cluster client owns its pools."""
    if isinstance(client, RedisCluster):
        await client.aclose()
    else:
        await client.aclose(close_connection_pool=True)


async def _pipelined(conn: Connection, packed: bytes, count: int) -> list[object]:
    """Write `count` packed commands at once and read their replies in order; an error reply is returned, not raised."""
    await conn.send_packed_command(packed)
    replies: list[object] = []
    for _ in range(count):
        try:
            replies.append(await conn.read_response())
        except rex.ResponseError as exc:
            replies.append(exc)
    return replies


class _ScriptClient:
    """The two commands redis-py's Script sends, counted and classified like every other command."""

    def __init__(self, store: RedisStore) -> None:
        self._store = store

    async def evalsha(self, sha: str, numkeys: int, *args: Any) -> Any:
        return await self._store._run("evalsha", self._store._client.evalsha(sha, numkeys, *args))

    async def script_load(self, source: Any) -> str:
        return await self._store._run("script_load", self._store._client.script_load(source))
