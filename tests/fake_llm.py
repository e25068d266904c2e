"""A fake OpenAI-compatible model server on loopback: `POST /v1/chat/completions`, scripted per test.

It speaks the wire format the real API speaks (SSE `chat.completion.chunk` objects, then
`data: [DONE]`; JSON error bodies with their statuses), so the gateway's real openai SDK
talks to it as to OpenAI. Every request body is recorded; `closed` is set when a client
hangs up on a reply that was still streaming or still waiting.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

MODEL = "fake-gpt"


@dataclass
class Stream:
    """A 200 streamed reply: these chunks, then `[DONE]` (or, with `hang`, nothing more until the client leaves).

    `delay_s` waits that long before each chunk, as a slow model does between tokens.
    """

    chunks: list[dict[str, Any]]
    hang: bool = False
    done: bool = True
    delay_s: float = 0.0


@dataclass
class Status:
    """A non-streamed error reply."""

    status: int
    body: dict[str, Any]
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class Raw:
    """Bytes that are no valid stream."""

    body: bytes
    content_type: str = "text/event-stream"


@dataclass
class Hang:
    """Accept the request and answer nothing until the client leaves."""


Reply = Stream | Status | Raw | Hang


def _chunk(cid: str, delta: dict[str, Any] | None, finish_reason: str | None = None, usage: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "id": cid,
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": MODEL,
        "service_tier": "default",
        "system_fingerprint": "fp_fake",
        "choices": [] if delta is None else [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}],
        "usage": usage,
    }


def _usage(prompt: int, completion: int) -> dict[str, Any]:
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
        "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0, "accepted_prediction_tokens": 0, "rejected_prediction_tokens": 0},
    }


def text(*pieces: str, usage: tuple[int, int] = (50, 7), reasoning: Sequence[str] = (), delay_s: float = 0.0) -> Stream:
    """The model answering in text, streamed piece by piece, as OpenAI streams it (`delay_s` before each chunk)."""
    cid = f"chatcmpl-{uuid.uuid4().hex[:24]}"
    chunks = [_chunk(cid, {"role": "assistant", "content": "", "refusal": None})]
    chunks += [_chunk(cid, {"reasoning_content": r}) for r in reasoning]
    chunks += [_chunk(cid, {"content": p}) for p in pieces]
    chunks.append(_chunk(cid, {}, "stop"))
    chunks.append(_chunk(cid, None, usage=_usage(*usage)))
    return Stream(chunks, delay_s=delay_s)


def tool_calls(*calls: tuple[str, dict[str, Any] | str], usage: tuple[int, int] = (80, 20), finish_reason: str = "tool_calls", index: bool = True, same_index: bool = False) -> Stream:
    """The model calling tools: per call a first chunk with id and name, then its arguments in pieces.

    `finish_reason="stop"`, `index=False` (no index at all) and `same_index=True` (every call
    at index 0, told apart by its id) imitate servers that stream tool calls differently.
    """
    cid = f"chatcmpl-{uuid.uuid4().hex[:24]}"
    chunks = [_chunk(cid, {"role": "assistant", "content": None, "refusal": None})]
    for i, (name, args) in enumerate(calls):
        raw = args if isinstance(args, str) else json.dumps(args)
        head: dict[str, Any] = {"id": f"call_{uuid.uuid4().hex[:24]}", "type": "function", "function": {"name": name, "arguments": ""}}
        if index:
            head["index"] = 0 if same_index else i
        chunks.append(_chunk(cid, {"tool_calls": [head]}))
        third = max(1, len(raw) // 3)
        for piece in (raw[:third], raw[third : 2 * third], raw[2 * third :]):
            if piece:
                fragment: dict[str, Any] = {"function": {"arguments": piece}}
                if index:
                    fragment["index"] = 0 if same_index else i
                chunks.append(_chunk(cid, {"tool_calls": [fragment]}))
    chunks.append(_chunk(cid, {}, finish_reason))
    chunks.append(_chunk(cid, None, usage=_usage(*usage)))
    return Stream(chunks)


def error(status: int, message: str, kind: str, headers: dict[str, str] | None = None) -> Status:
    return Status(status, {"error": {"message": message, "type": kind, "param": None, "code": None}}, headers or {})


class FakeLLM:
    """The server; `script` holds the replies still to give, one per request, in order."""

    def __init__(self) -> None:
        self.script: list[Reply] = []
        self.requests: list[dict[str, Any]] = []
        self.authorization: list[str | None] = []
        self.closed = asyncio.Event()
        self.streaming = asyncio.Event()
        self._runner: web.AppRunner | None = None
        self.port = 0

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def then(self, *replies: Reply) -> FakeLLM:
        self.script.extend(replies)
        return self

    async def start(self) -> FakeLLM:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._completions)
        # Cancel the handler when the client hangs up: that is how the fake sees a stream closed.
        self._runner = web.AppRunner(app, handler_cancellation=True, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _completions(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self.requests.append(body)
        self.authorization.append(request.headers.get("Authorization"))
        if not self.script:
            return web.json_response({"error": {"message": "the fake has no reply scripted", "type": "server_error"}}, status=500)
        reply = self.script.pop(0)
        try:
            match reply:
                case Status(status=status, body=payload, headers=headers):
                    return web.json_response(payload, status=status, headers=headers)
                case Raw(body=raw, content_type=content_type):
                    return web.Response(body=raw, status=200, content_type=content_type)
                case Hang():
                    await asyncio.Event().wait()
                    raise AssertionError("unreachable")
                case Stream(chunks=chunks, hang=hang, done=done, delay_s=delay_s):
                    response = web.StreamResponse(headers={"Content-Type": "text/event-stream; charset=utf-8", "Cache-Control": "no-cache"})
                    await response.prepare(request)
                    for chunk in chunks:
                        if delay_s:
                            await asyncio.sleep(delay_s)
                        await response.write(b"data: " + json.dumps(chunk).encode() + b"\n\n")
                    if hang:
                        self.streaming.set()
                        await asyncio.Event().wait()
                    if done:
                        await response.write(b"data: [DONE]\n\n")
                    await response.write_eof()
                    return response
        except asyncio.CancelledError:
            self.closed.set()
            raise
        raise AssertionError(f"unknown reply {reply!r}")
