"""The session cookie as the gateway reads and writes it: optionally signed, exactly as Flask-Session 0.8 does.

The session service's client is services/gateway/clients.py (SessionClient).
"""

from __future__ import annotations

import re
import secrets

import structlog
from aiohttp import web
from itsdangerous import BadSignature, Signer

from services.gateway.config import GatewayConfig
from shared.contracts import SID_PATTERN

log = structlog.get_logger(__name__)

# Flask-Session makes sids with secrets.token_urlsafe(32); a cookie's sid is read if the session service could store it.
_SID = re.compile(SID_PATTERN)


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
