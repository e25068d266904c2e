"""NATS helpers: a connection with reconnect settings, request/reply with clear errors, and serving."""

from __future__ import annotations

import asyncio
import inspect
import time
import typing
import weakref
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import msgspec
import nats
import nats.errors
import structlog
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from shared.codec import decode_map, encode_message
from shared.config import NatsCredentials
from shared.contracts import ErrorBody, ErrorReply
from shared.errors import BAD_REQUEST, INTERNAL, TIMEOUT, UNAVAILABLE, ConfigError, ServiceError
from shared.logging import REQUEST_ID_HEADER, bind_request, current_request_id

log = structlog.get_logger(__name__)

Payload = msgspec.Struct | Mapping[str, Any]
# A handler takes the request decoded as the Struct its first parameter is annotated with
# (or a plain map, for a handler annotated `dict[str, Any]`), and returns its reply.
Handler = Callable[[Any, Msg], Awaitable[Payload]]
BytesHandler = Callable[[bytes, Msg], Awaitable[bytes]]


_UP: weakref.WeakKeyDictionary[NATS, asyncio.Event] = weakref.WeakKeyDictionary()
"""Per connection made by connect(): set while it is connected, so a caller can await the reconnection."""
_AUTH_REFUSALS = ("authorization violation", "authentication expired", "authentication revoked")
"""What the server says to credentials it refuses (not "Authentication Timeout", which a retry may cure)."""


def servers(url: str) -> list[str]:
    """NATS_URL as nats-py's server list: one URL, or a cluster's URLs separated by commas."""
    return [part.strip() for part in url.split(",") if part.strip()]


async def connect(url: str, name: str, *, credentials: NatsCredentials | None = None, connect_deadline_s: float = 60.0) -> NATS:
    """Connect to NATS (any server of the list in `url`), retrying the first connection until `connect_deadline_s`.

    After that, nats-py reconnects forever across the servers every half second, so a NATS
    restart or the loss of one cluster node costs at most a moment. Credentials the server
    refuses are a ConfigError at once: retrying them would never succeed.
    """
    credentials = credentials or NatsCredentials()
    shown = ",".join(redact_url(u) for u in servers(url))
    refused: asyncio.Future[str] = asyncio.get_running_loop().create_future()

    async def on_error(exc: Exception) -> None:
        text = str(exc) or type(exc).__name__
        if not client and not refused.done() and any(word in text.lower() for word in _AUTH_REFUSALS):
            refused.set_result(text)
        log.warning("nats_error", error=text)

    client: list[NATS] = []

    async def on_disconnected() -> None:
        if client:
            _UP[client[0]].clear()
        log.warning("nats_disconnected")
        if client:
            _fail_pending_requests(client[0])

    async def on_reconnected() -> None:
        if client:
            _UP[client[0]].set()
        log.info("nats_reconnected", server=str(client[0].connected_url.netloc) if client and client[0].connected_url else None)

    deadline = time.monotonic() + connect_deadline_s
    delay = 0.2
    while True:
        nc = NATS()
        attempt = asyncio.ensure_future(
            nc.connect(
                servers=servers(url),
                name=name,
                connect_timeout=2,
                reconnect_time_wait=0.5,
                max_reconnect_attempts=-1,
                ping_interval=10,
                max_outstanding_pings=3,
                allow_reconnect=True,
                error_cb=on_error,
                disconnected_cb=on_disconnected,
                reconnected_cb=on_reconnected,
                drain_timeout=30,
                inbox_prefix=f"_INBOX.{name}",  # replies to this service only: deploy/nats/authorization.conf grants each its own
                **credentials.options(),
            )
        )
        await asyncio.wait({attempt, refused}, return_when=asyncio.FIRST_COMPLETED)
        if refused.done() and not attempt.done():
            attempt.cancel()
            await close(nc, 1.0)
            raise ConfigError(f"NATS at {shown} refused the credentials of {name} ({credentials.kind}): {refused.result()}")
        try:
            await attempt
            client.append(nc)
            _UP[nc] = asyncio.Event()
            _UP[nc].set()
            return nc
        except (OSError, nats.errors.NoServersError, TimeoutError) as exc:
            if time.monotonic() + delay > deadline:
                raise ServiceError(UNAVAILABLE, f"cannot connect to NATS at {shown}: {exc}") from exc
            log.warning("nats_connect_retry", url=shown, error=str(exc) or type(exc).__name__)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)


