"""The query service as a process on a real NATS, driven with shared.stream.StreamConsumer (the gateway's end)."""

from __future__ import annotations

import signal
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import msgspec
import orjson
import pytest
from nats.aio.client import Client as NATS

from shared.bus import request
from shared.contracts import ErrorBody, StreamError, Subjects
from shared.errors import (
    QUERY_FAILED,
    QUERY_REFUSED,
    QUERY_TIMEOUT,
    UNAVAILABLE,
    UNKNOWN_SOURCE,
    ServiceError,
)
from shared.stream import StreamConsumer
from tests.conftest import Infra
from tests.harness import Service, free_port, service_env
from tests.metrics import sample_value

COUNT_TO = "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < {n}) SELECT i, 'row ' || i AS label FROM n"
ENDLESS = "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n) SELECT count(*) FROM n"


@dataclass
class QueryService:
    process: Service
    subjects: Subjects
    ops_port: int
    sample: Path


def start_query_service(infra: Infra, sample: Path, **env: str) -> QueryService:
    prefix = f"q{uuid.uuid4().hex[:10]}"
    ops_port = free_port()
    process = Service(
        "query",
        service_env(NATS_URL=infra.nats_url, NATS_SUBJECT_PREFIX=prefix, OPS_PORT=str(ops_port), QUERY_SAMPLE_PATH=str(sample), **env),
    ).start()
    return QueryService(process, Subjects(prefix), ops_port, sample)


@pytest.fixture(scope="module")
def service(infra: Infra, tmp_path_factory: pytest.TempPathFactory) -> Iterator[QueryService]:
    """One query service on the sample database (created at start), with a second source and a row cap."""
    sample = tmp_path_factory.mktemp("query") / "sample.db"
    svc = start_query_service(infra, sample, QUERY_SOURCES=f"copy=sqlite:///{sample}", QUERY_MAX_ROWS="150000")
    yield svc
    assert svc.process.stop() == 0, "\n".join(svc.process.lines[-30:])


@dataclass
class Result:
    meta: dict[str, Any] | None = None
    rows: list[list[Any]] = field(default_factory=list)
    offsets: list[int] = field(default_factory=list)
    end: dict[str, Any] | None = None
    error: dict[str, Any] | None = None


async def run_query(nc: NATS, subjects: Subjects, sql: str, source: str | None = None) -> Result:
    consumer = StreamConsumer(nc, subjects)
    await consumer.start(sql, source)
    result = Result()
    try:
        async for struct in consumer.messages():
            message = msgspec.to_builtins(struct, builtin_types=(bytes,))  # the wire's map, "t" included
            kind = message["t"]
            if kind == "meta":
                result.meta = message
            elif kind == "rows":
                assert message["offset"] == len(result.rows), "a chunk arrived out of order or twice"
                chunk = orjson.loads(message["rows"])
                assert len(chunk) == message["count"]
                result.offsets.append(message["offset"])
                result.rows.extend(chunk)
            elif kind == "end":
                result.end = message
            else:
                result.error = message["error"]
    finally:
        await consumer.close()
    return result


async def test_the_sample_database_is_created_at_start_and_answers(service: QueryService, nc: NATS) -> None:
    result = await run_query(nc, service.subjects, "SELECT count(*) AS n FROM customers JOIN orders ON orders.customer_id = customers.id")
    assert result.meta is not None and result.meta["columns"] == [{"name": "n", "type": "INTEGER"}]
    assert result.rows == [[20_000]]
    assert result.end == {"t": "end", "row_count": 1, "truncated": False}
    assert service.sample.is_file()


async def test_100k_rows_arrive_once_and_in_order(service: QueryService, nc: NATS) -> None:
    result = await run_query(nc, service.subjects, COUNT_TO.format(n=100_000))
    assert result.error is None
    assert result.meta is not None
    assert result.meta["columns"] == [{"name": "i", "type": "INTEGER"}, {"name": "label", "type": "TEXT"}]
    assert result.meta["preview"] == [[i, f"row {i}"] for i in range(1, 6)]
    assert result.rows == [[i, f"row {i}"] for i in range(1, 100_001)]
    assert len(result.offsets) > 1, "a large result comes in several chunks"
    assert result.end == {"t": "end", "row_count": 100_000, "truncated": False}
    line = service.process.wait_for_line(lambda line: '"query_done"' in line and '"row_count":100000' in line)
    done = orjson.loads(line)
    assert done["source"] == "default" and done["truncated"] is False and done["duration_ms"] >= 0


async def test_rows_beyond_the_cap_are_left_out_and_marked_truncated(service: QueryService, nc: NATS) -> None:
    result = await run_query(nc, service.subjects, COUNT_TO.format(n=200_000))
    assert len(result.rows) == 150_000 and result.rows[-1] == [150_000, "row 150000"]
    assert result.end == {"t": "end", "row_count": 150_000, "truncated": True}


async def test_a_named_source_is_used(service: QueryService, nc: NATS) -> None:
    result = await run_query(nc, service.subjects, "SELECT name FROM products ORDER BY id LIMIT 2", source="copy")
    assert len(result.rows) == 2 and result.end is not None


async def test_unknown_source_is_refused_naming_the_known_ones(service: QueryService, nc: NATS) -> None:
    with pytest.raises(ServiceError) as caught:
        await run_query(nc, service.subjects, "SELECT 1", source="nope")
    assert caught.value.code == UNKNOWN_SOURCE
    assert caught.value.message == "unknown source 'nope'; known: copy, default"


