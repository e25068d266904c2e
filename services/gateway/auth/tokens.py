"""ID token verification: signing keys fetched with aiohttp and cached, then PyJWT checks every claim.

Only RS256 and ES256 are accepted, with the algorithm taken from the key the issuer
publishes (never from the token alone), so `none` and HMAC key-confusion tokens fail.
"""

from __future__ import annotations

import asyncio
import math
import re
import time
from collections.abc import Callable, Mapping
from typing import Any

import aiohttp
import jwt
import orjson
import structlog
from jwt import PyJWK

from services.gateway.config import GatewayConfig
from shared.access import clean_groups
from shared.errors import UNAUTHORIZED, UNAVAILABLE, ServiceError

log = structlog.get_logger(__name__)

ALGORITHMS = ("RS256", "ES256")
FORBIDDEN = "forbidden"
MAX_TOKEN_CHARS = 16384
MAX_SUB_CHARS = 128
UNKNOWN_KID_REFETCH_S = 30.0
"""An unknown `kid` refetches the keys at most this often, so forged kids cannot hammer the issuer."""
FAILURE_BACKOFF_S = 5.0
"""After a failed fetch, the next attempt waits this long (cached keys, if any, serve meanwhile)."""
FETCH_TIMEOUT_S = 5.0
MAX_DOCUMENT_BYTES = 1024 * 1024
_MAX_AGE = re.compile(r"(?:^|,)\s*max-age\s*=\s*\"?(\d+)\"?", re.IGNORECASE)
_SHOWN_ALG = re.compile(r"^[A-Za-z0-9]{1,12}$")


class RetryLater(ServiceError):
    """Raised when the caller should try again after `retry_after` seconds (keys unreachable, rate limited)."""

    def __init__(self, code: str, message: str, retry_after: int) -> None:
        super().__init__(code, message)
        self.retry_after = max(1, retry_after)


class _FetchFailed(Exception):
    """Raised inside the key cache when the discovery document or the JWKS cannot be fetched or used."""


def _unauthorized(message: str) -> ServiceError:
    return ServiceError(UNAUTHORIZED, message)


def cache_seconds(cache_control: str | None, lower: float, upper: float) -> float:
    """How long to keep a response: its `max-age` (0 for no-store/no-cache), clamped to [lower, upper]."""
    value = 0.0
    if cache_control:
        if match := _MAX_AGE.search(cache_control):
            value = float(match.group(1))
        if re.search(r"no-store|no-cache", cache_control, re.IGNORECASE):
            value = 0.0
    return min(max(value, lower), upper)


def _usable_key(jwk: Any) -> tuple[str, PyJWK] | None:
    """(kid, key) for an RS256 or ES256 signing key; None for anything else in the set."""
    if not isinstance(jwk, Mapping):
        return None
    kid, kty, use = jwk.get("kid"), jwk.get("kty"), jwk.get("use", "sig")
    if not isinstance(kid, str) or not kid or use != "sig":
        return None
    if kty == "RSA":
        algorithm = "RS256"
    elif kty == "EC" and jwk.get("crv") == "P-256":
        algorithm = "ES256"
    else:
        return None
    if jwk.get("alg", algorithm) != algorithm:
        return None
    try:
        return kid, PyJWK(dict(jwk), algorithm=algorithm)
    except jwt.PyJWTError:
        return None


