"""The signed-in user as stored in a session, in both the current and the legacy shape.

Current sessions hold `"user": {"uid": ..., "email": ..., "name": ...}`; sessions written
by older versions of the Flask app hold `"user": "<id>"`. Code that needs the user's id
calls `user_id()` and never looks at the shape itself.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def user_id(session_or_user: Any) -> str | None:
    """The user's id from a session map or from its `user` value; None when nobody is signed in.

    Accepts `{"uid": "u1", ...}` (a user map), `"u1"` (a legacy plain id), or a whole session
    map holding either under `"user"`. A `user` of any other type (a number, a list, a bool)
    is nobody: only a map may carry a non-string id (an integer `uid` becomes a string).
    Empty ids count as none.
    """
    value = session_or_user
    if isinstance(value, Mapping) and "uid" not in value and "user" in value:
        value = value["user"]
    if isinstance(value, Mapping):
        value = value.get("uid")
        if isinstance(value, int) and not isinstance(value, bool):
            return str(value)
    if isinstance(value, str):
        value = value.strip()
        return value or None
    return None


def signed_in_user(session: Mapping[str, Any]) -> Mapping[str, Any] | str | None:
    """The session's `user` when it is a user map or a legacy string id; None for any other value."""
    user = session.get("user")
    if isinstance(user, Mapping) and user:
        return user
    if isinstance(user, str) and user.strip():
        return user
    return None
