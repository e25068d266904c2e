"""The language model client: one streamed Chat Completions step through the official openai SDK.

Servers differ in how they stream tool calls (OpenAI, Gemini's OpenAI endpoint, Ollama,
llama.cpp, vLLM...): the index may be missing, complete calls may all arrive at index 0
with distinct ids, `finish_reason` may be `stop` although calls were made. `ToolCallAssembler`
accepts all of these. Every failure becomes a `ModelError` with a message fit for the user;
the API key never appears in one.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import aiohttp

if TYPE_CHECKING:  # imported where a model client is made: half of the gateway's start, for a feature that may be off
    import httpx2
    import openai

from services.gateway.chat import metrics
from services.gateway.config import GatewayConfig

MAX_DETAIL_CHARS = 200


class ModelError(Exception):
    """Raised when a model request fails; `message` is safe to show to the user, `outcome` labels metrics."""

    def __init__(self, outcome: str, message: str) -> None:
        super().__init__(message)
        self.outcome = outcome
        self.message = message


@dataclass
class ToolCall:
    """One call the model asked for; `arguments` is the raw JSON text it streamed."""

    id: str
    name: str = ""
    arguments: str = ""
    started: bool = False  # tool-input-start was written


@dataclass
class TextDelta:
    text: str


@dataclass
class ReasoningDelta:
    text: str


@dataclass
class ToolInputStart:
    call: ToolCall


@dataclass
class ToolInputDelta:
    call: ToolCall
    text: str


@dataclass
class StepEnd:
    """The end of one model step: the calls it made (possibly none), its finish reason and usage."""

    tool_calls: list[ToolCall]
    text: str
    finish_reason: str | None
    input_tokens: int = 0
    output_tokens: int = 0


StepEvent = TextDelta | ReasoningDelta | ToolInputStart | ToolInputDelta | StepEnd


@dataclass
class ToolCallAssembler:
    """Builds tool calls from streamed fragments, whichever of the known variants a server sends."""

    calls: list[ToolCall] = field(default_factory=list)
    _by_index: dict[int, ToolCall] = field(default_factory=dict)
    _by_id: dict[str, ToolCall] = field(default_factory=dict)

    def add(self, index: int | None, call_id: str | None, name: str | None, arguments: str | None) -> ToolCall:
        """Fold one fragment in and return the call it belongs to."""
        call: ToolCall | None = None
        if call_id and call_id in self._by_id:
            call = self._by_id[call_id]
        elif call_id:
            # A new id is a new call, even at an index already used (servers that send whole calls at index 0).
            call = None
        elif index is not None and index in self._by_index:
            call = self._by_index[index]
        elif self.calls and index is None:
            call = self.calls[-1]  # no index and no id: a continuation of the last call
        if call is None:
            call = ToolCall(id=call_id or f"call_{len(self.calls)}_{id(self):x}")
            self.calls.append(call)
            self._by_id[call.id] = call
        if index is not None:
            self._by_index[index] = call
        if name and not call.name:
            call.name = name
        if arguments:
            call.arguments += arguments
        return call


def parse_arguments(call: ToolCall) -> dict[str, Any]:
    """The call's arguments as an object; ValueError with a message for the model when they are not."""
    raw = call.arguments.strip() or "{}"
    try:
        value = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ValueError(f"the arguments of {call.name or 'the tool call'} are not valid JSON ({exc.msg} at position {exc.pos}); send a JSON object") from None
    if not isinstance(value, dict):
        raise ValueError(f"the arguments of {call.name or 'the tool call'} must be a JSON object")
    return value


# What `chat.completions.create` sends with every request: the API key as a bearer token.
_REQUEST_OPTIONS: openai.RequestOptions = {"security": {"bearer_auth": True}}


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _count(value: Any) -> int:
    return value if isinstance(value, int) else 0