async def wait_connected(nc: NATS, timeout: float) -> bool:
    """Wait up to `timeout` for a connection made by connect() to be up again (on any server of its list)."""
    if nc.is_connected:
        return True
    up = _UP.get(nc)
    if up is None:
        return False
    try:
        await asyncio.wait_for(up.wait(), timeout)
    except TimeoutError:
        return False
    return nc.is_connected


def _fail_pending_requests(nc: NATS) -> None:
    """Fail at once the requests whose replies the dropped connection can no longer bring.

    nats-py leaves them waiting for their timeout, so a NATS restart would surface as 504s
    seconds later instead of fail-fast 503s. `_resp_map` holds nats-py's reply futures.
    """
    for future in list(getattr(nc, "_resp_map", {}).values()):
        if not future.done():
            future.set_exception(nats.errors.ConnectionReconnectingError())


def redact_url(url: str) -> str:
    """Hide a password in a URL for logs."""
    from urllib.parse import urlsplit, urlunsplit

    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparseable url>"
    if parts.password is None:
        return url
    netloc = f"{parts.username or ''}:***@{parts.hostname or ''}"
    if parts.port:
        netloc += f":{parts.port}"
    return urlunsplit(parts._replace(netloc=netloc))


def request_headers() -> dict[str, str]:
    rid = current_request_id()
    return {REQUEST_ID_HEADER: rid} if rid else {}


@typing.overload
async def request(nc: NATS, subject: str, payload: Payload, *, timeout: float = ...) -> dict[str, Any]: ...
@typing.overload
async def request[R: msgspec.Struct](nc: NATS, subject: str, payload: Payload, *, timeout: float = ..., reply: type[R]) -> R: ...
async def request(nc: NATS, subject: str, payload: Payload, *, timeout: float = 2.0, reply: type[msgspec.Struct] | None = None) -> Any:
    """Send one request and return the decoded reply (as the `reply` Struct when given); every failure is a ServiceError.

    Fails fast (no waiting for the timeout) while NATS is disconnected.
    """
    answer = decode_map(await request_bytes(nc, subject, encode_message(payload), timeout=timeout, headers=request_headers()))
    if "error" in answer:
        raise ServiceError.from_dict(answer["error"])
    if reply is None:
        return answer
    try:
        return msgspec.convert(answer, reply)
    except msgspec.ValidationError as exc:
        raise ServiceError(INTERNAL, f"malformed reply on {subject}: {exc}") from None


async def request_bytes(nc: NATS, subject: str, data: bytes, *, timeout: float = 2.0, headers: dict[str, str] | None = None) -> bytes:
    """`request` for a payload encoded by the caller (a msgspec Struct): the reply's bytes, undecoded."""
    if not nc.is_connected:
        raise ServiceError(UNAVAILABLE, "the message bus is reconnecting; try again shortly")
    try:
        msg = await nc.request(subject, data, timeout=timeout, headers=headers)
    except nats.errors.NoRespondersError:
        raise ServiceError(UNAVAILABLE, f"no service is answering on {subject}") from None
    except (TimeoutError, nats.errors.TimeoutError):
        raise ServiceError(TIMEOUT, f"no reply on {subject} within {timeout:g}s") from None
    except (nats.errors.ConnectionClosedError, nats.errors.ConnectionReconnectingError, nats.errors.ConnectionDrainingError):
        raise ServiceError(UNAVAILABLE, "the message bus is reconnecting; try again shortly") from None
    return msg.data


def _error_reply(exc: ServiceError) -> bytes:
    return encode_message(ErrorReply(ErrorBody(exc.code, exc.message)))


def request_decoder(handler: Handler) -> Callable[[bytes], Any]:
    """The decoder for `handler`'s requests, from the annotation of its first parameter.

    A Struct gets msgspec's typed decoder, whose error names the field path
    (`Expected `str`, got `int` - at `$.sid``); anything else gets a plain map.
    """
    first = next(iter(inspect.signature(handler).parameters))
    try:
        kind = typing.get_type_hints(handler).get(first)
    except NameError:  # an annotation only a type checker can resolve: not a Struct to decode with
        kind = None
    if not (isinstance(kind, type) and issubclass(kind, msgspec.Struct)):
        return decode_map
    decoder = msgspec.msgpack.Decoder(kind)
    name = kind.__name__

    def decode(data: bytes) -> Any:
        try:
            return decoder.decode(data)
        except msgspec.ValidationError as exc:
            raise ServiceError(BAD_REQUEST, f"invalid {name}: {exc}") from None
        except msgspec.DecodeError as exc:
            raise ServiceError(BAD_REQUEST, f"payload is not valid MessagePack: {exc}") from None

    return decode


