"""A STAND-IN for a model server that is slow to warm (a Neuron model compiling or loading at start).

Speaks KServe's v1 and v2 REST prediction protocols for one model; answers 503 ("model is not ready", as
KServe's model server does while a model loads) until `load_seconds` after it started, then predictions.
For the warm-up gate's tests and demo only (it serves no real model); binds 127.0.0.1.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web


@dataclass
class WarmingPredictor:
    model: str
    load_seconds: float
    started: float = field(default_factory=time.monotonic)
    requests: list[dict[str, Any]] = field(default_factory=list)  # bodies received, in order
    answered: int = 0
    runner: web.AppRunner | None = None
    port: int = 0

    @property
    def loaded(self) -> bool:
        return time.monotonic() - self.started >= self.load_seconds

    async def _infer(self, request: web.Request) -> web.Response:
        if request.match_info["model"] != self.model:
            return web.json_response({"error": f"Model with name {request.match_info['model']} does not exist."},
                                     status=404)
        try:
            body = await request.json()
        except ValueError:
            return web.json_response({"error": "request body is not JSON"}, status=400)
        self.requests.append(body)
        if not self.loaded:
            return web.json_response({"error": f"Model with name {self.model} is not ready."}, status=503)
        self.answered += 1
        if request.path.startswith("/v2/"):
            return web.json_response({"model_name": self.model, "outputs": [
                {"name": "output-0", "shape": [1], "datatype": "INT64", "data": [1]}]})
        rows = body.get("instances") if isinstance(body, dict) else None
        return web.json_response({"predictions": [1] * (len(rows) if isinstance(rows, list) and rows else 1)})

    async def start(self) -> str:
        app = web.Application()
        app.router.add_post("/v1/models/{model}:predict", self._infer)
        app.router.add_post("/v2/models/{model}/infer", self._infer)
        self.runner = web.AppRunner(app, shutdown_timeout=0.5)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", self.port)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.started = time.monotonic()
        return f"http://127.0.0.1:{self.port}"

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()
