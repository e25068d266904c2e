"""The issuer's signing keys: fetched with aiohttp, cached for max-age within bounds, refetched sparingly.

Against a real issuer on loopback that counts its fetches: key rotation, a flood of forged
kids, the issuer down with warm and with cold keys. The cache's clock is injected where a
test needs time to pass, so nothing sleeps.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator

import aiohttp
import pytest
import structlog

from services.gateway.auth.tokens import KeyCache, RetryLater, cache_seconds
from shared.errors import ServiceError
from tests.auth_issuer import Issuer, gateway_env, running_gateway, running_issuer, session_service
from tests.client import browser
from tests.conftest import Infra, System


@pytest.fixture(scope="module")
def sessions(infra: Infra) -> Iterator[System]:
    yield from session_service(infra)


async def login(url: str, token: str) -> tuple[int, dict, dict]:
    async with browser(url) as client, client.post("/auth/login", json={"idToken": token}) as response:
        return response.status, await response.json(), dict(response.headers)


async def test_a_rotated_key_is_fetched_once_then_accepted(sessions: System) -> None:
    async with running_issuer() as issuer, running_gateway(gateway_env(sessions, issuer)) as url:
        assert (await login(url, issuer.token("rsa-1")))[0] == 200
        assert (await login(url, issuer.token("ec-1")))[0] == 200
        assert issuer.fetches == {"discovery": 1, "jwks": 1}, "keys are cached for the response's max-age"

        issuer.add_key("rsa-2", "RSA")
        status, body, _ = await login(url, issuer.token("rsa-2"))
        assert status == 200, body
        assert issuer.fetches["jwks"] == 2, "an unknown kid leads to exactly one refetch"
        assert (await login(url, issuer.token("rsa-2")))[0] == 200
        assert issuer.fetches["jwks"] == 2


async def test_a_flood_of_forged_kids_refetches_at_most_once_per_interval(sessions: System) -> None:
    async with running_issuer() as issuer, running_gateway(gateway_env(sessions, issuer)) as url:
        assert (await login(url, issuer.token("rsa-1")))[0] == 200
        assert issuer.fetches["jwks"] == 1
        forged = []
        for n in range(40):
            kid = f"forged-{n}-{uuid.uuid4().hex[:6]}"
            issuer.add_key(kid, "RSA" if n % 8 == 0 else "EC", publish=False)
            forged.append(issuer.token(kid))
        results = await asyncio.gather(*(login(url, token) for token in forged))
        assert all(status == 401 and "unknown kid" in body["error"]["message"] for status, body, _ in results)
        assert issuer.fetches["jwks"] == 2, f"the issuer saw {issuer.fetches['jwks'] - 1} refetches for one interval"
        # Genuine tokens are unaffected.
        assert (await login(url, issuer.token("ec-1")))[0] == 200


async def test_keys_are_refetched_when_max_age_runs_out(sessions: System) -> None:
    async with running_issuer(max_age=0) as issuer, running_gateway(gateway_env(sessions, issuer, AUTH_JWKS_CACHE_MIN_S="0")) as url:
        for expected in (1, 2, 3):
            assert (await login(url, issuer.token()))[0] == 200
            assert issuer.fetches["jwks"] == expected
        assert issuer.fetches["discovery"] == 1, "the discovery document is read once"


async def test_the_lower_bound_caps_a_zero_max_age(sessions: System) -> None:
    async with running_issuer(max_age=0) as issuer, running_gateway(gateway_env(sessions, issuer)) as url:
        for _ in range(3):
            assert (await login(url, issuer.token()))[0] == 200
        assert issuer.fetches["jwks"] == 1


async def test_issuer_down_with_warm_keys_sign_in_still_works(sessions: System) -> None:
    """The keys have expired (max-age 0, no lower bound) and the refresh fails: the cached keys serve."""
    async with running_issuer(max_age=0) as issuer, running_gateway(gateway_env(sessions, issuer, AUTH_JWKS_CACHE_MIN_S="0")) as url:
        assert (await login(url, issuer.token()))[0] == 200
        await issuer.down()
        with structlog.testing.capture_logs() as logs:
            status, body, _ = await login(url, issuer.token("ec-1"))
        assert status == 200, body
        failed = [entry for entry in logs if entry["event"] == "jwks_fetch_failed"]
        assert failed and failed[0]["cached_keys"] == 2 and failed[0]["log_level"] == "warning"
        await issuer.up()


async def test_issuer_down_with_cold_keys_is_503_with_retry_after(sessions: System) -> None:
    async with running_issuer() as issuer:
        await issuer.down()
        async with running_gateway(gateway_env(sessions, issuer)) as url:
            status, body, headers = await login(url, issuer.token())
            assert status == 503, body
            assert body["error"]["code"] == "unavailable" and "signing keys" in body["error"]["message"]
            assert int(headers["Retry-After"]) >= 1
            async with browser(url) as client, client.get("/api/me", headers={"Authorization": f"Bearer {issuer.token()}"}) as me:
                assert me.status == 503 and int(me.headers["Retry-After"]) >= 1
        await issuer.up()


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def cache(http: aiohttp.ClientSession, issuer: Issuer, clock: Clock, **bounds: float) -> KeyCache:
    return KeyCache(
        http, issuer=issuer.url, jwks_url=None, discovery_url=f"{issuer.url}/.well-known/openid-configuration", min_ttl=bounds.get("min_ttl", 60), max_ttl=bounds.get("max_ttl", 3600), clock=clock
    )


async def test_after_a_failed_cold_fetch_the_cache_backs_off_then_recovers() -> None:
    clock = Clock()
    async with running_issuer() as issuer, aiohttp.ClientSession() as http:
        keys = cache(http, issuer, clock)
        await issuer.down()
        with pytest.raises(RetryLater) as refused:
            await keys.key("rsa-1")
        assert refused.value.retry_after == 5
        await issuer.up()
        clock.now += 2
        with pytest.raises(RetryLater) as again:
            await keys.key("rsa-1")
        assert again.value.retry_after == 3
        assert issuer.fetches["discovery"] == 0, "no fetch while backing off"
        clock.now += 3
        assert (await keys.key("rsa-1")).algorithm_name == "RS256"
        assert (await keys.key("ec-1")).algorithm_name == "ES256"


async def test_unknown_kids_refetch_once_per_30_seconds_and_max_age_is_clamped() -> None:
    clock = Clock()
    async with running_issuer(max_age=10) as issuer, aiohttp.ClientSession() as http:
        keys = cache(http, issuer, clock)
        await keys.key("rsa-1")
        assert issuer.fetches["jwks"] == 1
        for kid in ("nope-1", "nope-2"):
            with pytest.raises(ServiceError, match="unknown kid"):
                await keys.key(kid)
        assert issuer.fetches["jwks"] == 2
        clock.now += 29
        with pytest.raises(ServiceError, match="unknown kid"):
            await keys.key("nope-3")
        assert issuer.fetches["jwks"] == 2
        clock.now += 1.5
        issuer.add_key("rsa-2")
        assert (await keys.key("rsa-2")).algorithm_name == "RS256"
        assert issuer.fetches["jwks"] == 3
        # max-age 10 is raised to the lower bound of 60.
        clock.now += 59
        await keys.key("rsa-1")
        assert issuer.fetches["jwks"] == 3
        clock.now += 2
        await keys.key("rsa-1")
        assert issuer.fetches["jwks"] == 4


async def test_a_discovery_document_for_another_issuer_is_not_trusted() -> None:
    clock = Clock()
    async with running_issuer() as issuer, aiohttp.ClientSession() as http:
        keys = KeyCache(http, issuer="https://accounts.example.com", jwks_url=None, discovery_url=f"{issuer.url}/.well-known/openid-configuration", min_ttl=60, max_ttl=3600, clock=clock)
        with structlog.testing.capture_logs() as logs:
            with pytest.raises(RetryLater):
                await keys.key("rsa-1")
        assert issuer.fetches["jwks"] == 0
        assert any("another issuer" in entry.get("error", "") for entry in logs)


@pytest.mark.parametrize(
    ("header", "seconds"),
    [("public, max-age=600", 600), ("max-age=5", 60), ("max-age=999999", 3600), ("no-store", 60), (None, 60), ('public, max-age="120"', 120)],
)
def test_cache_seconds_reads_max_age_within_bounds(header: str | None, seconds: float) -> None:
    assert cache_seconds(header, 60, 3600) == seconds
