"""Prometheus metrics of the query service, served at /metrics on OPS_PORT."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

QUERIES = Counter("query_queries_total", "Queries by source and outcome (done, failed code, cancelled)", ["source", "outcome"])
DURATION = Histogram(
    "query_duration_seconds",
    "Query duration from request to last row, by source",
    ["source"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)
FIRST_ROWS = Histogram(
    "query_first_rows_seconds",
    "Time from request to the first rows (the preview) being sent, by source",
    ["source"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 5, 30),
)
ROWS = Counter("query_rows_total", "Rows streamed, by source", ["source"])
BYTES = Counter("query_row_bytes_total", "Bytes of row JSON streamed, by source", ["source"])
STREAMS_IN_FLIGHT = Gauge("query_streams_in_flight", "Query streams running")
USER_POOLS = Gauge("query_user_pools", "Pools of users' own connections open in this replica (at most QUERY_MAX_POOLS)")
USER_POOL_CLOSES = Counter("query_user_pool_closes_total", "Pools of users' own connections closed, by reason", ["reason"])
