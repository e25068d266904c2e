"""The gateway's layout keeps its promises: every route in routes.py and in the API reference, the
handlers' named steps callable on their own, and the typed clients refusing a reply of the wrong shape.
"""

from __future__ import annotations

import re
import uuid

import msgspec
import orjson
import pytest
from aiohttp import web
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from services.gateway.app import create_app
from services.gateway.auth.identity import Identity
from services.gateway.chat.handlers import QUOTA_EXCEEDED, quota_refusal
from services.gateway.clients import HistoryClient
from services.gateway.config import GatewayConfig
from services.gateway.routes import setup_routes
from shared.bus import subscribed
from shared.contracts import ConversationList, LimitResult, Subjects, WindowUsage
from shared.errors import INTERNAL, UNAUTHORIZED, ServiceError
from tests.envscan import ROOT

API_ROW = re.compile(r"^\|([^|]*)\|")
API_ITEM = re.compile(r"`([A-Z]+)(?: ([^`]+))?`")


def routes_of(app: web.Application) -> set[tuple[str, str]]:
    """(method, path) of every route, paths written as the API reference writes them (`<id>`)."""
    out = set()
    for route in app.router.routes():
        if route.method == "HEAD":  # aiohttp adds HEAD beside every GET
            continue
        path = route.resource.canonical if route.resource is not None else ""
        out.add((route.method, re.sub(r"\{(\w+)\}", r"<\1>", path)))
    return out


def documented_routes(text: str) -> set[tuple[str, str]]:
    """(method, path) from the first column of docs/api.md's table: `GET`, `PATCH`, `DELETE /api/conversations/<id>`."""
    out = set()
    for line in text.splitlines():
        if not (row := API_ROW.match(line)):
            continue
        waiting: list[str] = []
        for method, path in API_ITEM.findall(row.group(1)):
            waiting.append(method)
            if path:
                out |= {(m, path) for m in waiting}
                waiting = []
    return out


def test_create_app_registers_every_route_through_setup_routes_and_the_api_reference_lists_them() -> None:
    app = create_app(GatewayConfig.from_env({"AUTH_MODE": "dev"}))
    only_routes = web.Application()
    setup_routes(only_routes)
    assert routes_of(app) == routes_of(only_routes)
    assert routes_of(app) == documented_routes((ROOT / "docs" / "api.md").read_text())


def test_the_route_table_parser_reads_a_cell_of_several_methods() -> None:
    assert documented_routes("| `GET`, `PATCH`, `DELETE /a/<id>` | x |\n| `GET /`, `GET /b/<n>` | y |\n") == {
        ("GET", "/a/<id>"),
        ("PATCH", "/a/<id>"),
        ("DELETE", "/a/<id>"),
        ("GET", "/"),
        ("GET", "/b/<n>"),
    }


def test_a_spent_quota_is_a_429_with_retry_after_and_the_usage() -> None:
    response = quota_refusal(LimitResult(allowed=False, windows={"minute": WindowUsage(used=10, limit=10, resets_in=42)}, retry_after=0))
    assert response.status == 429
    assert response.headers["Retry-After"] == "1"  # never 0: a client would retry at once
    assert response.body is not None
    body = orjson.loads(response.body)  # type: ignore[arg-type]
    assert body["error"]["code"] == QUOTA_EXCEEDED and "1 s" in body["error"]["message"]
    assert body["usage"] == {"minute": {"used": 10, "limit": 10, "resets_in": 42}}


def test_a_session_without_a_user_id_is_unauthorized() -> None:
    with pytest.raises(ServiceError) as caught:
        _ = Identity("sid", {"user": {"email": "a@example.com"}}).uid
    assert caught.value.code == UNAUTHORIZED
    assert Identity(None, {"user": {"uid": "u1"}}).uid == "u1"


async def test_a_typed_client_sends_the_request_struct_and_refuses_a_reply_of_the_wrong_shape(nc: NATS) -> None:
    subjects = Subjects(f"t{uuid.uuid4().hex[:10]}")
    received: list[ConversationList] = []

    async def answer(msg: Msg) -> None:
        received.append(msgspec.msgpack.decode(msg.data, type=ConversationList))
        await msg.respond(msgspec.msgpack.encode({"conversations": "not a list"}))

    await nc.subscribe(subjects.session_conversation("list"), cb=answer)
    await subscribed(nc)
    with pytest.raises(ServiceError) as caught:
        await HistoryClient(nc, subjects, timeout=5.0).list("u1", limit=7, cursor=None)
    assert caught.value.code == INTERNAL
    assert "$.conversations" in caught.value.message
    assert received == [ConversationList(uid="u1", limit=7, cursor=None)]
