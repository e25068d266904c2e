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
    map holding either under `"user"`. Integer ids become strings; empty ids count as none.
    """
    value = session_or_user
    if isinstance(value, Mapping) and "uid" not in value and "user" in value:
        value = value["user"]
    if isinstance(value, Mapping):
        value = value.get("uid")
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        value = value.strip()
        return value or None
    return None
