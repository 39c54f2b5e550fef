"""A minimal async Kubernetes API client for the stand-ins (list+watch, merge-patch, create), over aiohttp.

The stand-ins act as controllers of the cluster stand-in (KServe, prometheus-operator), so they talk to it
over its HTTP API like real controllers do, never through the emulator's memory.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from typing import Any

import aiohttp

log = logging.getLogger("devstack.kubeapi")


class KubeApi:
    def __init__(self, url: str):
        self.url = url.rstrip("/")
        self._session: aiohttp.ClientSession | None = None

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(headers={"Authorization": "Bearer kanari-local"})
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    @staticmethod
    def path(group: str, version: str, plural: str, namespace: str | None = None, name: str | None = None) -> str:
        base = f"/apis/{group}/{version}" if group else f"/api/{version}"
        if namespace:
            base += f"/namespaces/{namespace}"
        base += f"/{plural}"
        return f"{base}/{name}" if name else base

    async def get(self, path: str) -> dict[str, Any] | None:
        async with self.session.get(self.url + path) as resp:
            if resp.status == 404:
                return None
            resp.raise_for_status()
            return dict(await resp.json())

    async def create(self, path: str, obj: dict[str, Any]) -> dict[str, Any]:
        async with self.session.post(self.url + path, json=obj) as resp:
            resp.raise_for_status()
            return dict(await resp.json())

    async def merge_patch(self, path: str, patch: dict[str, Any]) -> dict[str, Any] | None:
        headers = {"Content-Type": "application/merge-patch+json"}
        async with self.session.patch(self.url + path, data=json.dumps(patch), headers=headers) as resp:
            if resp.status == 404:
                return None
            resp.raise_for_status()
            return dict(await resp.json())

    async def watch(self, path: str, retry_delay: float = 1.0) -> AsyncIterator[tuple[str, dict[str, Any]]]:
        """(type, object) for every change under `path`, forever; reconnects, replaying current objects."""
        while True:
            try:
                timeout = aiohttp.ClientTimeout(total=None, sock_read=None)
                async with self.session.get(self.url + path, params={"watch": "true"}, timeout=timeout) as resp:
                    resp.raise_for_status()
                    async for line in resp.content:
                        if line.strip():
                            event = json.loads(line)
                            yield str(event.get("type")), dict(event.get("object") or {})
            except (aiohttp.ClientError, json.JSONDecodeError) as exc:
                log.warning("watch %s interrupted (%s); reconnecting", path, exc)
            await asyncio.sleep(retry_delay)
