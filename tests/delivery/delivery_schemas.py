"""Validate rendered manifests the way the API server (with kubectl's strict field validation) would.

Core kinds go through kubernetes-validate's strict schemas (unknown fields are errors). Custom kinds go through
their CRD's openAPIV3Schema (upstream copies in shared/upstream/crds/, Kanari's generated CRD, kopf's peering
CRDs from the chart) converted to JSON Schema, with every object that lists its properties closed unless the
CRD preserves unknown fields: the API server would prune such a field silently, and kubectl --validate=strict
rejects it. Metadata is checked as ObjectMeta. CEL rules (x-kubernetes-validations) are not evaluated here;
ModelDeployments additionally go through kanari.api.v1alpha1.parse_model_deployment, which enforces the same
rules.
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import yaml

from tests.support.schemas import crd_schemas

ROOT = Path(__file__).resolve().parents[2]
UPSTREAM = ROOT.parent / "shared" / "upstream"
CHART = ROOT / "charts" / "kanari"
HELM = ROOT / ".tools" / "bin" / "helm"
# The oldest Kubernetes minor the chart supports (Chart.yaml kubeVersion) and the newest this package ships.
KUBE_VERSIONS = ("1.30", kubernetes_validate.utils.latest_version())


class ManifestError(AssertionError):
    pass


def is_core(api_version: str) -> bool:
    group = api_version.rpartition("/")[0]
    return group == "" or "." not in group or group.endswith(".k8s.io")


def _where(obj: dict[str, Any]) -> str:
    meta = obj.get("metadata") or {}
    name = f"{meta.get('namespace')}/{meta.get('name')}" if meta.get("namespace") else meta.get("name")
    return f"{obj.get('kind')} {name}"


def _path(err: jsonschema.ValidationError) -> str:
    return ".".join(str(p) for p in err.absolute_path) or "(root)"


def validate(obj: dict[str, Any]) -> None:
    """Raise ManifestError naming the object and field when `obj` would be rejected."""
    api_version, kind = obj.get("apiVersion", ""), obj.get("kind", "")
    if is_core(api_version):
        for version in KUBE_VERSIONS:
            try:
                kubernetes_validate.validate(obj, version, strict=True)
            except kubernetes_validate.utils.ValidationError as err:
                raise ManifestError(f"{_where(obj)} (Kubernetes {version}): {_path(err)}: {err.message}") from None
            except kubernetes_validate.utils.SchemaNotFoundError as err:
                raise ManifestError(f"{_where(obj)}: {err.message}") from None
        return
    schema = crd_schemas().get((api_version, kind))
    if schema is None:
        raise ManifestError(f"{_where(obj)}: no CRD schema for {api_version} {kind}")
    try:
        jsonschema.Draft4Validator(schema).validate(obj)
    except jsonschema.ValidationError as err:
        raise ManifestError(f"{_where(obj)} (CRD {api_version} {kind}): {_path(err)}: {err.message}") from None
    validate_metadata(obj)


def validate_metadata(obj: dict[str, Any]) -> None:
    """ObjectMeta of a custom object, checked through a core kind that embeds the same type."""
    probe = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": obj.get("metadata") or {}}
    try:
        kubernetes_validate.validate(probe, KUBE_VERSIONS[-1], strict=True)
    except kubernetes_validate.utils.ValidationError as err:
        raise ManifestError(f"{_where(obj)}: {_path(err)}: {err.message}") from None


def argocd_cm() -> Any:
    """argocd/argocd_cm.py, the generator of manifests/argocd/argocd-cm-kanari.yaml (a script, not a package)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("kanari_argocd_cm", ROOT / "argocd" / "argocd_cm.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def load_all(text: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(text) if d]


def helm(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(HELM), *args], capture_output=True, text=True, timeout=60, check=False)


def render_chart(*args: str, namespace: str = "kanari-system", release: str = "kanari") -> list[dict[str, Any]]:
    """`helm template` with the CRDs of the chart's crds/ directory, as `helm install` would apply them."""
    proc = helm("template", release, str(CHART), "--namespace", namespace, "--include-crds", *args)
    if proc.returncode != 0:
        raise ManifestError(f"helm template {' '.join(args)} failed:\n{proc.stderr}")
    return load_all(proc.stdout)
