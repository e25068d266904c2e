"""A local OpenID Connect issuer on loopback for the sign-in tests, and an in-process gateway that trusts it.

The issuer is a real aiohttp server speaking the wire format: a discovery document and a JWKS
with Cache-Control, keys generated with `cryptography`, tokens minted with PyJWT. It counts
every fetch and can go down and come back on the same port.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Any

import jwt
from aiohttp import web
from aiohttp.test_utils import TestServer
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from services.gateway.app import create_app
from services.gateway.config import GatewayConfig
from tests.conftest import Infra, System
from tests.harness import free_port

AUDIENCE = "dbgenie-test-client"
PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class Issuer:
    """An OpenID Connect issuer at http://127.0.0.1:<port> with RSA and EC signing keys."""

    def __init__(self, max_age: int = 3600) -> None:
        self.port = free_port()
        self.max_age = max_age
        self.private: dict[str, PrivateKey] = {}
        self.published: list[str] = []
        self.fetches = {"discovery": 0, "jwks": 0}
        self._runner: web.AppRunner | None = None
        self._site: web.TCPSite | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def add_key(self, kid: str, kind: str = "RSA", *, publish: bool = True) -> None:
        self.private[kid] = rsa.generate_private_key(public_exponent=65537, key_size=2048) if kind == "RSA" else ec.generate_private_key(ec.SECP256R1())
        if publish:
            self.published.append(kid)

    def public_pem(self, kid: str) -> bytes:
        return self.private[kid].public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)

    def jwks(self) -> dict[str, Any]:
        keys = []
        for kid in self.published:
            key = self.private[kid]
            alg = "RS256" if isinstance(key, rsa.RSAPrivateKey) else "ES256"
            jwk = json.loads(jwt.algorithms.get_default_algorithms()[alg].to_jwk(key.public_key()))
            keys.append({**jwk, "kid": kid, "use": "sig", "alg": alg})
        return {"keys": keys}

    def claims(self, **overrides: Any) -> dict[str, Any]:
        now = int(time.time())
        claims: dict[str, Any] = {
            "iss": self.url,
            "aud": AUDIENCE,
            "sub": "Mx0s5HR2P" + uuid.uuid4().hex[:19],
            "iat": now,
            "exp": now + 3600,
            "auth_time": now,
            "email": "ada@example.com",
            "email_verified": True,
            "name": "Ada Lovelace",
            "picture": "https://example.com/ada.png",
        }
        claims.update(overrides)
        return {k: v for k, v in claims.items() if v is not None}

    def token(self, kid: str = "rsa-1", *, claims: dict[str, Any] | None = None, **overrides: Any) -> str:
        """A token signed by `kid` (its own algorithm); `overrides` change claims (None drops one)."""
        key = self.private[kid]
        alg = "RS256" if isinstance(key, rsa.RSAPrivateKey) else "ES256"
        return jwt.encode(claims if claims is not None else self.claims(**overrides), key, algorithm=alg, headers={"kid": kid})

    def hs256_with_public_key(self, kid: str = "rsa-1", **overrides: Any) -> str:
        """The key-confusion attack: HS256 keyed with the issuer's public PEM (PyJWT itself refuses to mint it)."""
        header = _b64(json.dumps({"alg": "HS256", "typ": "JWT", "kid": kid}).encode())
        payload = _b64(json.dumps(self.claims(**overrides)).encode())
        signature = hmac.new(self.public_pem(kid), f"{header}.{payload}".encode(), hashlib.sha256).digest()
        return f"{header}.{payload}.{_b64(signature)}"

    def unsigned(self, kid: str = "rsa-1", **overrides: Any) -> str:
        return jwt.encode(self.claims(**overrides), None, algorithm="none", headers={"kid": kid})

    def _app(self) -> web.Application:
        async def discovery(_: web.Request) -> web.Response:
            self.fetches["discovery"] += 1
            body = {"issuer": self.url, "jwks_uri": f"{self.url}/jwks", "id_token_signing_alg_values_supported": ["RS256", "ES256"]}
            return web.json_response(body, headers={"Cache-Control": "public, max-age=3600"})

        async def jwks(_: web.Request) -> web.Response:
            self.fetches["jwks"] += 1
            return web.json_response(self.jwks(), headers={"Cache-Control": f"public, max-age={self.max_age}, must-revalidate"})

        app = web.Application()
        app.router.add_get("/.well-known/openid-configuration", discovery)
        app.router.add_get("/jwks", jwks)
        return app

    async def up(self) -> None:
        self._runner = web.AppRunner(self._app())
        await self._runner.setup()
        self._site = web.TCPSite(self._runner, "127.0.0.1", self.port, reuse_address=True)
        await self._site.start()

    async def down(self) -> None:
        """Stop listening: connections to the port are refused until `up()`."""
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None


@asynccontextmanager
async def running_issuer(max_age: int = 3600) -> AsyncIterator[Issuer]:
    issuer = Issuer(max_age)
    issuer.add_key("rsa-1", "RSA")
    issuer.add_key("ec-1", "EC")
    await issuer.up()
    try:
        yield issuer
    finally:
        await issuer.down()


def gateway_env(sessions: System, issuer: Issuer, **extra: str) -> dict[str, str]:
    env = {**sessions.env, "AUTH_MODE": "oidc", "OIDC_ISSUER": issuer.url, "OIDC_AUDIENCE": AUDIENCE, "AUTH_LOGIN_RATE": "0"}
    env.update(extra)
    return env


@asynccontextmanager
async def running_gateway(env: dict[str, str]) -> AsyncIterator[str]:
    """The gateway built by its factory from `env`, served on a loopback port; yields its base URL."""
    server = TestServer(create_app(GatewayConfig.from_env(env)), host="127.0.0.1", port=free_port())
    await server.start_server()
    try:
        yield str(server.make_url("")).rstrip("/")
    finally:
        await server.close()


def session_service(infra: Infra) -> Iterator[System]:
    """A session service of its own (subject prefix) on the shared NATS and Redis, for one test module."""
    prefix = f"a{uuid.uuid4().hex[:10]}"
    env = {"NATS_URL": infra.nats_url, "NATS_SUBJECT_PREFIX": prefix, "REDIS_URL": infra.redis_url, "SESSION_KV_BUCKET": f"sessions_{prefix}"}
    system = System(infra.nats_url, infra.redis_url, prefix, free_port(), env)
    system.start("session")
    try:
        yield system
    finally:
        codes = system.stop()
    assert codes == {"session": 0}, f"the session service did not stop cleanly: {codes}"
