"""One chat turn: model steps and tool calls in a loop, streamed to the client as they happen.

Like the AI SDK's `streamText` with tools: each step streams the model's text, reasoning and
tool inputs; the tools run; their summaries go back to the model for the next step, until it
answers without calling a tool or LLM_MAX_STEPS steps were made.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any

from services.gateway.chat import prompt, tools
from services.gateway.chat.model import (
    ModelClient,
    ModelError,
    ReasoningDelta,
    StepEnd,
    TextDelta,
    ToolInputDelta,
    ToolInputStart,
)
from services.gateway.chat.ui import UIStream


@dataclass
class TurnStats:
    """What one turn did, for its log line and its `finish` metadata."""

    steps: int = 0
    tool_calls: list[str] = field(default_factory=list)
    input_tokens: int = 0
    output_tokens: int = 0
    outcome: str = "ok"


async def run_turn(model: ModelClient, ui: UIStream, ctx: tools.ToolContext, messages: list[dict[str, Any]], max_steps: int, stats: TurnStats) -> None:
    """Stream the whole turn to `ui`; model failures end it with an `error` part, never an exception.

    ConnectionResetError (the client went away) and CancelledError propagate.
    """
    await ui.start()
    try:
        for _ in range(max_steps):
            stats.steps += 1
            await ui.start_step()
            end = await _stream_step(model, ui, messages, ctx.tools)
            stats.input_tokens += end.input_tokens
            stats.output_tokens += end.output_tokens
            if not end.tool_calls:
                break
            await ui.close_open()
            messages.append(
                {
                    "role": "assistant",
                    "content": end.text or None,
                    "tool_calls": [{"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}} for c in end.tool_calls],
                }
            )
            for call in end.tool_calls:
                stats.tool_calls.append(call.name)
                result = await tools.run(ctx, call)
                messages.append(prompt.tool_message(call.id, result))
            await ui.finish_step()
        else:
            stats.outcome = "step_limit"
            await ui.finish_step()
            await ui.start_step()
            await ui.text(prompt.STEP_LIMIT_TEXT.format(steps=max_steps))
    except ModelError as exc:
        stats.outcome = exc.outcome
        await ui.error(exc.message)
    metadata: dict[str, Any] = {"model": model.model, "usage": {"inputTokens": stats.input_tokens, "outputTokens": stats.output_tokens}, "steps": stats.steps}
    if ctx.source:  # the source a rated answer ran on (POST /api/feedback)
        metadata["source"] = ctx.source
    await ui.finish(metadata)


async def _stream_step(model: ModelClient, ui: UIStream, messages: list[dict[str, Any]], tool_list: list[dict[str, Any]]) -> StepEnd:
    async with contextlib.aclosing(model.step(messages, tool_list)) as events:
        async for item in events:
            match item:
                case TextDelta(text=text):
                    await ui.text(text)
                case ReasoningDelta(text=text):
                    await ui.reasoning(text)
                case ToolInputStart(call=call):
                    await ui.tool_input_start(call.id, call.name)
                case ToolInputDelta(call=call, text=text):
                    await ui.tool_input_delta(call.id, text)
                case StepEnd():
                    return item
    raise ModelError("malformed", "the language model ended its answer without sending anything; try again")
