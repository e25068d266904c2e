"""shared.users.user_id reads the signed-in user's id from both session shapes."""

from __future__ import annotations

from typing import Any

import pytest

from shared.users import user_id


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ({"uid": "u-1", "email": "a@example.com"}, "u-1"),  # a user map
        ("u-1", "u-1"),  # a legacy plain id
        ({"user": {"uid": "u-1", "name": "A"}, "_permanent": True}, "u-1"),  # a session, current shape
        ({"user": "u-1", "_permanent": True}, "u-1"),  # a session, legacy shape
        ({"user": {"uid": 42}}, "42"),  # a map may carry an integer id
        ({"user": 42}, None),  # a bare number is not a user
        ({"user": [1]}, None),
        ({"user": {"uid": True}}, None),
        ({"_permanent": True}, None),
        ({"user": None}, None),
        ({"user": {"email": "a@example.com"}}, None),
        ({"user": ""}, None),
        ({"user": True}, None),
        (None, None),
        ("", None),
    ],
)
def test_user_id_reads_both_formats(value: Any, expected: str | None) -> None:
    assert user_id(value) == expected
