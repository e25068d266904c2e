"""A TCP relay on loopback between a service and a real Redis that can hold back the reply to one command.

It stands for a network or a Redis that answers late: the command reaches Redis and runs, but
its reply never comes back, so the client times out on a command that did run. Everything
else is relayed byte for byte.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from tests.harness import free_port


class RedisProxy:
    """Relays each client connection to Redis; `hold_reply_to(command)` swallows the reply to the next such command."""

    def __init__(self, redis_port: int) -> None:
        self._redis_port = redis_port
        self.port = free_port()
        self._hold: bytes | None = None
        self.held = asyncio.Event()
        """Set once a held command was passed on to Redis."""
        self.dropped = asyncio.Event()
        """Set once the client closed the connection whose reply was held."""
        self._every = False
        self._server: asyncio.Server | None = None
        self._clients: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def hold_reply_to(self, command: str, *, every: bool = False) -> None:
        """The next connection that sends `command` gets no more bytes back from Redis; with `every`, each one that does."""
        name = command.upper().encode()
        self._hold = b"$%d\r\n%b\r\n" % (len(name), name)
        self._every = every

    def release(self) -> None:
        """Stop holding replies: connections opened from now on are relayed whole (a held one stays silent)."""
        self._hold = None
        self._every = False

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._relay, "127.0.0.1", self.port)

    async def close(self) -> None:
        assert self._server is not None
        self._server.close()
        for writer in self._clients:
            writer.close()  # each relay then ends on its own
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._server.wait_closed()

    async def _relay(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self._clients.add(client_w)
        redis_r, redis_w = await asyncio.open_connection("127.0.0.1", self._redis_port)
        holding = asyncio.Event()
        replies = asyncio.create_task(self._replies(redis_r, client_w, holding))
        try:
            while data := await _read(client_r):
                if self._hold is not None and self._hold in data.upper():
                    if not self._every:
                        self._hold = None
                    holding.set()
                    redis_w.write(data)
                    await redis_w.drain()
                    self.held.set()
                    continue
                redis_w.write(data)
                await redis_w.drain()
            if holding.is_set():
                self.dropped.set()
        finally:
            replies.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await replies
            for writer in (redis_w, client_w):
                writer.close()
            self._clients.discard(client_w)
            self._tasks.discard(task)

    async def _replies(self, redis_r: asyncio.StreamReader, client_w: asyncio.StreamWriter, holding: asyncio.Event) -> None:
        while data := await _read(redis_r):
            if holding.is_set():
                continue  # the command ran in Redis; its reply, and anything after it, is lost on the way
            client_w.write(data)
            with contextlib.suppress(OSError):
                await client_w.drain()


async def _read(reader: asyncio.StreamReader) -> bytes:
    """The next bytes, or b"" once the peer closed or reset the connection."""
    try:
        return await reader.read(65536)
    except OSError:
        return b""


@contextlib.asynccontextmanager
async def redis_proxy(redis_port: int) -> AsyncIterator[RedisProxy]:
    proxy = RedisProxy(redis_port)
    await proxy.start()
    try:
        yield proxy
    finally:
        await proxy.close()
