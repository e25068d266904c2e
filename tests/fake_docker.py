"""A fake Docker Engine API on a unix socket: it answers pings and version, has no image, and cannot pull one.

What a Docker engine without network access answers (the real docker SDK talks to it as to
dockerd): `GET /_ping` is OK, `GET /images/{name}/json` is 404 "No such image", and
`POST /images/create` is 500 with the registry's lookup error. Requests are recorded.
"""

from __future__ import annotations

from pathlib import Path

from aiohttp import web

API_VERSION = "1.44"


class FakeDocker:
    """The engine on `socket_path`; `requests` lists "METHOD path" of every request."""

    def __init__(self, socket_path: Path) -> None:
        self.socket_path = socket_path
        self.requests: list[str] = []
        self._runner: web.AppRunner | None = None

    @property
    def docker_host(self) -> str:
        return f"unix://{self.socket_path}"

    async def start(self) -> FakeDocker:
        app = web.Application(middlewares=[self._record])
        routes = [
            web.get("/_ping", self._ping),
            web.get("/version", self._version),
            web.get(r"/images/{name:.+}/json", self._no_image),
            web.post("/images/create", self._cannot_pull),
        ]
        app.add_routes(routes)
        # The SDK puts /v1.NN before every path once it knows the version.
        app.add_routes([web.route(r.method, f"/v{{version:[0-9.]+}}{r.path}", r.handler) for r in routes])
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        await web.UnixSite(self._runner, str(self.socket_path)).start()
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    @web.middleware
    async def _record(self, request: web.Request, handler: web.RequestHandler) -> web.StreamResponse:
        self.requests.append(f"{request.method} {request.path}")
        return await handler(request)

    async def _ping(self, _: web.Request) -> web.Response:
        return web.Response(text="OK", headers={"Api-Version": API_VERSION, "Docker-Experimental": "false"})

    async def _version(self, _: web.Request) -> web.Response:
        return web.json_response({"Version": "25.0.0", "ApiVersion": API_VERSION, "MinAPIVersion": "1.24", "Os": "linux", "Arch": "amd64"})

    async def _no_image(self, request: web.Request) -> web.Response:
        return web.json_response({"message": f"No such image: {request.match_info['name']}"}, status=404)

    async def _cannot_pull(self, request: web.Request) -> web.Response:
        message = 'Get "https://registry-1.docker.io/v2/": dial tcp: lookup registry-1.docker.io: no such host'
        return web.json_response({"message": message}, status=500)
