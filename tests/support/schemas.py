"""Validate objects against real CRD schemas (openAPIV3Schema) with jsonschema."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import jsonschema
import yaml

ROOT = Path(__file__).resolve().parents[2]
UPSTREAM_CRDS = ROOT.parent / "shared" / "upstream" / "crds"


def to_jsonschema(node: Any) -> Any:
    """OpenAPI v3.0 as Kubernetes uses it -> JSON Schema draft 4, closed where the CRD is structural.

    Closed: a field the schema does not list would be pruned silently by the API server and is rejected by
    kubectl's strict field validation, so here it is an error.
    """
    if isinstance(node, list):
        return [to_jsonschema(v) for v in node]
    if not isinstance(node, dict):
        return node
    out = {k: to_jsonschema(v) for k, v in node.items() if not k.startswith("x-kubernetes-")}
    if node.get("x-kubernetes-int-or-string"):
        out.pop("type", None)
        out["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    if out.pop("nullable", False) and "type" in out:
        out["type"] = [out["type"], "null"]
    if "properties" in node and "additionalProperties" not in node and not node.get(
        "x-kubernetes-preserve-unknown-fields"
    ):
        out["additionalProperties"] = False
    return out


def crd_files() -> list[Path]:
    return [
        *sorted(UPSTREAM_CRDS.glob("*.yaml")),
        ROOT / "manifests" / "crds" / "kanari.dev_modeldeployments.yaml",
        *sorted((ROOT / "charts" / "kanari" / "crds").glob("*.yaml")),
    ]


@functools.cache
def crd_schemas() -> dict[tuple[str, str], dict[str, Any]]:
    """(apiVersion, kind) -> JSON schema of every served version, upstream CRDs and Kanari's own."""
    out: dict[tuple[str, str], dict[str, Any]] = {}
    for f in crd_files():
        for crd in yaml.load_all(f.read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader)):
            if not crd or crd.get("kind") != "CustomResourceDefinition":
                continue
            group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"]
            for v in crd["spec"]["versions"]:
                if not v.get("served", True):
                    continue
                schema = to_jsonschema(v["schema"]["openAPIV3Schema"])
                # metadata is ObjectMeta, checked on its own; the CRD only ever narrows the name's length.
                schema.setdefault("properties", {}).update(
                    {"apiVersion": {"type": "string"}, "kind": {"type": "string"}, "metadata": {"type": "object"}}
                )
                out[(f"{group}/{v['name']}", kind)] = schema
    return out


def validate_custom(obj: dict[str, Any]) -> None:
    """Raise jsonschema.ValidationError when `obj` does not fit its CRD; KeyError when its kind is unknown."""
    schema = crd_schemas()[(obj["apiVersion"], obj["kind"])]
    jsonschema.Draft4Validator(schema).validate(obj)
