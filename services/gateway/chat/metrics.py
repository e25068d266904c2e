"""Prometheus metrics of chat turns, served at the gateway's /metrics beside the others."""

from __future__ import annotations

from prometheus_client import Counter, Histogram

LLM_REQUESTS = Counter("gateway_llm_requests_total", "Model requests (one per step) by outcome", ["outcome"])
LLM_TOKENS = Counter("gateway_llm_tokens_total", "Tokens the model reported, by kind (input, output)", ["kind"])
TURN_SECONDS = Histogram(
    "gateway_chat_turn_seconds",
    "Duration of a whole chat turn, every step and tool call included",
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300),
)
TOOL_CALLS = Counter("gateway_tool_calls_total", "Tool calls the model made, by tool and outcome", ["tool", "outcome"])
