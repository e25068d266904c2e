"""The processes a benchmark measures: its own nats-server and redis-server, then session, query and gateway under one subject prefix."""

from __future__ import annotations

import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from tests.harness import NatsServer, RedisServer, Service, free_port
from tests.harness import service_env as test_service_env


def service_env(**overrides: str) -> dict[str, str]:
    """The tests' service environment with production log flushing: LOG_FLUSH_MS at its default unless given."""
    env = test_service_env(**overrides)
    if "LOG_FLUSH_MS" not in overrides:
        env.pop("LOG_FLUSH_MS", None)
    return env


@dataclass(frozen=True)
class Stack:
    """A running stack: the gateway's URL, and the processes whose memory and CPU a benchmark samples."""

    base_url: str
    prefix: str
    nats: NatsServer
    query: Service
    gateway: Service


def http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as response:
            return response.status == 200
    except OSError:
        return False


@contextmanager
def running_stack(sources: dict[str, str], sample_path: Path, query_env: dict[str, str] | None = None, **gateway_env: str) -> Iterator[Stack]:
    """Start the stack with `sources` as QUERY_SOURCES (dev auth, 300 s query timeout, plus `query_env`); stop it all afterwards.

    The caller waits for the gateway (`http_ok(f"{stack.base_url}/healthz")`) in whichever way suits its loop.
    """
    nats_server = NatsServer().start()
    redis_server = RedisServer().start()
    services: list[Service] = []
    try:
        prefix = f"bench{uuid.uuid4().hex[:8]}"
        common = {"NATS_URL": nats_server.url, "NATS_SUBJECT_PREFIX": prefix, "OPS_PORT": "0"}
        services.append(Service("session", service_env(**common, REDIS_URL=redis_server.url, SESSION_KV_BUCKET=f"sessions_{prefix}")).start())
        query_sources = ",".join(f"{name}={url}" for name, url in sources.items())
        query = Service("query", service_env(**common, QUERY_SOURCES=query_sources, QUERY_SAMPLE_PATH=str(sample_path), QUERY_TIMEOUT_S="300", **(query_env or {}))).start()
        services.append(query)
        port = free_port()
        gateway = Service("gateway", service_env(**common, GATEWAY_PORT=str(port), AUTH_MODE="dev", **gateway_env)).start()
        services.append(gateway)
        yield Stack(f"http://127.0.0.1:{port}", prefix, nats_server, query, gateway)
    finally:
        for service in reversed(services):
            service.stop()
        redis_server.stop()
        nats_server.cleanup()