class ModelClient:
    """Streams model steps from an OpenAI-compatible endpoint."""

    def __init__(self, config: GatewayConfig) -> None:
        self.model = config.llm_model
        self._temperature = config.llm_temperature
        self._timeout_s = config.llm_timeout_s
        host = urlsplit(config.llm_base_url)
        self._where = f"{host.scheme}://{host.hostname}{f':{host.port}' if host.port else ''}"
        from openai import AsyncOpenAI, DefaultAioHttpClient

        self._client = AsyncOpenAI(
            base_url=config.llm_base_url,
            # Local servers (Ollama, llama.cpp) take no key, but the SDK insists on one.
            api_key=config.llm_api_key or "none",
            timeout=config.llm_timeout_s,
            max_retries=config.llm_max_retries,
            # aiohttp under the SDK (its `aiohttp` extra, vendored): a pooled keep-alive connection
            # costs less per request than the default httpx2 transport, and the gateway runs aiohttp anyway.
            http_client=DefaultAioHttpClient(),
        )

    async def close(self) -> None:
        await self._client.close()

    async def step(self, messages: Sequence[dict[str, Any]], tools: Sequence[dict[str, Any]]) -> AsyncIterator[StepEvent]:
        """One streamed completion: deltas as they come, then a StepEnd; raises ModelError."""
        import httpx2
        import openai

        body: dict[str, Any] = {
            "model": self.model,
            "messages": list(messages),
            "tools": list(tools),
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        if self._temperature is not None:
            body["temperature"] = self._temperature
        assembler = ToolCallAssembler()
        text: list[str] = []
        finish_reason: str | None = None
        input_tokens = output_tokens = 0
        try:
            # The SDK's generic `post`, with its auth, retries, timeouts, error types and SSE
            # decoding, rather than `chat.completions.create`: that one walks the whole body
            # against its TypedDicts and builds a pydantic object per chunk, several ms per step
            # for plain dicts that come out unchanged (see docs/benchmarks.md, "Chat").
            stream = await self._client.post(
                "/chat/completions",
                cast_to=object,
                body=body,
                options=_REQUEST_OPTIONS,
                stream=True,
                stream_cls=openai.AsyncStream[object],
            )
            async with stream:
                async for chunk in stream:
                    if not isinstance(chunk, dict):
                        raise ValueError("a chunk that is not a JSON object")
                    usage = chunk.get("usage")
                    if isinstance(usage, dict):
                        input_tokens = _count(usage.get("prompt_tokens")) or input_tokens
                        output_tokens = _count(usage.get("completion_tokens")) or output_tokens
                    for choice in chunk.get("choices") or ():
                        if choice.get("finish_reason"):
                            finish_reason = str(choice["finish_reason"])
                        delta = choice.get("delta")
                        if not isinstance(delta, dict):
                            continue
                        # Reasoning models served by vLLM, DeepSeek or llama.cpp send it beside the content.
                        reasoning = delta.get("reasoning_content") or delta.get("reasoning")
                        if isinstance(reasoning, str) and reasoning:
                            yield ReasoningDelta(reasoning)
                        content = delta.get("content")
                        if isinstance(content, str) and content:
                            text.append(content)
                            yield TextDelta(content)
                        for fragment in delta.get("tool_calls") or ():
                            # Read leniently: some servers leave out `index` (or more) that OpenAI always sends.
                            function = fragment.get("function") or {}
                            name = _text(function.get("name"))
                            arguments = _text(function.get("arguments"))
                            index = fragment.get("index")
                            call = assembler.add(index if isinstance(index, int) else None, _text(fragment.get("id")), name, arguments)
                            if not call.started and call.name:
                                call.started = True
                                yield ToolInputStart(call)
                                if call.arguments:
                                    yield ToolInputDelta(call, call.arguments)
                            elif call.started and arguments:
                                yield ToolInputDelta(call, arguments)
        except (asyncio.CancelledError, GeneratorExit):  # the client went away: the request is closed
            metrics.LLM_REQUESTS.labels("cancelled").inc()
            raise
        except openai.APIStatusError as exc:
            raise self._status_error(exc) from None
        except openai.APITimeoutError as exc:
            if _refused(exc):
                metrics.LLM_REQUESTS.labels("connection").inc()
                raise ModelError("connection", f"cannot reach the language model at {self._where}; try again later") from None
            metrics.LLM_REQUESTS.labels("timeout").inc()
            raise ModelError("timeout", f"the language model did not answer within {self._timeout_s:g} s; try again") from None
        except (openai.APIConnectionError, httpx2.TransportError):
            metrics.LLM_REQUESTS.labels("connection").inc()
            raise ModelError("connection", f"cannot reach the language model at {self._where}; try again later") from None
        except (openai.APIError, ValueError, TypeError, KeyError, AttributeError):
            # A streamed {"error": ...} object, or a chunk that is not JSON or not a completion chunk.
            metrics.LLM_REQUESTS.labels("malformed").inc()
            raise ModelError("malformed", "the language model sent a malformed response; try again") from None
        calls = [c for c in assembler.calls if c.name or c.arguments]
        if not calls and not text and finish_reason is None:
            metrics.LLM_REQUESTS.labels("malformed").inc()
            raise ModelError("malformed", "the language model ended its answer without sending anything; try again")
        metrics.LLM_REQUESTS.labels("ok").inc()
        metrics.LLM_TOKENS.labels("input").inc(input_tokens)
        metrics.LLM_TOKENS.labels("output").inc(output_tokens)
        yield StepEnd(calls, "".join(text), finish_reason, input_tokens, output_tokens)

    def _status_error(self, exc: openai.APIStatusError) -> ModelError:
        status = exc.status_code
        if status in (401, 403):
            outcome, message = "auth", "the language model refused the API key"
        elif status == 429:
            delay = _retry_after(exc.response.headers)
            outcome = "rate_limited"
            message = "the language model is rate limited" + (f"; try again in {delay} s" if delay is not None else "; try again later")
        elif status >= 500:
            outcome, message = "server_error", f"the language model failed (HTTP {status}); try again later"
        else:
            outcome, message = "rejected", f"the language model rejected the request (HTTP {status}): {_detail(exc)}"
        metrics.LLM_REQUESTS.labels(outcome).inc()
        return ModelError(outcome, message)


def _refused(exc: BaseException) -> bool:
    """Whether a "timeout" was in fact a refused or dropped connection.

    The SDK's aiohttp transport maps every aiohttp.ClientConnectionError, a refused
    connection included, to a connect *timeout*; the aiohttp error underneath tells.
    """
    cause = exc.__cause__
    while cause is not None:
        if isinstance(cause, aiohttp.ClientConnectionError):
            return not isinstance(cause, TimeoutError)
        cause = cause.__cause__
    return False


def _retry_after(headers: httpx2.Headers) -> int | None:
    for header, divisor in (("retry-after-ms", 1000), ("retry-after", 1)):
        raw = headers.get(header)
        if raw is None:
            continue
        try:
            return max(1, round(float(raw) / divisor))
        except ValueError:
            continue
    return None


def _detail(exc: openai.APIStatusError) -> str:
    body = exc.body
    message = body.get("message") if isinstance(body, dict) else None
    text = message if isinstance(message, str) else f"{exc.response.reason_phrase}"
    return text if len(text) <= MAX_DETAIL_CHARS else text[:MAX_DETAIL_CHARS] + "…"
