"""The few Kubernetes API calls the controller makes, through the official client (run in threads)."""

from __future__ import annotations

import asyncio
from typing import Any

from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from kanari.api import v1alpha1 as api

ISVC = ("serving.kserve.io", "v1beta1", "inferenceservices")
PROMETHEUS_RULE = ("monitoring.coreos.com", "v1", "prometheusrules")
# Keys whose absence in the desired object must be written as a removal (JSON merge patch null):
# promoting a Serverless canary removes canaryTrafficPercent; ending a RawDeployment canary removes spec.canary.
REMOVABLE = {("spec", "predictor", "canaryTrafficPercent"), ("spec", "canary")}


def load_config() -> None:
    try:
        config.load_incluster_config()
    except config.ConfigException:
        config.load_kube_config()


class Kube:
    def __init__(self, api_client: client.ApiClient | None = None):
        self.api = client.CustomObjectsApi(api_client)

    async def get(self, gvr: tuple[str, str, str], namespace: str, name: str) -> dict[str, Any] | None:
        try:
            return await asyncio.to_thread(self.api.get_namespaced_custom_object, *gvr, namespace, name)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise

    async def create(self, gvr: tuple[str, str, str], obj: dict[str, Any]) -> dict[str, Any]:
        ns = obj["metadata"]["namespace"]
        return await asyncio.to_thread(self.api.create_namespaced_custom_object, *gvr, ns, obj)

    async def merge_patch(self, gvr: tuple[str, str, str], namespace: str, name: str, patch: dict[str, Any]) -> Any:
        return await asyncio.to_thread(
            self.api.patch_namespaced_custom_object, *gvr, namespace, name, patch,
            _content_type="application/merge-patch+json",
        )

    async def delete(self, gvr: tuple[str, str, str], namespace: str, name: str) -> None:
        try:
            await asyncio.to_thread(self.api.delete_namespaced_custom_object, *gvr, namespace, name)
        except ApiException as exc:
            if exc.status != 404:
                raise

    async def patch_status(self, namespace: str, name: str, status: dict[str, Any]) -> None:
        await asyncio.to_thread(
            self.api.patch_namespaced_custom_object_status,
            api.GROUP, api.VERSION, api.PLURAL, namespace, name, {"status": status},
            _content_type="application/merge-patch+json",
        )

    async def apply(self, gvr: tuple[str, str, str], desired: dict[str, Any], current: dict[str, Any] | None) -> str:
        """Create or converge `desired`; returns "created", "updated" or "unchanged"."""
        meta = desired["metadata"]
        if current is None:
            await self.create(gvr, desired)
            return "created"
        patch = merge_patch_for(desired, current)
        if not patch:
            return "unchanged"
        # The resourceVersion makes a concurrent writer's change a 409 instead of a silent overwrite.
        patch.setdefault("metadata", {})["resourceVersion"] = current["metadata"].get("resourceVersion")
        await self.merge_patch(gvr, meta["namespace"], meta["name"], patch)
        return "updated"


def _subset_patch(desired: Any, current: Any, path: tuple[str, ...]) -> Any:
    """The merge patch that makes `current` contain `desired` (fields others own are left alone)."""
    if isinstance(desired, dict) and isinstance(current, dict):
        out: dict[str, Any] = {}
        for key, value in desired.items():
            sub = _subset_patch(value, current.get(key), (*path, key)) if key in current else value
            if sub is not _SAME:
                out[key] = sub
        for removable in REMOVABLE:
            if removable[:-1] == path and removable[-1] in current and removable[-1] not in desired:
                out[removable[-1]] = None
        return out if out else _SAME
    return _SAME if desired == current else desired


_SAME: Any = object()


def merge_patch_for(desired: dict[str, Any], current: dict[str, Any]) -> dict[str, Any]:
    patch = _subset_patch(
        {k: desired[k] for k in ("metadata", "spec") if k in desired},
        {k: current.get(k) or {} for k in ("metadata", "spec")},
        (),
    )
    return {} if patch is _SAME else patch