async def test_syntax_error_is_reported_clearly(service: QueryService, nc: NATS) -> None:
    with pytest.raises(ServiceError) as caught:
        await run_query(nc, service.subjects, "SELEC name FROM customers")
    assert caught.value.code == QUERY_FAILED
    assert caught.value.message.startswith("the guard cannot analyse this statement (SQLite): at line 1, column ")
    assert "near 'SELEC name" in caught.value.message
    assert "Traceback" not in caught.value.message


@pytest.mark.parametrize("sql", ["DELETE FROM customers", "SELECT 1; DROP TABLE customers", "ATTACH DATABASE '/tmp/x.db' AS x"])
async def test_a_write_is_refused(service: QueryService, nc: NATS, sql: str) -> None:
    with pytest.raises(ServiceError) as caught:
        await run_query(nc, service.subjects, sql)
    assert caught.value.code == QUERY_REFUSED
    assert caught.value.message.startswith("only a single read-only statement is allowed: found ")
    assert (await run_query(nc, service.subjects, "SELECT count(*) FROM customers")).rows == [[2000]]


async def test_a_database_error_ends_the_stream_with_its_message(service: QueryService, nc: NATS) -> None:
    result = await run_query(nc, service.subjects, "SELECT * FROM no_such_table")
    assert result.error == {"code": QUERY_FAILED, "message": "no such table: no_such_table"}
    assert result.meta is None and result.end is None


async def test_long_cells_are_cut_in_the_preview_but_not_in_the_rows(service: QueryService, nc: NATS) -> None:
    result = await run_query(nc, service.subjects, "SELECT printf('%.500c', 'x') AS wide")
    assert result.meta is not None and result.meta["preview"] == [["x" * 200 + "…"]]
    assert result.rows == [["x" * 500]]


async def test_ping_names_the_sources(service: QueryService, nc: NATS) -> None:
    assert await request(nc, service.subjects.query_ping, {}) == {
        "ok": True,
        "sources": ["copy", "default"],
        "default": "default",
        "dialects": {"copy": "sqlite", "default": "sqlite"},
        "connections": False,  # no CONNECTIONS_KEYS: users' own databases are off
    }


async def test_ops_endpoints_report_ready_and_count_queries(service: QueryService, nc: NATS) -> None:
    await run_query(nc, service.subjects, "SELECT 1")
    async with aiohttp.ClientSession() as http:
        async with http.get(f"http://127.0.0.1:{service.ops_port}/readyz") as response:
            assert response.status == 200
            assert await response.json() == {"ready": True, "checks": {"accepting": True, "nats": True}}
        async with http.get(f"http://127.0.0.1:{service.ops_port}/metrics") as response:
            assert (sample_value(await response.text(), "query_queries_total", outcome="done", source="default") or 0) >= 1


@pytest.fixture(scope="module")
def strict_service(infra: Infra, tmp_path_factory: pytest.TempPathFactory) -> Iterator[QueryService]:
    """A query service with a 1 s time limit and a consumer that must acknowledge within 0.5 s."""
    sample = tmp_path_factory.mktemp("strict") / "sample.db"
    svc = start_query_service(infra, sample, QUERY_TIMEOUT_S="1", QUERY_ACK_TIMEOUT_S="0.5")
    yield svc
    assert svc.process.stop() == 0, "\n".join(svc.process.lines[-30:])


async def test_a_query_past_its_time_limit_ends_with_a_timeout_error(strict_service: QueryService, nc: NATS) -> None:
    result = await run_query(nc, strict_service.subjects, ENDLESS)
    assert result.error is not None and result.error["code"] == QUERY_TIMEOUT
    assert "1s time limit (QUERY_TIMEOUT_S)" in result.error["message"]


async def test_a_consumer_that_stops_acknowledging_is_dropped(strict_service: QueryService, nc: NATS) -> None:
    consumer = StreamConsumer(nc, strict_service.subjects, window=1)
    await consumer.start(COUNT_TO.format(n=1_000_000), None)
    messages = consumer.messages()
    assert [(await anext(messages)).t, (await anext(messages)).t] == ["meta", "rows"]
    await messages.aclose()  # vanish: no acknowledgement, no cancel
    line = strict_service.process.wait_for_line(lambda line: '"query_cancelled"' in line and "no acknowledgement" in line)
    assert orjson.loads(line)["reason"] == "no acknowledgement for 0.5s; the consumer is gone"
    await consumer.close()


async def test_sigterm_cuts_off_a_stalled_stream_with_an_error_and_exits_0(infra: Infra, nc: NATS, tmp_path: Path) -> None:
    svc = start_query_service(infra, tmp_path / "sample.db", SHUTDOWN_GRACE_S="0.2")
    consumer = StreamConsumer(nc, svc.subjects, window=1)
    await consumer.start(COUNT_TO.format(n=1_000_000), None)
    messages = consumer.messages()
    assert (await anext(messages)).t == "meta"
    assert (await anext(messages)).t == "rows"
    await messages.aclose()  # the stream now waits for an acknowledgement that does not come
    assert svc.process.proc is not None
    svc.process.proc.send_signal(signal.SIGTERM)
    assert [m async for m in consumer.messages()] == [StreamError(ErrorBody(UNAVAILABLE, "the query service is shutting down; run the query again"))]
    assert svc.process.stop() == 0
    failed = svc.process.events("query_failed")
    assert [e["code"] for e in failed] == [UNAVAILABLE]
    await consumer.close()
