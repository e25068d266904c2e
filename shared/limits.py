"""Limits that more than one service checks, stated once: the longest SQL, and a conversation's room and message size.

The gateway checks them early (before a quota counts a turn, before a stream starts) and
the owning service checks them again; both refuse with the same code and message.
"""

from __future__ import annotations

from shared.errors import ServiceError

MAX_SQL_CHARS = 100_000
"""The longest SQL a query may hold: POST /api/query and the model's execute_query refuse more, and so does `QueryExecute`."""

TOO_LARGE = "too_large"
CONVERSATION_FULL = "conversation_full"


def check_message_size(what: str, size: int, max_bytes: int) -> None:
    """`too_large` when a message to store (`what` names it) is over `max_bytes` (CONVERSATION_MAX_MESSAGE_BYTES; 0: no limit)."""
    if max_bytes and size > max_bytes:
        raise ServiceError(TOO_LARGE, f"{what} is {size} bytes, more than the {max_bytes} bytes a stored message may hold (CONVERSATION_MAX_MESSAGE_BYTES)")


def has_room(held: int, adding: int, max_messages: int) -> bool:
    """Whether a conversation holding `held` messages may take `adding` more (CONVERSATION_MAX_MESSAGES; 0: no limit)."""
    return not max_messages or held + adding <= max_messages


def conversation_full(held: int, max_messages: int) -> ServiceError:
    """The `conversation_full` refusal for a conversation that holds `held` messages."""
    return ServiceError(CONVERSATION_FULL, f"this conversation holds {held} messages and may hold at most {max_messages} (CONVERSATION_MAX_MESSAGES); start a new conversation")
