"""The reference for `bench.session`: the Flask 3 + Flask-Session 0.8 app the gateway replaces.

Same routes and session shape as the gateway's dev login and /api/me, sessions in Redis
under `session:<sid>`. Run it under gunicorn:

    REDIS_URL=redis://127.0.0.1:6379/0 gunicorn -w 2 -k gthread --threads 8 'bench.flask_ref:create_app()'
"""

from __future__ import annotations

import hashlib
import os
import uuid

import redis
from flask import Flask, jsonify, request, session
from flask_session import Session


def create_app() -> Flask:
    app = Flask("flask_ref")
    app.config.update(
        SECRET_KEY=os.environ.get("SECRET_KEY", "bench-only-secret"),
        SESSION_TYPE="redis",
        SESSION_REDIS=redis.Redis.from_url(os.environ["REDIS_URL"]),
        SESSION_PERMANENT=True,
        SESSION_KEY_PREFIX=os.environ.get("SESSION_KEY_PREFIX", "session:"),
    )
    Session(app)

    @app.get("/healthz")
    def healthz():  # type: ignore[no-untyped-def]
        return jsonify(status="ok")

    @app.post("/auth/login")
    def login():  # type: ignore[no-untyped-def]
        body = request.get_json(force=True)
        email = body["email"]
        uid = "dev-" + hashlib.sha256(email.lower().encode()).hexdigest()[:24]
        session.clear()
        session["user"] = {"uid": uid, "email": email, "name": body["name"], "picture": None, "verified": True}
        session["conversation_id"] = str(uuid.uuid4())
        return jsonify(user=session["user"], conversation_id=session["conversation_id"])

    @app.get("/api/me")
    def me():  # type: ignore[no-untyped-def]
        user = session.get("user")
        if not user:
            return jsonify(error={"code": "unauthorized", "message": "not logged in"}), 401
        return jsonify(user=user, conversation_id=session.get("conversation_id"))

    return app
