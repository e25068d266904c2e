"""The web app's HTTP side: the built page and its hashed assets, security headers, and the small JSON the page needs.

The page itself is built from services/gateway/web by `make` (see docs/web.md) into
services/gateway/static; this module only serves it. Every response gets the security
headers; the Content-Security-Policy allows scripts and styles from this origin only, and
under AUTH_MODE=firebase also the Google endpoints the Firebase sign-in needs.
"""

from __future__ import annotations

import re
from pathlib import Path

from aiohttp import web

from services.gateway import keys
from services.gateway.access import visible_sources
from services.gateway.auth.identity import current_session
from services.gateway.config import GatewayConfig
from services.gateway.sources import DIALECTS, user_connections
from shared.errors import NOT_FOUND, UNAUTHORIZED, UNAVAILABLE, ServiceError
from shared.users import user_id

STATIC_DIR = Path(__file__).resolve().parent / "static"
"""Where `make` (scripts/build_web.py) writes index.html and assets/."""
ASSET_CACHE = "public, max-age=31536000, immutable"
"""Assets carry a content hash in their names, so a name never changes meaning."""
PAGE_CACHE = "no-cache"
"""index.html names the current assets: revalidate it on every load."""
_ASSET_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,128}$")
SOURCES_TIMEOUT_S = 2.0

CSP_KEY = web.AppKey("csp", str)


def content_security_policy(config: GatewayConfig) -> str:
    """No inline script or style, no eval; Firebase's Google endpoints only under AUTH_MODE=firebase with a web config."""
    script, connect, frame, img = ["'self'"], ["'self'"], ["'none'"], ["'self'", "data:"]
    firebase = config.firebase_web
    if firebase is not None:
        # signInWithPopup: gapi from apis.google.com builds an iframe on the auth domain; tokens come from these APIs.
        script.append("https://apis.google.com")
        connect += ["https://identitytoolkit.googleapis.com", "https://securetoken.googleapis.com", "https://www.googleapis.com"]
        frame = [f"https://{firebase['authDomain']}", "https://apis.google.com"]
        img.append("https://*.googleusercontent.com")
    directives = {
        "default-src": ["'none'"],
        "script-src": script,
        "style-src": ["'self'"],
        "img-src": img,
        "font-src": ["'self'"],
        "connect-src": connect,
        "frame-src": frame,
        "manifest-src": ["'self'"],
        "base-uri": ["'none'"],
        "form-action": ["'self'"],
        "frame-ancestors": ["'none'"],
    }
    return "; ".join(f"{name} {' '.join(values)}" for name, values in directives.items())


async def security_headers(request: web.Request, response: web.StreamResponse) -> None:
    """on_response_prepare: the same headers on every response, streamed ones and errors included."""
    headers = response.headers
    headers.setdefault("Content-Security-Policy", request.app[CSP_KEY])
    headers.setdefault("X-Content-Type-Options", "nosniff")
    headers.setdefault("X-Frame-Options", "DENY")
    headers.setdefault("Referrer-Policy", "same-origin")
    # The Firebase popup reports back to its opener; other modes need no opener at all.
    coop = "same-origin-allow-popups" if request.app[keys.CONFIG].firebase_web is not None else "same-origin"
    headers.setdefault("Cross-Origin-Opener-Policy", coop)
    headers.setdefault("Cross-Origin-Resource-Policy", "same-origin")
    headers.setdefault("Permissions-Policy", "camera=(), microphone=(), geolocation=(), payment=(), usb=()")
    if request.app[keys.CONFIG].cookie_secure:
        headers.setdefault("Strict-Transport-Security", "max-age=31536000")


def _not_built() -> ServiceError:
    return ServiceError(UNAVAILABLE, "the web app is not built: run `make web` (or `make run`), which builds services/gateway/web")


async def index(_: web.Request) -> web.StreamResponse:
    """GET /: the page; no-cache, so a new build is picked up on the next load."""
    page = STATIC_DIR / "index.html"
    if not page.is_file():
        raise _not_built()
    return web.FileResponse(page, headers={"Cache-Control": PAGE_CACHE})


async def asset(request: web.Request) -> web.StreamResponse:
    """GET /assets/<name>: a hashed bundle, cached for a year."""
    name = request.match_info["name"]
    path = STATIC_DIR / "assets" / name
    if not _ASSET_NAME.match(name) or name.startswith(".") or not path.is_file():
        raise ServiceError(NOT_FOUND, f"no asset {name!r}")
    return web.FileResponse(path, headers={"Cache-Control": ASSET_CACHE})


async def auth_config(request: web.Request) -> web.Response:
    """GET /auth/config: how the page signs in (no session needed); FIREBASE_WEB_CONFIG under firebase.

    `chat` says whether a language model is configured (without one the page shows how to set one
    up); `signed_in` whether the caller has a session, so that a signed-out page need not ask
    /api/me for a 401 that the browser would log as a failed request; `connections` whether users
    may add their own databases, so that the page need not ask /api/connections for a 503.
    """
    config = request.app[keys.CONFIG]
    try:
        await current_session(request)
        signed_in = True
    except ServiceError as exc:
        if exc.code != UNAUTHORIZED:
            raise
        signed_in = False
    try:
        connections = await request.app[keys.CONNECTIONS].enabled()
    except ServiceError:  # the query service does not answer: the panel says the feature is off
        connections = False
    body = {"auth_mode": config.auth_mode, "firebase": config.firebase_web, "chat": bool(config.llm_base_url), "signed_in": signed_in, "connections": connections}
    return web.json_response(body, headers={"Cache-Control": "no-store"})


async def sources(http_request: web.Request) -> web.Response:
    """GET /api/sources: the sources this user may use (ACCESS_POLICY), with their dialects and the database
    role each is used with (null: the source's own account), the user's own databases, and the default (needs a session)."""
    _, session = await current_session(http_request)
    reply = await http_request.app[keys.QUERY].ping(SOURCES_TIMEOUT_S)
    grants = visible_sources(http_request.app[keys.CONFIG], session, reply.sources)
    listed = [{"name": name, "dialect": reply.dialects.get(name), "role": grant.role, "kind": "operator"} for name, grant in grants.items()]
    uid = user_id(session)
    if reply.connections and uid:
        own = await user_connections(http_request.app, uid)
        names = {record.name for record in own}
        listed = [item for item in listed if item["name"] not in names]  # the user's own connection wins a name (services/gateway/sources.py)
        listed += [{"name": record.name, "dialect": DIALECTS[record.dialect], "role": None, "kind": "connection", "id": record.id} for record in own]
    default = reply.default if reply.default in grants else None
    return web.json_response({"sources": listed, "default": default, "connections": reply.connections})


def setup(app: web.Application) -> None:
    """The security headers on every response (the web app's routes are in routes.py)."""
    app[CSP_KEY] = content_security_policy(app[keys.CONFIG])
    app.on_response_prepare.append(security_headers)
