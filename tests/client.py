"""An HTTP client for the gateway as a browser would use it, and a parser for its SSE stream."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp


def browser(base_url: str, origin: str | None = "same") -> aiohttp.ClientSession:
    """A client session that keeps cookies for 127.0.0.1 (aiohttp refuses IP cookies unless unsafe).

    Like a browser's fetch(), it sends an Origin header: the gateway's own origin by default,
    the given one, or none (origin=None).
    """
    headers = {"Origin": base_url.rstrip("/") if origin == "same" else origin} if origin else None
    return aiohttp.ClientSession(base_url, cookie_jar=aiohttp.CookieJar(unsafe=True), headers=headers)


async def login(client: aiohttp.ClientSession, email: str = "ada@example.com", name: str = "Ada") -> dict[str, Any]:
    async with client.post("/auth/login", json={"email": email, "name": name}) as response:
        assert response.status == 200, await response.text()
        return await response.json()


async def events(response: aiohttp.ClientResponse) -> AsyncIterator[Any]:
    """Yield each SSE event's data: parsed JSON, or the string "[DONE]". Every event must be `data: ...\\n\\n`."""
    buffer = b""
    async for chunk in response.content.iter_any():
        buffer += chunk
        while b"\n\n" in buffer:
            raw, buffer = buffer.split(b"\n\n", 1)
            assert raw.startswith(b"data: "), f"not a data event: {raw[:80]!r}"
            payload = raw[len(b"data: ") :]
            yield "[DONE]" if payload == b"[DONE]" else json.loads(payload)
    assert buffer == b"", f"stream ended inside an event: {buffer[:80]!r}"


async def run_query(client: aiohttp.ClientSession, sql: str, **extra: Any) -> tuple[aiohttp.ClientResponse, list[Any]]:
    """POST /api/query and collect every part of the stream."""
    async with client.post("/api/query", json={"sql": sql, **extra}) as response:
        parts = [part async for part in events(response)] if response.status == 200 else []
        return response, parts
