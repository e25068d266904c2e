"""A service that cannot start says why in one JSON line, the exception as data, and exits non-zero.

Real processes (`python -m services.<name>`) with a malformed variable (exit 2) or a port
that another process already holds (an uncaught OSError, exit 1).
"""

from __future__ import annotations

import json
import socket
import uuid
from collections.abc import Iterator

import pytest

from tests.conftest import Infra
from tests.harness import Process, Service, free_port, service_env


@pytest.fixture
def held_port() -> Iterator[int]:
    """A port on which another process already listens."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 0)
    sock.bind(("0.0.0.0", 0))
    sock.listen()
    yield sock.getsockname()[1]
    sock.close()


def run_to_exit(name: str, **env: str) -> tuple[int, list[str]]:
    service = Service(name, service_env(**env))
    Process.start(service)
    assert service.proc is not None
    code = service.proc.wait(timeout=60)
    try:
        service.wait_for_line(lambda _line: False, timeout=10)
    except RuntimeError:  # the output closed: every line has been read
        pass
    return code, service.lines


def failure(lines: list[str]) -> dict:
    assert lines, "the process printed nothing"
    assert all(line.startswith("{") for line in lines), "\n".join(lines)  # JSON only: no plain-text traceback
    last = json.loads(lines[-1])
    assert last["event"] == "service_failed" and last["level"] == "critical"
    assert [json.loads(line)["event"] for line in lines].count("service_failed") == 1
    return last


def base_env(infra: Infra) -> dict[str, str]:
    prefix = f"f{uuid.uuid4().hex[:10]}"
    return {"NATS_URL": infra.nats_url, "NATS_SUBJECT_PREFIX": prefix, "SESSION_KV_BUCKET": f"sessions_{prefix}", "OPS_PORT": str(free_port()), "GATEWAY_PORT": str(free_port())}


@pytest.mark.parametrize(
    ("name", "variable", "value"),
    [("gateway", "GATEWAY_PORT", "eighty"), ("session", "SESSION_KV_BUCKET", "no spaces allowed"), ("query", "QUERY_DATABASE_URL", "ftp://example.com/db")],
)
def test_a_configuration_error_is_one_json_line_and_exit_2(infra: Infra, name: str, variable: str, value: str) -> None:
    code, lines = run_to_exit(name, **{**base_env(infra), variable: value})
    assert code == 2
    last = failure(lines)
    assert last["service"] == name and last["reason"] == "configuration" and last["exit_code"] == 2
    assert variable in last["error"]
    assert last["exception"][0]["exc_type"] == "ConfigError"


@pytest.mark.parametrize(("name", "variable"), [("gateway", "GATEWAY_PORT"), ("session", "OPS_PORT"), ("query", "OPS_PORT")])
def test_an_uncaught_error_at_start_is_one_json_line_with_the_exception_and_exit_1(infra: Infra, held_port: int, name: str, variable: str) -> None:
    code, lines = run_to_exit(name, **{**base_env(infra), variable: str(held_port)})
    assert code == 1
    last = failure(lines)
    assert last["service"] == name and last["reason"] == "uncaught exception" and last["exit_code"] == 1
    exception = last["exception"][0]
    assert exception["exc_type"] == "OSError" and str(held_port) in exception["exc_value"]
    assert exception["frames"] and all({"filename", "lineno", "name"} <= set(frame) for frame in exception["frames"])
