"""NATS helpers: a connection with reconnect settings, request/reply with clear errors, and `Server`, one dispatcher for every endpoint.

`Server` is shaped like nats.py's `nats.micro` (`micro/service.py`): each endpoint counts its
requests, errors and processing time, and each service answers `$SRV.PING`, `$SRV.INFO` and
`$SRV.STATS` (all services, by name, by id) in the micro JSON format, so `nats micro ls|info|stats`
and nats.py's `nats.micro` types read them. Every reply of discovery is built with
`nats.micro`'s own Structs (`ServicePing`, `ServiceInfo`, `ServiceStats`, `EndpointStats`), its
names and versions are checked by its `ServiceConfig` and `EndpointConfig`, its control
subjects come from `control_subject`, and an error reply carries its `Nats-Service-Error` and
`Nats-Service-Error-Code` headers. The dispatcher also observes one Prometheus histogram,
`bus_request_seconds{subject,outcome}`, so handlers hold no timing code of their own.

Why not `nats.micro.Service` and its `Endpoint` themselves (nats-py 2.16, the newest release):

* `Endpoint._handle_request` awaits the handler inside the subscription's callback, and nats-py
  runs one subscription's callbacks one after another: one slow Redis call or database
  query would hold every other request on that subject. Here each message runs in its own
  task, up to `max_in_flight` at once.
* It answers an unexpected exception with `repr(error)` in the error header, which would send
  internals to a caller; our callers also read errors from the MessagePack body
  (`ErrorReply`), which it leaves empty.
* `Service.stop()` unsubscribes the endpoints, dropping the messages in hand; a deploy here
  drains them within SHUTDOWN_GRACE_S.
* It calls `datetime.utcnow()`, deprecated since Python 3.12 (the test suite turns that
  warning into an error), and takes its id from the client's private `_nuid`.
* It has no place for the typed request decoding, the request id bound to the log context,
  or the Prometheus histogram.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import logging
import time
import typing
import weakref
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as package_version
from typing import Any

import msgspec
import nats
import nats.errors
import nats.micro.request as micro_request
import nats.micro.service as micro
import structlog
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.nuid import NUID
from prometheus_client import Histogram

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

REQUESTS = Histogram(
    "bus_request_seconds",
    "NATS requests served, from receipt to reply, by subject and outcome (ok or the error code).",
    ["subject", "outcome"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
)

try:
    SERVICE_VERSION = package_version("dbgenie-services")  # what discovery reports
except PackageNotFoundError:  # a source tree that was never installed
    SERVICE_VERSION = "0.0.0"


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
    if up is None or nc.is_closed or nc.is_draining:
        return False
    if up.is_set():
        # nats-py is already reconnecting but has not yet called on_disconnected (which clears
        # the event): without this the wait ended at once and a read failed with 503 in that gap.
        up.clear()
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


@dataclass
class _Endpoint:
    """One served subject and what the dispatcher has measured of it, under the names of micro's endpoint stats."""

    name: str
    subject: str
    queue_group: str
    num_requests: int = 0
    num_errors: int = 0
    processing_time: int = 0  # ns, as micro counts it
    last_error: str = ""
    _observers: dict[str, Any] = field(default_factory=dict)

    def observe(self, outcome: str, elapsed_ns: int) -> None:
        self.num_requests += 1
        self.processing_time += elapsed_ns
        child = self._observers.get(outcome)
        if child is None:  # the labelled series, looked up once per outcome
            child = self._observers[outcome] = REQUESTS.labels(subject=self.subject, outcome=outcome)
        child.observe(elapsed_ns / 1e9)

    def stats(self) -> micro.EndpointStats:
        counted = {f.name: getattr(self, f.name) for f in fields(self) if not f.name.startswith("_")}
        return micro.EndpointStats(**counted, average_processing_time=self.processing_time // self.num_requests if self.num_requests else 0)


class Server:
    """One NATS service: its endpoints in queue groups, many messages at once, measured in one place, discoverable, drained on stop.

    Each message is decoded here, with the decoder for the request type its handler
    declares, so a malformed one gets a `bad_request` reply before any handler runs.
    `start()` answers `$SRV.PING|INFO|STATS` (all, by name, by id) in the micro format.
    """

    def __init__(self, nc: NATS, name: str, *, metadata: Mapping[str, str] | None = None, description: str = "", max_in_flight: int = 512) -> None:
        # nats.micro's ServiceConfig checks the name and version as every micro client expects them.
        self._config = micro.ServiceConfig(name=name, version=SERVICE_VERSION, description=description, metadata=dict(metadata or {}))
        self.id = NUID().next().decode()
        self._nc = nc
        self._started = datetime.now(UTC)
        self._endpoints: list[_Endpoint] = []
        self._subs: list[Subscription] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self._slots = asyncio.Semaphore(max_in_flight)
        self.accepting = True  # False from drain() on

    async def readiness(self) -> dict[str, bool]:
        """The checks of /readyz: not draining, and connected to NATS (requests already routed here are still served)."""
        return {"accepting": self.accepting, "nats": self._nc.is_connected}

    async def start(self) -> None:
        """Answer discovery: `$SRV.<VERB>`, `$SRV.<VERB>.<name>` and `$SRV.<VERB>.<name>.<id>`, on every instance (no queue group)."""
        name = self._config.name
        for verb, answer in ((micro.ServiceVerb.PING, self.ping), (micro.ServiceVerb.INFO, self.info), (micro.ServiceVerb.STATS, self.stats)):
            for subject in (micro.control_subject(verb), micro.control_subject(verb, name), micro.control_subject(verb, name, self.id)):
                self._subs.append(await self._nc.subscribe(subject, cb=self._discovery(answer)))
        self._started = datetime.now(UTC)
        await subscribed(self._nc)

    def _discovery(self, answer: Callable[[], Any]) -> Callable[[Msg], Awaitable[None]]:
        async def on_message(msg: Msg) -> None:
            await self._reply(msg, json.dumps(answer().to_dict()).encode())

        return on_message

    def ping(self) -> micro.ServicePing:
        return micro.ServicePing(id=self.id, name=self._config.name, version=self._config.version, metadata=self._config.metadata or {})

    def info(self) -> micro.ServiceInfo:
        return micro.ServiceInfo(
            name=self._config.name,
            id=self.id,
            version=self._config.version,
            description=self._config.description,
            endpoints=[micro.EndpointInfo(name=e.name, subject=e.subject, queue_group=e.queue_group) for e in self._endpoints],
            metadata=self._config.metadata or {},
        )

    def stats(self) -> micro.ServiceStats:
        # micro's STATS wire format writes `started` as naive UTC.
        started = self._started.replace(tzinfo=None)
        return micro.ServiceStats(
            id=self.id,
            name=self._config.name,
            version=self._config.version,
            started=started,
            endpoints=[e.stats() for e in self._endpoints],
            metadata=self._config.metadata or {},
        )

    async def add(self, subject: str, queue: str, handler: Handler, *, name: str | None = None) -> None:
        """Serve `handler` on `subject`; its endpoint is named `name` (default: the subject's last token)."""
        decode = request_decoder(handler)
        await self._add(subject, queue, name, lambda msg: _encoded(handler(decode(msg.data), msg)))

    async def add_bytes(self, subject: str, queue: str, handler: BytesHandler, *, name: str | None = None) -> None:
        """Serve a handler that decodes the payload and encodes the reply itself (msgspec Structs)."""
        await self._add(subject, queue, name, lambda msg: handler(msg.data, msg))

    async def _add(self, subject: str, queue: str, name: str | None, call: Callable[[Msg], Awaitable[bytes]]) -> None:
        # nats.micro's EndpointConfig checks the name and subject as micro clients expect them.
        config = micro.EndpointConfig(name=name or subject.rsplit(".", 1)[-1], handler=_never_called, subject=subject, queue_group=queue)
        endpoint = _Endpoint(config.name, subject, queue)

        async def on_message(msg: Msg) -> None:
            await self._slots.acquire()
            task = asyncio.create_task(self._dispatch(msg, endpoint, call))
            self._tasks.add(task)
            task.add_done_callback(self._done)

        self._subs.append(await self._nc.subscribe(subject, queue=queue, cb=on_message))
        self._endpoints.append(endpoint)
        await subscribed(self._nc)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        self._slots.release()

    async def _dispatch(self, msg: Msg, endpoint: _Endpoint, call: Callable[[Msg], Awaitable[bytes]]) -> None:
        """Bind the request id, run the call, map errors to an error reply, reply, and measure it."""
        start = time.perf_counter_ns()
        headers = msg.headers or {}
        bind_request(headers.get(REQUEST_ID_HEADER), subject=msg.subject)
        error: ServiceError | None = None
        try:
            reply = await call(msg)
        except ServiceError as exc:
            error = exc
        except Exception:
            log.exception("handler_failed")
            error = ServiceError(INTERNAL, "internal error; see the service log")
        if error is None:
            await self._reply(msg, reply)
            outcome = "ok"
        else:
            # The error travels in the body (what our clients decode) and in micro's headers (what `nats micro` shows).
            await self._reply(msg, _error_reply(error), {micro_request.ERROR_HEADER: error.message, micro_request.ERROR_CODE_HEADER: error.code})
            endpoint.num_errors += 1
            endpoint.last_error = f"{error.code}:{error.message}"
            outcome = error.code
        elapsed_ns = time.perf_counter_ns() - start
        endpoint.observe(outcome, elapsed_ns)
        if log.is_enabled_for(logging.DEBUG):
            log.debug("request_served", endpoint=endpoint.name, outcome=outcome, ms=round(elapsed_ns / 1e6, 3))

    async def _reply(self, msg: Msg, data: bytes, headers: dict[str, str] | None = None) -> None:
        if msg.reply:
            try:
                await self._nc.publish(msg.reply, data, headers=headers)
            except Exception as exc:  # the caller is gone or NATS is down: nothing more to do
                log.warning("reply_failed", error=str(exc) or type(exc).__name__)

    @property
    def in_flight(self) -> int:
        return len(self._tasks)

    async def drain(self, grace_s: float = 20.0, **log_fields: Any) -> None:
        """Stop taking messages (and answering discovery), then wait (up to `grace_s`) for those in hand to finish; later calls do nothing."""
        if not self.accepting:
            return
        self.accepting = False
        log.info("shutting_down", grace_s=grace_s, in_flight=self.in_flight, **log_fields)
        for sub in self._subs:
            try:
                await sub.drain()
            except Exception as exc:
                log.warning("drain_failed", error=str(exc) or type(exc).__name__)
        if self._tasks:
            done, pending = await asyncio.wait(set(self._tasks), timeout=grace_s)
            for task in pending:
                task.cancel()


async def subscribed(nc: NATS) -> None:
    """Return once the server has every subscription made so far on `nc`, so it routes to them.

    nats-py sends SUB lazily, from a buffer its flusher task writes, and (2.16) its `flush()`
    writes the PING straight to the socket, ahead of that buffer: the PONG can come back before
    the server has seen the SUBs (a request right after then gets "no responders"). The first
    flush sets the flusher writing the buffer; the second PING goes out behind it.
    """
    await nc.flush()
    await nc.flush()


async def _never_called(_: micro_request.Request) -> None:
    """EndpointConfig wants a micro handler; ours run through Server._dispatch instead."""


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
