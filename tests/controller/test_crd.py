"""The generated CRD: up to date, a valid CustomResourceDefinition, structural, and readable by kubectl."""

from __future__ import annotations

from typing import Any

import kubernetes_validate
import yaml
from kanari.api import crd


def test_committed_crd_copies_are_current() -> None:
    # Fails when the typed spec changed but `make crds` was not run (manifests/ and the chart both).
    assert crd.main(["--check"]) == 0


def test_crd_is_a_valid_customresourcedefinition() -> None:
    obj = yaml.safe_load(crd.OUTPUTS[0].read_text())
    kubernetes_validate.validate(obj, "1.30", strict=True)
    names = obj["spec"]["names"]
    assert (obj["metadata"]["name"], names["shortNames"]) == ("modeldeployments.kanari.dev", ["md"])
    version = obj["spec"]["versions"][0]
    assert version["subresources"] == {"status": {}}
    columns = [c["name"] for c in version["additionalPrinterColumns"]]
    assert {"Model", "Phase", "Weight", "Ready", "Age"} <= set(columns)


def _walk(node: dict[str, Any], path: str) -> list[str]:
    """Violations of Kubernetes' structural-schema rules."""
    problems = []
    if "type" not in node and not node.get("x-kubernetes-preserve-unknown-fields") \
            and not node.get("x-kubernetes-int-or-string"):
        problems.append(f"{path}: no type")
    if "properties" in node and "additionalProperties" in node:
        problems.append(f"{path}: properties and additionalProperties together")
    for banned in ("anyOf", "oneOf", "allOf", "$ref", "nullable", "const", "title"):
        if banned in node:
            problems.append(f"{path}: {banned}")
    for key, sub in (node.get("properties") or {}).items():
        problems += _walk(sub, f"{path}.{key}")
    if isinstance(node.get("items"), dict):
        problems += _walk(node["items"], f"{path}[]")
    if isinstance(node.get("additionalProperties"), dict):
        problems += _walk(node["additionalProperties"], f"{path}{{}}")
    for rule in node.get("x-kubernetes-validations", []):
        if not rule.get("message"):
            problems.append(f"{path}: CEL rule without a message")
    return problems


def test_schema_is_structural() -> None:
    schema = crd.build_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    assert _walk(schema, "") == []
    # Lists that CEL iterates must be bounded, or the API server rejects the rules as too costly.
    rollout = schema["properties"]["spec"]["properties"]["rollout"]["properties"]
    assert rollout["steps"]["maxItems"] == 50
    assert rollout["analysis"]["properties"]["metrics"]["maxItems"] == 20
