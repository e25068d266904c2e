"""A real Flask 3 + Flask-Session 0.8 app and our gateway share sessions through one Redis, both ways.

The same browser cookie works on either side, plain or signed (SESSION_USE_SIGNER), so the
Flask app can be migrated to the gateway while users stay signed in.
"""

from __future__ import annotations

import uuid
import warnings
from collections.abc import Iterator

import flask
import msgspec
import pytest
import redis
from flask_session import Session

from tests.client import browser
from tests.conftest import SystemFactory
from tests.harness import RedisServer

SECRET_KEY = "interop-secret-" + uuid.uuid4().hex


def flask_app(redis_url: str, *, use_signer: bool) -> flask.Flask:
    app = flask.Flask("legacy")
    app.config.update(
        SECRET_KEY=SECRET_KEY,
        SESSION_TYPE="redis",
        SESSION_REDIS=redis.Redis.from_url(redis_url),
        SESSION_PERMANENT=True,
        SESSION_USE_SIGNER=use_signer,
        SESSION_KEY_PREFIX="session:",
        TESTING=True,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # Flask-Session 0.8 deprecates use_signer but honours it
        Session(app)

    @app.post("/login")
    def login() -> dict:
        body = flask.request.get_json()
        flask.session["user"] = {"uid": body["uid"], "email": body["email"], "name": body["name"], "picture": None, "verified": True}
        flask.session["conversation_id"] = "flask-conversation"
        return {"ok": True}

    @app.get("/me")
    def me() -> tuple[dict, int]:
        if "user" not in flask.session:
            return {"error": "not logged in"}, 401
        return {"user": flask.session["user"], "conversation_id": flask.session.get("conversation_id")}, 200

    @app.post("/touch")
    def touch() -> dict:
        flask.session["flask_counter"] = flask.session.get("flask_counter", 0) + 1
        return {"ok": True}

    return app


@pytest.fixture
def flask_redis(redis_server: RedisServer) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_server.url)
    yield client
    client.close()


@pytest.mark.parametrize("use_signer", [False, True], ids=["plain", "signed"])
async def test_a_flask_session_is_read_by_the_gateway(make_system: SystemFactory, redis_server: RedisServer, flask_redis: redis.Redis, use_signer: bool) -> None:
    system = make_system(redis_url=redis_server.url, start=("session", "gateway"), **_signer_env(use_signer))
    app = flask_app(redis_server.url, use_signer=use_signer)
    legacy = app.test_client()

    response = legacy.post("/login", json={"uid": "u-flask", "email": "f@example.com", "name": "Flo"})
    assert response.status_code == 200
    cookie = legacy.get_cookie("session")
    assert cookie is not None
    sid = cookie.value.rsplit(".", 1)[0] if use_signer else cookie.value
    assert flask_redis.exists(f"session:{sid}") == 1

    async with browser(system.url) as client:
        client.cookie_jar.update_cookies({"session": cookie.value})
        async with client.get("/api/me") as me:
            assert me.status == 200, await me.text()
            body = await me.json()
        assert body == {"user": {"uid": "u-flask", "email": "f@example.com", "name": "Flo", "picture": None, "verified": True}, "conversation_id": "flask-conversation", "admin": False}

        # A field patch by the gateway (Lua splice of Flask's bytes) is read back by Flask.
        async with client.post("/api/conversations") as created:
            assert created.status == 200, await created.text()
            conversation_id = (await created.json())["conversation_id"]
    again = legacy.get("/me")
    assert again.status_code == 200
    assert again.get_json()["conversation_id"] == conversation_id
    assert again.get_json()["user"]["uid"] == "u-flask"


@pytest.mark.parametrize("use_signer", [False, True], ids=["plain", "signed"])
async def test_a_gateway_session_is_read_by_flask(make_system: SystemFactory, redis_server: RedisServer, flask_redis: redis.Redis, use_signer: bool) -> None:
    system = make_system(redis_url=redis_server.url, start=("session", "gateway"), **_signer_env(use_signer))
    app = flask_app(redis_server.url, use_signer=use_signer)
    legacy = app.test_client()

    async with browser(system.url) as client:
        async with client.post("/auth/login", json={"email": "ada@example.com", "name": "Ada"}) as login:
            assert login.status == 200, await login.text()
            view = await login.json()
        cookie = next(c.value for c in client.cookie_jar if c.key == "session")

        legacy.set_cookie("session", cookie)
        me = legacy.get("/me")
        assert me.status_code == 200, me.get_data(as_text=True)
        # `admin` is worked out from ADMIN_EMAILS/ADMIN_GROUP on each request, not stored in the session.
        assert me.get_json() == {key: value for key, value in view.items() if key != "admin"}
        assert legacy.get_cookie("session").value == cookie  # Flask kept the same session, not a new one

        # Flask writes the session back with its own encoder; the gateway still reads it.
        assert legacy.post("/touch").status_code == 200
        sid = cookie.rsplit(".", 1)[0] if use_signer else cookie
        assert msgspec.msgpack.decode(flask_redis.get(f"session:{sid}"))["flask_counter"] == 1
        async with client.get("/api/me") as again:
            assert again.status == 200, await again.text()
            assert await again.json() == view


def _signer_env(use_signer: bool) -> dict[str, str]:
    return {"SESSION_USE_SIGNER": "1", "SECRET_KEY": SECRET_KEY} if use_signer else {}
