"""Every route of the gateway in one place: `setup_routes(app)` is its whole HTTP surface."""

from __future__ import annotations

from aiohttp import web

from services.gateway import connections, conversations, feedback, handlers, probes, recent, webapp
from services.gateway.audit_http import get_audit
from services.gateway.chat import handlers as chat
from services.gateway.schema import get_schema
from shared.ops import metrics_handler


def setup_routes(app: web.Application) -> None:
    router = app.router
    # Sign-in and the signed-in user.
    router.add_post("/auth/login", handlers.login)
    router.add_post("/auth/logout", handlers.logout)
    router.add_get("/auth/config", webapp.auth_config)
    router.add_get("/api/me", handlers.me)
    # Queries and schemas.
    router.add_post("/api/query", handlers.query)
    router.add_get("/api/schema", get_schema)
    router.add_get("/api/sources", webapp.sources)
    router.add_get("/api/recent-queries", recent.get_recent)
    # The user's own databases (docs/connections.md).
    router.add_get("/api/connections", connections.list_connections)
    router.add_post("/api/connections", connections.create_connection)
    router.add_get("/api/connections/{id}", connections.get_connection)
    router.add_patch("/api/connections/{id}", connections.patch_connection)
    router.add_delete("/api/connections/{id}", connections.delete_connection)
    router.add_post("/api/connections/{id}/test", connections.test_connection)
    # The audit trail, for admins (404 for everyone else).
    router.add_get("/api/audit", get_audit)
    # Conversations and the assistant.
    router.add_get("/api/conversations", conversations.list_conversations)
    router.add_post("/api/conversations", conversations.create_conversation)
    router.add_get("/api/conversations/{id}", conversations.get_conversation)
    router.add_patch("/api/conversations/{id}", conversations.patch_conversation)
    router.add_delete("/api/conversations/{id}", conversations.delete_conversation)
    router.add_post("/api/chat", chat.chat)
    router.add_get("/api/quota", chat.quota)
    router.add_post("/api/feedback", feedback.post_feedback)
    # Operations.
    router.add_get("/healthz", probes.healthz)
    router.add_get("/readyz", probes.readyz)
    router.add_get("/metrics", metrics_handler)
    # The web app's page and assets.
    router.add_get("/", webapp.index)
    router.add_get("/assets/{name}", webapp.asset)
