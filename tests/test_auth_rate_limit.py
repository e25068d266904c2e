"""The login rate limit per client IP, counted in Redis through the session service, shared by replicas."""

from __future__ import annotations

import redis

from tests.auth_issuer import AUDIENCE, running_gateway, running_issuer
from tests.client import browser
from tests.conftest import SystemFactory
from tests.harness import RedisServer, Service, free_port

# A day-long window: the test cannot straddle a window boundary by accident (a minute-long one could).
RATE = "5/day"


async def login(url: str, token: str, headers: dict[str, str] | None = None) -> tuple[int, dict, dict]:
    async with browser(url) as client, client.post("/auth/login", json={"idToken": token}, headers=headers or {}) as response:
        return response.status, await response.json(), dict(response.headers)


async def test_the_login_rate_is_shared_by_two_gateway_replicas(make_system: SystemFactory, redis_server: RedisServer) -> None:
    async with running_issuer() as issuer:
        env = {"AUTH_MODE": "oidc", "OIDC_ISSUER": issuer.url, "OIDC_AUDIENCE": AUDIENCE, "AUTH_LOGIN_RATE": RATE, "TRUSTED_PROXIES": "127.0.0.1/32"}
        system = make_system(redis_url=redis_server.url, start=(), **env)
        second_port = free_port()
        second = Service("gateway", system.service_env("gateway", GATEWAY_PORT=str(second_port))).launch()
        try:
            system.start_all(("session", "gateway"))  # beside the second gateway
            second.ready()
            replicas = [system.url, f"http://127.0.0.1:{second_port}"]
            statuses = [(await login(replicas[n % 2], issuer.token()))[0] for n in range(5)]
            assert statuses == [200] * 5
            for url in replicas:
                status, body, headers = await login(url, issuer.token())
                assert status == 429, body
                assert body["error"]["code"] == "rate_limited"
                assert 0 < int(headers["Retry-After"]) <= 86400
            # A bad token counts too (and is refused before its verification).
            status, _, _ = await login(replicas[0], "not-a-token")
            assert status == 429

            # Another client behind the trusted proxy has its own count.
            status, body, _ = await login(replicas[1], issuer.token(), {"X-Forwarded-For": "203.0.113.7"})
            assert status == 200, body
        finally:
            assert second.stop() == 0

    store = redis.Redis.from_url(redis_server.url)
    try:
        counters = {key.decode(): int(store.hget(key, "login").split(b":")[1]) for key in store.scan_iter(match="limit:{login:*")}
    finally:
        store.close()
    assert counters == {"limit:{login:127.0.0.1}": 5, "limit:{login:203.0.113.7}": 1}
    assert len(system.services["gateway"].events("login_rate_limited")) >= 1
    assert len(second.events("login_rate_limited")) >= 1


async def test_x_forwarded_for_is_ignored_from_an_untrusted_peer(make_system: SystemFactory, redis_server: RedisServer) -> None:
    async with running_issuer() as issuer:
        system = make_system(redis_url=redis_server.url, start=("session",))
        env = {**system.env, "AUTH_MODE": "oidc", "OIDC_ISSUER": issuer.url, "OIDC_AUDIENCE": AUDIENCE, "AUTH_LOGIN_RATE": "2/day"}
        async with running_gateway(env) as url:
            results = [(await login(url, issuer.token(), {"X-Forwarded-For": f"198.51.100.{n}"}))[0] for n in range(3)]
    assert results == [200, 200, 429]
