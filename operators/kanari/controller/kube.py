"""The few Kubernetes API calls the controller makes, through the official client (run in threads)."""

from __future__ import annotations

import asyncio
from typing import Any

from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from kanari.api import v1alpha1 as api

MODEL_DEPLOYMENT = (api.GROUP, api.VERSION, api.PLURAL)
ISVC = ("serving.kserve.io", "v1beta1", "inferenceservices")
PROMETHEUS_RULE = ("monitoring.coreos.com", "v1", "prometheusrules")
MERGE_PATCH = "application/merge-patch+json"
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
        group, version, plural = gvr
        try:
            return await asyncio.to_thread(self.api.get_namespaced_custom_object, group, version, namespace, plural, name)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise

    async def create(self, gvr: tuple[str, str, str], obj: dict[str, Any]) -> dict[str, Any]:
        group, version, plural = gvr
        ns = obj["metadata"]["namespace"]
        return await asyncio.to_thread(self.api.create_namespaced_custom_object, group, version, ns, plural, obj)

    async def merge_patch(self, gvr: tuple[str, str, str], namespace: str, name: str, patch: dict[str, Any]) -> Any:
        group, version, plural = gvr
        return await asyncio.to_thread(
            self._merge_patch, f"/apis/{group}/{version}/namespaces/{namespace}/{plural}/{name}", patch
        )

    def _merge_patch(self, path: str, body: dict[str, Any]) -> Any:
        # The generated client chooses the PATCH media type differently from one release to the next (and
        # 30.x takes no override); a merge patch must be sent as one, so the header is set here.
        return self.api.api_client.call_api(
            path, "PATCH",
            header_params={"Content-Type": MERGE_PATCH, "Accept": "application/json"},
            body=body, response_type="object", auth_settings=["BearerToken"], _return_http_data_only=True,
        )

    async def delete(self, gvr: tuple[str, str, str], namespace: str, name: str) -> None:
        group, version, plural = gvr
        try:
            await asyncio.to_thread(self.api.delete_namespaced_custom_object, group, version, namespace, plural, name)
        except ApiException as exc:
            if exc.status != 404:
                raise

    async def patch_status(self, namespace: str, name: str, status: dict[str, Any]) -> dict[str, Any]:
        path = f"/apis/{api.GROUP}/{api.VERSION}/namespaces/{namespace}/{api.PLURAL}/{name}/status"
        return dict(await asyncio.to_thread(self._merge_patch, path, {"status": status}))

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
