"""Sessions as the gateway sees them: the cookie (optionally signed like Flask-Session) and NATS calls."""

from __future__ import annotations

import re
import secrets
from typing import Any

from aiohttp import web
from itsdangerous import BadSignature, Signer
from nats.aio.client import Client as NATS

from services.gateway.config import GatewayConfig
from shared.bus import request
from shared.contracts import Subjects

# Flask-Session makes sids with secrets.token_urlsafe(32); accept any url-safe token of sane length.
_SID = re.compile(r"^[A-Za-z0-9_-]{16,128}$")


def new_sid() -> str:
    return secrets.token_urlsafe(32)


class SessionCookie:
    """Reads and writes the `session` cookie exactly as Flask-Session 0.8 does."""

    def __init__(self, config: GatewayConfig) -> None:
        self._config = config
        # Flask-Session's _get_signer: Signer(app.secret_key, salt="flask-session", key_derivation="hmac").
        self._signer = Signer(config.secret_key, salt="flask-session", key_derivation="hmac") if config.use_signer else None

    def sid(self, request: web.Request) -> str | None:
        """The session id in the request's cookie, or None if absent, malformed or tampered with."""
        raw = request.cookies.get(self._config.cookie_name)
        if not raw:
            return None
        if self._signer is not None:
            try:
                raw = self._signer.unsign(raw.encode()).decode()
            except (BadSignature, UnicodeError):
                return None
        return raw if _SID.match(raw) else None

    def set(self, response: web.StreamResponse, sid: str) -> None:
        value = self._signer.sign(sid.encode()).decode() if self._signer is not None else sid
        response.set_cookie(
            self._config.cookie_name,
            value,
            max_age=self._config.session_lifetime,
            path="/",
            httponly=True,
            samesite="Lax",
            secure=self._config.cookie_secure or None,
        )

    def expire(self, response: web.StreamResponse) -> None:
        response.del_cookie(self._config.cookie_name, path="/", secure=self._config.cookie_secure or None, httponly=True, samesite="Lax")


class SessionClient:
    """Session reads and writes, each one NATS request to the session service."""

    def __init__(self, nc: NATS, subjects: Subjects, timeout: float) -> None:
        self._nc = nc
        self._subjects = subjects
        self._timeout = timeout

    async def get(self, sid: str) -> dict[str, Any] | None:
        reply = await request(self._nc, self._subjects.session_get, {"sid": sid}, timeout=self._timeout)
        session = reply.get("session")
        return session if isinstance(session, dict) else None

    async def create(self, data: dict[str, Any], replace_sid: str | None) -> str:
        sid = new_sid()
        await request(self._nc, self._subjects.session_set, {"sid": sid, "data": data, "replace_sid": replace_sid}, timeout=self._timeout)
        return sid

    async def patch(self, sid: str, set_fields: dict[str, Any] | None = None, unset: list[str] | None = None) -> dict[str, Any] | None:
        payload: dict[str, Any] = {"sid": sid, "set": set_fields or {}, "unset": unset or []}
        reply = await request(self._nc, self._subjects.session_patch, payload, timeout=self._timeout)
        session = reply.get("session")
        return session if isinstance(session, dict) else None

    async def delete(self, sid: str) -> None:
        await request(self._nc, self._subjects.session_delete, {"sid": sid}, timeout=self._timeout)

    async def ping(self, timeout: float = 1.0) -> bool:
        reply = await request(self._nc, self._subjects.session_ping, {}, timeout=timeout)
        return bool(reply.get("ok"))