class KeyCache:
    """The issuer's signing keys by `kid`, fetched with the gateway's aiohttp session.

    Kept for the JWKS response's max-age within [min_ttl, max_ttl]; kept past that when a
    refresh fails; refetched for an unknown kid at most once per `refetch_interval`.
    """

    def __init__(
        self,
        http: aiohttp.ClientSession,
        *,
        issuer: str,
        jwks_url: str | None,
        discovery_url: str,
        min_ttl: float,
        max_ttl: float,
        refetch_interval: float = UNKNOWN_KID_REFETCH_S,
        failure_backoff: float = FAILURE_BACKOFF_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._http = http
        self._issuer = issuer
        self._jwks_url = jwks_url
        self._discovery_url = discovery_url
        self._min_ttl = min_ttl
        self._max_ttl = max_ttl
        self._refetch_interval = refetch_interval
        self._failure_backoff = failure_backoff
        self._clock = clock
        self._keys: dict[str, PyJWK] | None = None
        self._expires_at = 0.0
        self._retry_at = 0.0
        self._last_kid_refetch = -math.inf
        self._lock = asyncio.Lock()
        self._fetches = 0

    async def key(self, kid: str) -> PyJWK:
        """The key for `kid`; 401 when the issuer does not publish it, 503 when no key can be had."""
        fetched = False
        if self._keys is None or self._clock() >= self._expires_at:
            fetched = await self._refresh("expired" if self._keys is not None else "cold")
        if self._keys is None:
            raise RetryLater(UNAVAILABLE, "the identity provider's signing keys cannot be fetched; try again shortly", math.ceil(self._retry_at - self._clock()))
        found = self._keys.get(kid)
        now = self._clock()
        if found is None and not fetched and now - self._last_kid_refetch >= self._refetch_interval:
            self._last_kid_refetch = now
            await self._refresh("unknown_kid", force=True)
            found = self._keys.get(kid)
        if found is None:
            raise _unauthorized("the token is signed with a key the issuer does not publish (unknown kid)")
        return found

    async def _refresh(self, reason: str, *, force: bool = False) -> bool:
        """Fetch the keys unless another request just did or a failure is backing off; True if fetched."""
        async with self._lock:
            now = self._clock()
            if not force and self._keys is not None and now < self._expires_at:
                return False  # another request refreshed them while this one waited
            if now < self._retry_at:
                return False
            self._fetches += 1
            try:
                keys, ttl = await self._fetch()
            except _FetchFailed as exc:
                self._retry_at = self._clock() + self._failure_backoff
                log.warning("jwks_fetch_failed", reason=reason, error=str(exc), cached_keys=len(self._keys or {}))
                return False
            self._keys = keys
            self._expires_at = self._clock() + ttl
            log.info("jwks_fetched", reason=reason, keys=len(keys), ttl_s=ttl)
            return True

    async def _fetch(self) -> tuple[dict[str, PyJWK], float]:
        if self._jwks_url is None:
            discovery, _ = await self._get_json(self._discovery_url)
            if discovery.get("issuer") != self._issuer:
                raise _FetchFailed("the discovery document names another issuer")
            jwks_uri = discovery.get("jwks_uri")
            if not isinstance(jwks_uri, str) or not jwks_uri.startswith(("https://", "http://")):
                raise _FetchFailed("the discovery document has no jwks_uri")
            self._jwks_url = jwks_uri  # the document says where keys live; that does not change
        document, cache_control = await self._get_json(self._jwks_url)
        listed = document.get("keys")
        keys = dict(found for jwk in listed if (found := _usable_key(jwk))) if isinstance(listed, list) else {}
        if not keys:
            raise _FetchFailed("the JWKS holds no RS256 or ES256 signing key")
        return keys, cache_seconds(cache_control, self._min_ttl, self._max_ttl)

    async def _get_json(self, url: str) -> tuple[dict[str, Any], str | None]:
        try:
            async with self._http.get(url, timeout=aiohttp.ClientTimeout(total=FETCH_TIMEOUT_S), allow_redirects=False) as response:
                if response.status != 200:
                    raise _FetchFailed(f"{url} answered HTTP {response.status}")
                body = await response.content.read(MAX_DOCUMENT_BYTES + 1)
                if len(body) > MAX_DOCUMENT_BYTES:
                    raise _FetchFailed(f"{url} answered more than {MAX_DOCUMENT_BYTES} bytes")
                cache_control = response.headers.get("Cache-Control")
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise _FetchFailed(f"{url} cannot be reached: {type(exc).__name__}") from None
        try:
            value = orjson.loads(body)
        except ValueError:
            raise _FetchFailed(f"{url} did not answer JSON") from None
        if not isinstance(value, dict):
            raise _FetchFailed(f"{url} did not answer a JSON object")
        return value, cache_control


class TokenVerifier:
    """Checks an ID token's signature and claims; returns the claims or raises 401 saying why."""

    def __init__(self, config: GatewayConfig, keys: KeyCache, clock: Callable[[], float] = time.time) -> None:
        self._issuer = config.issuer
        self._audience = config.audience
        self._skew = config.auth_clock_skew_s
        self._keys = keys
        self._clock = clock

    async def verify(self, token: str) -> dict[str, Any]:
        try:
            return await self._verify(token)
        except ServiceError as exc:
            # On the request's one log line: why sign-in failed (never the token itself).
            structlog.contextvars.bind_contextvars(auth_error=exc.message)
            raise

    async def _verify(self, token: str) -> dict[str, Any]:
        if len(token) > MAX_TOKEN_CHARS:
            raise _unauthorized(f"the token is longer than {MAX_TOKEN_CHARS} characters")
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise _unauthorized("the token is not a well-formed JWT") from None
        alg = header.get("alg")
        if alg not in ALGORITHMS:
            shown = repr(alg) if isinstance(alg, str) and _SHOWN_ALG.match(alg) else "this algorithm"
            raise _unauthorized(f"tokens signed with {shown} are not accepted (only RS256 and ES256)")
        kid = header.get("kid")
        if not isinstance(kid, str) or not kid:
            raise _unauthorized("the token header has no 'kid'")
        key = await self._keys.key(kid)
        if key.algorithm_name != alg:
            raise _unauthorized("the token's algorithm does not match its key")
        try:
            claims = jwt.decode(
                token,
                key.key,
                algorithms=[key.algorithm_name],
                audience=self._audience,
                issuer=self._issuer,
                leeway=self._skew,
                options={"require": ["exp", "iat", "iss", "aud", "sub"], "strict_aud": True},
            )
        except jwt.ExpiredSignatureError:
            raise _unauthorized("the token has expired") from None
        except jwt.ImmatureSignatureError:
            raise _unauthorized("the token is not valid yet (issued in the future)") from None
        except jwt.InvalidAudienceError:
            raise _unauthorized(f"the token is for another audience (expected {self._audience!r})") from None
        except jwt.InvalidIssuerError:
            raise _unauthorized(f"the token is from another issuer (expected {self._issuer!r})") from None
        except jwt.MissingRequiredClaimError as exc:
            raise _unauthorized(f"the token has no '{exc.claim}' claim") from None
        except jwt.InvalidSignatureError:
            raise _unauthorized("the token's signature is invalid") from None
        except jwt.InvalidSubjectError:
            raise _unauthorized(_SUB_RULE) from None
        except jwt.InvalidIssuedAtError:
            raise _unauthorized("the token's 'iat' claim is not a number") from None
        except jwt.DecodeError:
            raise _unauthorized("the token is malformed") from None
        except jwt.InvalidTokenError:
            raise _unauthorized("the token is invalid") from None
        sub = claims.get("sub")
        if not isinstance(sub, str) or not sub.strip() or len(sub) > MAX_SUB_CHARS:
            raise _unauthorized(_SUB_RULE)
        auth_time = claims.get("auth_time")
        if auth_time is not None:
            if not isinstance(auth_time, int | float) or isinstance(auth_time, bool):
                raise _unauthorized("the token's 'auth_time' claim is not a number")
            if auth_time > self._clock() + self._skew:
                raise _unauthorized("the token's 'auth_time' is in the future")
        return claims


_SUB_RULE = f"the token's 'sub' must be a non-empty string of at most {MAX_SUB_CHARS} characters"


def user_from_claims(claims: Mapping[str, Any], groups_claim: str = "") -> dict[str, Any]:
    """The session's user map from verified claims: {uid, email, name, picture, verified}, and `groups`
    from the claim AUTH_GROUPS_CLAIM names (when set)."""

    def text(name: str) -> str | None:
        value = claims.get(name)
        return value if isinstance(value, str) and value else None

    user = {"uid": claims["sub"], "email": text("email"), "name": text("name"), "picture": text("picture"), "verified": _email_verified(claims)}
    if groups_claim:
        user["groups"] = clean_groups(claims.get(groups_claim))
    return user


def _email_verified(claims: Mapping[str, Any]) -> bool:
    value = claims.get("email_verified")
    return value is True or value == "true"  # some providers send the string


def check_policy(config: GatewayConfig, claims: Mapping[str, Any]) -> None:
    """403 when the account may not sign in: unverified email, or an email domain not allowed."""
    try:
        _check_policy(config, claims)
    except ServiceError as exc:
        structlog.contextvars.bind_contextvars(auth_error=exc.message, uid=claims.get("sub"))
        raise


def _check_policy(config: GatewayConfig, claims: Mapping[str, Any]) -> None:
    email = claims.get("email") if isinstance(claims.get("email"), str) else None
    if config.auth_require_verified_email:
        if not email:
            raise ServiceError(FORBIDDEN, "this account has no email address, and a verified email is required to sign in")
        if not _email_verified(claims):
            raise ServiceError(FORBIDDEN, "this account's email address is not verified; verify it with your sign-in provider, then sign in again")
    if config.auth_allowed_email_domains:
        domain = email.rpartition("@")[2].lower() if email and "@" in email else ""
        if domain not in config.auth_allowed_email_domains:
            shown = f"'{domain}'" if domain else "(none)"
            raise ServiceError(FORBIDDEN, f"accounts with the email domain {shown} may not sign in here")
