"""The HTTP side of sign-in: the verifier's cleanup context, bearer tokens, client IPs and the CSRF check."""

from __future__ import annotations

import ipaddress
from collections.abc import AsyncIterator

import aiohttp
import structlog
from aiohttp import web

from services.gateway import keys
from services.gateway.auth.tokens import KeyCache, TokenVerifier
from services.gateway.config import GatewayConfig
from services.gateway.errors import error_response
from shared.errors import UNAUTHORIZED, ServiceError

log = structlog.get_logger(__name__)

VERIFIER = web.AppKey("token_verifier", TokenVerifier)

_STATE_CHANGING = frozenset({"POST", "PUT", "PATCH", "DELETE"})


async def token_verifier(app: web.Application) -> AsyncIterator[None]:
    """Cleanup context: the aiohttp session that fetches signing keys, and the verifier using it."""
    config = app[keys.CONFIG]
    async with aiohttp.ClientSession(headers={"User-Agent": "dbgenie-gateway"}, raise_for_status=False) as http:
        cache = KeyCache(
            http,
            issuer=config.issuer,
            jwks_url=config.jwks_url,
            discovery_url=config.discovery_url,
            min_ttl=config.auth_jwks_cache_min_s,
            max_ttl=config.auth_jwks_cache_max_s,
        )
        app[VERIFIER] = TokenVerifier(config, cache)
        yield


def verifier(request: web.Request) -> TokenVerifier:
    found = request.app.get(VERIFIER)
    if found is None:
        raise ServiceError(UNAUTHORIZED, f"bearer tokens are not accepted (AUTH_MODE is {request.app[keys.CONFIG].auth_mode!r})")
    return found


def bearer_token(request: web.Request) -> str | None:
    """The ID token in `Authorization: Bearer ...` on an /api/* request; None when there is none.

    Raises 401 for an Authorization header that says Bearer but carries nothing.
    """
    if not request.path.startswith("/api/"):
        return None
    scheme, _, token = request.headers.get("Authorization", "").strip().partition(" ")
    if scheme.lower() != "bearer":
        return None
    token = token.strip()
    if not token:
        raise ServiceError(UNAUTHORIZED, "the Authorization header holds no bearer token")
    return token


def _address(raw: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    raw = raw.strip()
    if raw.startswith("[") and "]" in raw:  # [v6]:port
        raw = raw[1 : raw.index("]")]
    elif raw.count(":") == 1:  # v4:port
        raw = raw.split(":", 1)[0]
    try:
        return ipaddress.ip_address(raw)
    except ValueError:
        return None


def _trusted(config: GatewayConfig, address: ipaddress.IPv4Address | ipaddress.IPv6Address | None) -> bool:
    return address is not None and any(address in network for network in config.trusted_proxies)


def _from_trusted_proxy(request: web.Request) -> bool:
    return _trusted(request.app[keys.CONFIG], _address(request.remote or ""))


def client_ip(request: web.Request) -> str:
    """The client's address: the peer, or from X-Forwarded-For when the peer is a trusted proxy.

    X-Forwarded-For is read right to left, skipping trusted proxies; the first other address is the client.
    """
    config = request.app[keys.CONFIG]
    peer = request.remote or "unknown"
    if not _trusted(config, _address(peer)):
        return peer
    hops = [hop for header in request.headers.getall("X-Forwarded-For", []) for hop in header.split(",") if hop.strip()]
    client = peer
    for hop in reversed(hops):
        address = _address(hop)
        if address is None:
            break  # garbage from an untrusted hop: stop at the last address we can vouch for
        client = str(address)
        if not _trusted(config, address):
            break
    return client


def own_origin(request: web.Request) -> str:
    """The gateway's origin as the browser sees it: PUBLIC_ORIGIN, else scheme and Host (forwarded ones from trusted proxies)."""
    config = request.app[keys.CONFIG]
    if config.public_origin:
        return config.public_origin
    scheme, host = request.scheme, request.host
    if _from_trusted_proxy(request):
        scheme = _last(request.headers.get("X-Forwarded-Proto")) or scheme
        host = _last(request.headers.get("X-Forwarded-Host")) or host
    scheme = scheme.lower()
    host = host.lower()
    default = ":443" if scheme == "https" else ":80"
    if host.endswith(default):
        host = host[: -len(default)]
    return f"{scheme}://{host}"


def _last(value: str | None) -> str | None:
    """The value the nearest proxy set (the last of a comma list)."""
    if not value:
        return None
    return value.split(",")[-1].strip() or None


def _normalised(origin: str) -> str:
    origin = origin.strip().lower().rstrip("/")
    for default in ("https://", ":443"), ("http://", ":80"):
        if origin.startswith(default[0]) and origin.endswith(default[1]):
            return origin[: -len(default[1])]
    return origin


def origin_problem(request: web.Request, *, require: bool) -> str | None:
    """Why this request's origin is not trusted, or None when it is.

    With `require`, a request without Origin must say `Sec-Fetch-Site: same-origin`; without it,
    only a present Origin (or Sec-Fetch-Site) is checked.
    """
    origin = request.headers.get("Origin")
    if origin is not None and origin.strip().lower() != "null":
        given = _normalised(origin)
        config = request.app[keys.CONFIG]
        if given == own_origin(request) or given in config.allowed_origins:
            return None
        return "requests from this origin are not allowed (not the gateway's own origin nor in ALLOWED_ORIGINS)"
    if origin is not None:
        return "requests from an opaque origin (Origin: null) are not allowed"
    site = request.headers.get("Sec-Fetch-Site")
    if site == "same-origin":
        return None
    if site is None and not require:
        return None
    return "a state-changing request with the session cookie needs an Origin header or Sec-Fetch-Site: same-origin"


@web.middleware
async def csrf(request: web.Request, handler: web.Handler) -> web.StreamResponse:
    """Refuse cross-site use of the cookie: state-changing cookie requests and logins need a trusted origin.

    Bearer requests carry their own credential and are exempt; so are requests without the cookie
    (they are not authenticated by it), except a login, whose Origin is always checked when given.
    """
    if request.method in _STATE_CHANGING:
        problem = None
        if request.path == "/auth/login":
            problem = origin_problem(request, require=False)
        elif request.path == "/auth/logout" or request.path.startswith("/api/"):
            has_bearer = request.path.startswith("/api/") and request.headers.get("Authorization", "").strip().lower().startswith("bearer ")
            if not has_bearer and request.app[keys.CONFIG].cookie_name in request.cookies:
                problem = origin_problem(request, require=True)
        if problem is not None:
            log.warning("csrf_refused", origin=request.headers.get("Origin"), sec_fetch_site=request.headers.get("Sec-Fetch-Site"))
            return error_response("forbidden", problem)
    return await handler(request)
