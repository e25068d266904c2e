"""Verified examples in a chat turn: the approved examples of the turn's source most like its question, put into the system prompt.

The session service keeps and ranks them (`session.examples.similar`); LLM_EXAMPLES says how
many at most (0: none). A turn goes on without them when the session service cannot answer.
"""

from __future__ import annotations

import structlog
from aiohttp import web

from services.gateway import keys
from services.gateway.chat.chat_request import UIMessage
from services.gateway.clients import ExamplesClient
from shared.access import DEFAULT_SOURCE
from shared.contracts import EXAMPLE_QUESTION_MAX_CHARS, Example
from shared.errors import ServiceError

log = structlog.get_logger(__name__)


def question_of(messages: list[UIMessage]) -> str:
    """The text of the newest user message (the question of this turn)."""
    for message in reversed(messages):
        if message.role == "user":
            return " ".join(p.text for p in message.parts if p.type == "text" and p.text).strip()[:EXAMPLE_QUESTION_MAX_CHARS]
    return ""


async def similar(client: ExamplesClient, source: str | None, question: str, limit: int) -> list[Example]:
    """The examples for this question, or none (and a warning) when they cannot be had."""
    if limit <= 0 or not question:
        return []
    try:
        return await client.similar(source or DEFAULT_SOURCE, question, limit)
    except ServiceError as exc:
        log.warning("chat_examples_unavailable", code=exc.code, error=exc.message)
        return []


def section(examples: list[Example]) -> str:
    """The part of the system prompt that shows them."""
    if not examples:
        return ""
    lines = ["", "Verified examples: questions people of this organisation asked on this source, with the SQL they confirmed answers them. Reuse their tables, joins and filters where they fit:"]
    for example in examples:
        lines += [f"- Question: {example.question}", f"  SQL: {' '.join(example.sql.split())}"]
    return "\n".join(lines)


async def for_turn(app: web.Application, source: str | None, messages: list[UIMessage]) -> str:
    """The system prompt's part for this turn: the LLM_EXAMPLES approved examples most like its question (may be empty)."""
    return section(await similar(app[keys.EXAMPLES], source, question_of(messages), app[keys.CONFIG].llm_examples))
