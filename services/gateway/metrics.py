"""Prometheus metrics of the gateway, served at /metrics."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

REQUESTS = Counter("gateway_http_requests_total", "HTTP requests by route and status", ["route", "status"])
LATENCY = Histogram(
    "gateway_http_request_seconds",
    "HTTP request duration by route (for streams, the whole stream)",
    ["route"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)
STREAMS_IN_FLIGHT = Gauge("gateway_query_streams_in_flight", "execute_query streams being written")
QUERY_ROWS = Counter("gateway_query_rows_total", "Rows streamed to clients")

_children: dict[tuple[str, int], tuple[Counter, Histogram]] = {}


def observe_request(route: str, status: int, elapsed_s: float) -> None:
    """Count one request and its duration; the labelled series are looked up once per (route, status)."""
    children = _children.get((route, status))
    if children is None:
        children = _children[(route, status)] = (REQUESTS.labels(route, str(status)), LATENCY.labels(route))
    children[0].inc()
    children[1].observe(elapsed_s)
