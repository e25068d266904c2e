"""Redis key names, laid out so that every multi-key script touches one Redis Cluster slot.

A user's conversation lists, index, titles and quota share the hash tag `{u:<uid>}`, so a
script over them runs on one node. `session:<sid>` keeps Flask-Session's exact name (its
calls are single-key); a session's write-back guard borrows the session key as its tag.
The names are the same on a single Redis, so one layout serves both.
"""

from __future__ import annotations

WRITEBACK_GUARD_PREFIX = "dbgenie:session-writeback:"
"""Keys that order concurrent write-backs after an outage (short TTL)."""
LIMIT_PREFIX = "limit:"
QUOTA_KEY_PREFIX = "quota:"
"""A limiter key `quota:<uid>` (the gateway's chat quota) is a user's, so it takes the user's tag."""


def user_tag(uid: str) -> str:
    return "{u:" + uid + "}"


def list_key(uid: str, conversation_id: str) -> str:
    return f"conversation:{user_tag(uid)}:{conversation_id}"


def index_key(uid: str) -> str:
    return f"conversations:{user_tag(uid)}"


def titles_key(uid: str) -> str:
    return f"conversation_titles:{user_tag(uid)}"


def limit_key(key: str) -> str:
    """The one hash holding every window of limiter key `key` (`quota:<uid>`, `login:<ip>`)."""
    if key.startswith(QUOTA_KEY_PREFIX):
        return f"{LIMIT_PREFIX}{user_tag(key.removeprefix(QUOTA_KEY_PREFIX))}:quota"
    return LIMIT_PREFIX + "{" + key + "}"


def guard_key(key: str) -> str:
    """The write-back guard of `key`, in `key`'s slot: `key`'s own hash tag, or `key` whole as the tag."""
    start = key.find("{")
    if start >= 0 and key.find("}", start + 1) > start + 1:
        return WRITEBACK_GUARD_PREFIX + key
    return WRITEBACK_GUARD_PREFIX + "{" + key + "}"


def legacy_history_keys(uid: str, conversation_id: str = "") -> tuple[str, str, str]:
    """The names before the hash tags (list, index, titles), for the migration."""
    return f"conversation:{uid}:{conversation_id}", f"conversations:{uid}", f"conversation_titles:{uid}"
