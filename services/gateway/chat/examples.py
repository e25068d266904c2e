"""Verified examples in a chat turn: the approved examples of the turn's source most like its question, put into the system prompt.

The session service keeps and ranks them (`session.examples.similar`); LLM_EXAMPLES says how
many at most (0: none). A turn goes on without them when the session service cannot answer.
"""

from __future__ import annotations

import structlog
from nats.aio.client import Client as NATS

from services.gateway.chat.history import UIMessage
from shared.bus import request
from shared.contracts import EXAMPLE_QUESTION_MAX_CHARS, Example, ExampleSimilar, ExamplesReply, Subjects
from shared.errors import ServiceError

log = structlog.get_logger(__name__)

DEFAULT_SOURCE = "default"


def question_of(messages: list[UIMessage]) -> str:
    """The text of the newest user message (the question of this turn)."""
    for message in reversed(messages):
        if message.role == "user":
            return " ".join(p.text for p in message.parts if p.type == "text" and p.text).strip()[:EXAMPLE_QUESTION_MAX_CHARS]
    return ""


async def similar(nc: NATS, subjects: Subjects, source: str | None, question: str, limit: int, timeout: float) -> list[Example]:
    """The examples for this question, or none (and a warning) when they cannot be had."""
    if limit <= 0 or not question:
        return []
    try:
        reply = await request(nc, subjects.session_examples("similar"), ExampleSimilar(source=source or DEFAULT_SOURCE, question=question, limit=limit), timeout=timeout, reply=ExamplesReply)
    except ServiceError as exc:
        log.warning("chat_examples_unavailable", code=exc.code, error=exc.message)
        return []
    return reply.examples


def section(examples: list[Example]) -> str:
    """The part of the system prompt that shows them."""
    if not examples:
        return ""
    lines = ["", "Verified examples: questions people of this organisation asked on this source, with the SQL they confirmed answers them. Reuse their tables, joins and filters where they fit:"]
    for example in examples:
        lines += [f"- Question: {example.question}", f"  SQL: {' '.join(example.sql.split())}"]
    return "\n".join(lines)