class Server:
    """Serves request/reply handlers in queue groups, many messages at once, and drains on stop.

    Each message is decoded here, with the decoder for the request type its handler
    declares, so a malformed one gets a `bad_request` reply before any handler runs.
    """

    def __init__(self, nc: NATS, *, max_in_flight: int = 512) -> None:
        self._nc = nc
        self._subs: list[Subscription] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self._slots = asyncio.Semaphore(max_in_flight)

    async def add(self, subject: str, queue: str, handler: Handler) -> None:
        decode = request_decoder(handler)
        await self._add(subject, queue, lambda msg: self._handle(msg, handler, decode))

    async def add_bytes(self, subject: str, queue: str, handler: BytesHandler) -> None:
        """Serve a handler that decodes the payload and encodes the reply itself (msgspec Structs)."""
        await self._add(subject, queue, lambda msg: self._handle_bytes(msg, handler))

    async def _add(self, subject: str, queue: str, handle: Callable[[Msg], Awaitable[None]]) -> None:
        async def on_message(msg: Msg) -> None:
            await self._slots.acquire()
            task = asyncio.create_task(handle(msg))
            self._tasks.add(task)
            task.add_done_callback(self._done)

        self._subs.append(await self._nc.subscribe(subject, queue=queue, cb=on_message))
        # nats-py sends SUB lazily: flush so the server routes to us before we report ready.
        await self._nc.flush()

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        self._slots.release()

    async def _handle(self, msg: Msg, handler: Handler, decode: Callable[[bytes], Any]) -> None:
        await self._dispatch(msg, lambda: _encoded(handler(decode(msg.data), msg)))

    async def _handle_bytes(self, msg: Msg, handler: BytesHandler) -> None:
        await self._dispatch(msg, lambda: handler(msg.data, msg))

    async def _dispatch(self, msg: Msg, call: Callable[[], Awaitable[bytes]]) -> None:
        """Bind the request id, run the call, map errors to an error reply, and reply."""
        headers = msg.headers or {}
        bind_request(headers.get(REQUEST_ID_HEADER), subject=msg.subject)
        try:
            reply = await call()
        except ServiceError as exc:
            reply = _error_reply(exc)
        except Exception:
            log.exception("handler_failed")
            reply = _error_reply(ServiceError(INTERNAL, "internal error; see the service log"))
        await self._reply(msg, reply)

    async def _reply(self, msg: Msg, data: bytes) -> None:
        if msg.reply:
            try:
                await self._nc.publish(msg.reply, data)
            except Exception as exc:  # the caller is gone or NATS is down: nothing more to do
                log.warning("reply_failed", error=str(exc) or type(exc).__name__)

    @property
    def in_flight(self) -> int:
        return len(self._tasks)

    async def drain(self, grace_s: float = 20.0) -> None:
        """Stop taking messages, then wait (up to `grace_s`) for those in hand to finish."""
        for sub in self._subs:
            try:
                await sub.drain()
            except Exception as exc:
                log.warning("drain_failed", error=str(exc) or type(exc).__name__)
        if self._tasks:
            done, pending = await asyncio.wait(set(self._tasks), timeout=grace_s)
            for task in pending:
                task.cancel()


async def close(nc: NATS, timeout_s: float = 10.0) -> None:
    """Drain the connection if NATS is reachable, else just close it; never raises."""
    try:
        if nc.is_connected:
            await asyncio.wait_for(nc.drain(), timeout_s)
            return
    except Exception as exc:
        log.warning("nats_drain_failed", error=str(exc) or type(exc).__name__)
    try:
        if not nc.is_closed:
            await nc.close()
    except Exception as exc:  # the transport is already gone: nothing is left to flush
        log.info("nats_close_incomplete", error=str(exc) or type(exc).__name__)


async def _encoded(reply: Awaitable[Any]) -> bytes:
    return encode_message(await reply)
