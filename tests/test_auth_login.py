"""Sign-in with ID tokens: POST /auth/login against a local OpenID Connect issuer, bearer access, policy.

The gateway is built by its factory in this process and talks to a real session service
over NATS and Redis; the issuer is a real HTTP server on loopback.
"""

from __future__ import annotations

import base64
import json
import warnings
from collections.abc import Iterator

import msgspec
import pytest
import redis
import structlog
from flask_session import Session

from tests.auth_issuer import gateway_env, running_gateway, running_issuer, session_service
from tests.client import browser, events
from tests.conftest import Infra, System


@pytest.fixture(scope="module")
def sessions(infra: Infra) -> Iterator[System]:
    yield from session_service(infra)


@pytest.fixture
def store(sessions: System) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(sessions.redis_url or "")
    yield client
    client.close()


def session_keys(store: redis.Redis) -> set[bytes]:
    return {key for key in store.scan_iter(match="session:*", count=500)}


async def post_login(url: str, token: str, **kwargs) -> tuple[int, dict, dict]:
    async with browser(url) as client:
        async with client.post("/auth/login", json={"idToken": token}, **kwargs) as response:
            return response.status, await response.json(), dict(response.headers)


async def test_a_valid_token_opens_a_session_that_flask_reads(sessions: System, store: redis.Redis) -> None:
    """The session's Redis bytes decode to the map dev login writes, and the real Flask-Session app reads it."""
    import flask

    async with running_issuer() as issuer, running_gateway(gateway_env(sessions, issuer)) as url, browser(url) as client:
        token = issuer.token("rsa-1", sub="Mx0s5HR2PfirebaseUid01")
        async with client.post("/auth/login", json={"idToken": token}) as response:
            assert response.status == 200, await response.text()
            body = await response.json()
            assert "HttpOnly" in response.headers["Set-Cookie"]
        user = {"uid": "Mx0s5HR2PfirebaseUid01", "email": "ada@example.com", "name": "Ada Lovelace", "picture": "https://example.com/ada.png", "verified": True}
        assert body["user"] == user and body["conversation_id"]
        sid = next(c.value for c in client.cookie_jar if c.key == "session")
        raw = store.get(f"session:{sid}")
        assert msgspec.msgpack.decode(raw) == {"_permanent": True, "user": user, "conversation_id": body["conversation_id"]}

        async with client.get("/api/me") as me:
            assert me.status == 200 and await me.json() == body

        # A second login issues a new sid and deletes the old session.
        async with client.post("/auth/login", json={"idToken": issuer.token("ec-1", sub="Mx0s5HR2PfirebaseUid01")}) as again:
            assert again.status == 200, await again.text()
        second = next(c.value for c in client.cookie_jar if c.key == "session")
        assert second != sid and store.exists(f"session:{sid}") == 0 and store.exists(f"session:{second}") == 1

    app = flask.Flask("legacy")
    app.config.update(SECRET_KEY="x", SESSION_TYPE="redis", SESSION_REDIS=store, SESSION_PERMANENT=True, SESSION_KEY_PREFIX="session:", TESTING=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        Session(app)

    @app.get("/me")
    def legacy_me() -> dict:
        return {"user": flask.session.get("user"), "conversation_id": flask.session.get("conversation_id")}

    legacy = app.test_client()
    legacy.set_cookie("session", second)
    seen = legacy.get("/me").get_json()
    assert seen["user"] == user


def _tamper(token: str) -> str:
    header, payload, signature = token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    claims["sub"] = "someone-else"
    forged = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    return f"{header}.{forged}.{signature}"


REFUSALS = {
    "expired": (lambda i: i.token(iat=1_600_000_000, exp=1_600_003_600, auth_time=1_600_000_000), "expired"),
    "iat in the future": (lambda i: i.token(iat=4_000_000_000, exp=4_000_003_600), "future"),
    "auth_time in the future": (lambda i: i.token(auth_time=4_000_000_000), "auth_time"),
    "wrong aud": (lambda i: i.token(aud="someone-elses-app"), "audience"),
    "wrong iss": (lambda i: i.token(iss="https://evil.example.com"), "issuer"),
    "alg none": (lambda i: i.unsigned(), "'none' are not accepted"),
    "HS256 with the public key": (lambda i: i.hs256_with_public_key(), "'HS256' are not accepted"),
    "tampered payload": (lambda i: _tamper(i.token()), "signature"),
    "empty sub": (lambda i: i.token(sub=""), "'sub'"),
    "sub too long": (lambda i: i.token(sub="x" * 129), "'sub'"),
    "no exp": (lambda i: i.token(exp=None), "'exp'"),
    "no kid": (lambda i: __import__("jwt").encode(i.claims(), i.private["rsa-1"], algorithm="RS256"), "'kid'"),
    "ES256 under an RSA kid": (lambda i: __import__("jwt").encode(i.claims(), i.private["ec-1"], algorithm="ES256", headers={"kid": "rsa-1"}), "does not match"),
    "garbage": (lambda i: "garbage-" + "Q" * 40 + ".only-two-segments", "JWT"),
}


@pytest.mark.parametrize("case", list(REFUSALS))
async def test_bad_tokens_are_refused_with_401_saying_why(sessions: System, store: redis.Redis, case: str) -> None:
    make, reason = REFUSALS[case]
    before = session_keys(store)
    async with running_issuer() as issuer, running_gateway(gateway_env(sessions, issuer)) as url:
        token = make(issuer)
        with structlog.testing.capture_logs() as logs:
            status, body, headers = await post_login(url, token)
    assert status == 401, body
    assert body["error"]["code"] == "unauthorized"
    assert reason in body["error"]["message"]
    payload = token.split(".")[1] if token.count(".") == 2 else token
    assert payload not in json.dumps(body), "the token must never be echoed"
    assert payload not in repr(logs), "the token must never be logged"
    assert "Set-Cookie" not in headers
    assert session_keys(store) == before, "a refused login must not write a session"


async def test_a_firebase_project_accepts_its_own_tokens_only(sessions: System, store: redis.Redis) -> None:
    """AUTH_MODE=firebase: issuer https://securetoken.google.com/<project>, audience <project> (keys from OIDC_JWKS_URL here)."""
    async with running_issuer() as issuer:
        env = gateway_env(sessions, issuer, AUTH_MODE="firebase", FIREBASE_PROJECT_ID="dbgenie-test-1", OIDC_JWKS_URL=f"{issuer.url}/jwks")
        async with running_gateway(env) as url:
            firebase = {"iss": "https://securetoken.google.com/dbgenie-test-1", "aud": "dbgenie-test-1", "firebase": {"sign_in_provider": "google.com"}}
            status, body, _ = await post_login(url, issuer.token(**firebase))
            assert status == 200, body
            other = {**firebase, "iss": "https://securetoken.google.com/another-project", "aud": "another-project"}
            status, body, _ = await post_login(url, issuer.token(**other))
            assert status == 401 and "another" in body["error"]["message"]
    assert issuer.fetches["discovery"] == 0, "firebase mode reads the JWKS URL, not a discovery document"


@pytest.mark.parametrize(
    ("env", "overrides", "reason"),
    [
        ({}, {"email_verified": False}, "not verified"),
        ({}, {"email": None, "email_verified": None}, "no email"),
        ({"AUTH_ALLOWED_EMAIL_DOMAINS": "corp.example, @lab.example"}, {"email": "ada@example.com"}, "'example.com'"),
    ],
    ids=["unverified email", "no email", "domain not allowed"],
)
async def test_policy_refuses_accounts_with_403(sessions: System, store: redis.Redis, env: dict, overrides: dict, reason: str) -> None:
    before = session_keys(store)
    async with running_issuer() as issuer, running_gateway(gateway_env(sessions, issuer, **env)) as url:
        status, body, _ = await post_login(url, issuer.token(**overrides))
        assert status == 403, body
        assert body["error"]["code"] == "forbidden" and reason in body["error"]["message"]
        assert session_keys(store) == before
        # The same account over bearer is refused the same way.
        async with browser(url) as client, client.get("/api/me", headers={"Authorization": f"Bearer {issuer.token(**overrides)}"}) as me:
            assert me.status == 403


async def test_policy_lets_allowed_domains_and_unverified_emails_when_configured(sessions: System) -> None:
    env = {"AUTH_ALLOWED_EMAIL_DOMAINS": "corp.example", "AUTH_REQUIRE_VERIFIED_EMAIL": "0"}
    async with running_issuer() as issuer, running_gateway(gateway_env(sessions, issuer, **env)) as url:
        status, body, _ = await post_login(url, issuer.token(email="grace@CORP.example", email_verified=False))
        assert status == 200, body
        assert body["user"]["verified"] is False


async def test_a_bearer_token_serves_api_me_and_query_without_a_cookie_or_session(sessions: System, store: redis.Redis) -> None:
    before = session_keys(store)
    async with running_issuer() as issuer:
        sessions.start("query")
        try:
            # Under oidc a source is closed unless the policy grants it (docs/access.md).
            policy = json.dumps({"sources": {"default": [{"domains": ["example.com"]}]}})
            async with running_gateway(gateway_env(sessions, issuer, ACCESS_POLICY=policy)) as url, browser(url, origin=None) as client:
                headers = {"Authorization": f"Bearer {issuer.token('ec-1', sub='api-client-7')}"}
                async with client.get("/api/me", headers=headers) as me:
                    assert me.status == 200, await me.text()
                    assert "Set-Cookie" not in me.headers
                    body = await me.json()
                assert body == {
                    "user": {"uid": "api-client-7", "email": "ada@example.com", "name": "Ada Lovelace", "picture": "https://example.com/ada.png", "verified": True},
                    "conversation_id": None,
                    "admin": False,
                }

                async with client.post("/api/query", json={"sql": "SELECT 41 + 1 AS answer"}, headers=headers) as response:
                    assert response.status == 200, await response.text()
                    assert "Set-Cookie" not in response.headers
                    parts = [part async for part in events(response)]
                final = [p for p in parts if p != "[DONE]" and p["type"] == "tool-output-available"][-1]
                assert final["output"]["preview"] == [[42]]

                async with client.post("/api/conversations", headers=headers) as created:
                    assert created.status == 200 and (await created.json())["conversation_id"]

                async with client.get("/api/me", headers={"Authorization": f"Bearer {issuer.token(aud='other')}"}) as refused:
                    assert refused.status == 401 and "audience" in (await refused.json())["error"]["message"]
                async with client.get("/api/me", headers={"Authorization": "Bearer "}) as empty:
                    assert empty.status == 401
                assert len(client.cookie_jar) == 0
        finally:
            assert sessions.services.pop("query").stop() == 0
    assert session_keys(store) == before, "bearer requests must not write sessions"


async def test_a_bad_bearer_token_does_not_fall_back_to_the_cookie(sessions: System) -> None:
    async with running_issuer() as issuer, running_gateway(gateway_env(sessions, issuer)) as url, browser(url) as client:
        async with client.post("/auth/login", json={"idToken": issuer.token()}) as response:
            assert response.status == 200
        async with client.get("/api/me", headers={"Authorization": f"Bearer {issuer.token(exp=1_600_000_000, iat=1_599_990_000)}"}) as me:
            assert me.status == 401 and "expired" in (await me.json())["error"]["message"]
        async with client.get("/api/me") as me:
            assert me.status == 200


async def test_dev_login_bodies_are_refused_in_token_mode(sessions: System, store: redis.Redis) -> None:
    async with running_issuer() as issuer, running_gateway(gateway_env(sessions, issuer)) as url, browser(url) as client:
        async with client.post("/auth/login", json={"email": "mallory@example.com", "name": "M"}) as response:
            assert response.status == 400
            assert "idToken" in (await response.json())["error"]["message"]


async def test_bearer_tokens_are_refused_in_dev_mode(sessions: System) -> None:
    async with running_issuer() as issuer, running_gateway({**sessions.env, "AUTH_MODE": "dev"}) as url, browser(url) as client:
        async with client.get("/api/me", headers={"Authorization": f"Bearer {issuer.token()}"}) as me:
            assert me.status == 401 and "AUTH_MODE" in (await me.json())["error"]["message"]
