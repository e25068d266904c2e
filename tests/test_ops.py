"""The ops side door (shared/ops.py) in-process: probes, and /metrics served by prometheus-client's aiohttp handler."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
from aiohttp import web
from prometheus_client import REGISTRY, Counter
from prometheus_client.openmetrics.parser import text_string_to_metric_families as openmetrics_families

from shared.ops import build_ops_app
from tests.metrics import sample_value


@pytest.fixture
def counter() -> Iterator[Counter]:
    """A counter with a unique name in the default registry, the one the services export."""
    metric = Counter(f"ops_test_{uuid.uuid4().hex[:12]}_total", "counted by this test", ["outcome"])
    yield metric
    REGISTRY.unregister(metric)


def family(metric: Counter) -> str:
    return metric.describe()[0].name


def ops_app(checks: dict[str, bool]) -> web.Application:
    async def readiness() -> dict[str, bool]:
        return checks

    return build_ops_app(readiness)


async def test_readyz_is_503_naming_the_failing_check_and_healthz_stays_200(aiohttp_client) -> None:
    client = await aiohttp_client(ops_app({"nats": False, "accepting": True}))
    async with client.get("/readyz") as response:
        assert response.status == 503
        assert await response.json() == {"ready": False, "checks": {"nats": False, "accepting": True}}
    async with client.get("/healthz") as response:
        assert response.status == 200


async def test_metrics_scrape_parses_and_carries_the_counted_value(aiohttp_client, counter: Counter) -> None:
    counter.labels(outcome="done").inc(3)
    client = await aiohttp_client(ops_app({"nats": True}))
    async with client.get("/metrics") as response:
        assert response.status == 200
        assert response.content_type == "text/plain"
        text = await response.text()
    assert sample_value(text, family(counter) + "_total", outcome="done") == 3
    assert sample_value(text, family(counter) + "_total", outcome="failed") is None


async def test_metrics_speak_openmetrics_to_a_scraper_that_asks_for_it(aiohttp_client, counter: Counter) -> None:
    counter.labels(outcome="done").inc()
    client = await aiohttp_client(ops_app({"nats": True}))
    async with client.get("/metrics", headers={"Accept": "application/openmetrics-text; version=1.0.0"}) as response:
        assert response.status == 200
        assert response.content_type == "application/openmetrics-text"
        text = await response.text()
    families = {family.name: family for family in openmetrics_families(text)}
    assert [s.value for s in families[family(counter)].samples if s.name == family(counter) + "_total"] == [1]
