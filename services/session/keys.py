"""Redis key names, laid out so that every multi-key script touches one Redis Cluster slot.

A user's conversation lists, index, titles and quota share the hash tag `{u:<uid>}`, so a
script over them runs on one node. `session:<sid>` keeps Flask-Session's exact name (its
calls are single-key); a session's write-back guard borrows the session key as its tag.
A user's connection records take the user's tag too; every verified example shares the
one tag `{examples}` (bounded: at most MAX_PER_SOURCE per source), so the per-source hash and
the set of sources change in one MULTI. The names are the same on a single Redis, so one
layout serves both.
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


EXAMPLES_TAG = "{examples}"
EXAMPLES_SOURCES_KEY = f"examples:{EXAMPLES_TAG}:sources"
"""The set of sources that have examples."""


def examples_key(source: str) -> str:
    """The hash of one source's examples (id -> MessagePack Example); a source named `sources` cannot meet the set."""
    return f"examples:{EXAMPLES_TAG}:source:{source}"


def connections_key(uid: str) -> str:
    """The hash of a user's connection records (record id -> MessagePack ConnectionRecord)."""
    return f"connections:{user_tag(uid)}"


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


LEGACY_EXAMPLES_SOURCES_KEY = "examples:sources"
LEGACY_EXAMPLES_PREFIX = "examples:"
LEGACY_CONNECTIONS_PREFIX = "connections:"
"""Examples (`examples:<source>`, `examples:sources`) and connections (`connections:<uid>`) before the hash tags."""
