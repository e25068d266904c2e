"""Who is calling: a verified bearer token on /api/*, else the session cookie; 401 when neither.

Every handler that needs the caller asks here: `identity` for the whole answer,
`current_session` for the sid and session map, `caller_uid` for the user id alone.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import structlog
from aiohttp import web

from services.gateway import keys
from services.gateway.auth.tokens import check_policy, user_from_claims
from services.gateway.auth.web import bearer_token, verifier
from shared.errors import UNAUTHORIZED, ServiceError
from shared.users import signed_in_user, user_id


@dataclass(frozen=True)
class Identity:
    """Who is calling: a cookie session (`sid` set) or a verified bearer token (`sid` None, nothing stored)."""

    sid: str | None
    session: dict[str, Any]

    @property
    def bearer(self) -> bool:
        return self.sid is None

    @property
    def uid(self) -> str:
        """The caller's user id; 401 for a session without one."""
        uid = user_id(self.session)
        if uid is None:
            raise ServiceError(UNAUTHORIZED, "not logged in")
        return uid


async def identity(request: web.Request) -> Identity:
    """The caller: `Authorization: Bearer <ID token>` on /api/*, else the session cookie; 401 when neither."""
    token = bearer_token(request)
    if token is not None:
        claims = await verifier(request).verify(token)
        check_policy(request.app[keys.CONFIG], claims)
        user = user_from_claims(claims, request.app[keys.CONFIG].groups_claim)
        structlog.contextvars.bind_contextvars(uid=user["uid"], auth="bearer")
        return Identity(None, {"user": user, "conversation_id": None})
    sid = request.app[keys.COOKIE].sid(request)
    session = await request.app[keys.SESSIONS].get(sid) if sid else None
    if sid is None or session is None or signed_in_user(session) is None:
        raise ServiceError(UNAUTHORIZED, "not logged in")
    structlog.contextvars.bind_contextvars(uid=user_id(session))
    return Identity(sid, session)


async def current_session(request: web.Request) -> tuple[str | None, dict[str, Any]]:
    """The caller's sid and session map; the sid is None for a bearer request (nothing to write to). 401 when nobody."""
    who = await identity(request)
    return who.sid, who.session


async def caller_uid(request: web.Request) -> str:
    """The user id of the session or bearer token; 401 when nobody is signed in."""
    return (await identity(request)).uid
