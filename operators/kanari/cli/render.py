"""`kanari render -f FILE` and `kanari validate -f FILE`: the controller's output without a cluster.

Rendering runs the controller's own reconcile for a first deployment, so what it prints is exactly what
the operator would create (like `helm template`).
"""

from __future__ import annotations

import argparse
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

from kanari.api.v1alpha1 import API_VERSION, KIND, SpecError, parse_model_deployment
from kanari.controller.config import OperatorConfig
from kanari.controller.model_source import PackageInfo, TransientError, describe_package, sagemaker_client
from kanari.controller.reconcile import ClusterObservation, reconcile


class RenderError(Exception):
    pass


def load_documents(path: str) -> list[tuple[str, dict[str, Any]]]:
    text = sys.stdin.read() if path == "-" else Path(path).read_text()
    try:
        docs = [d for d in yaml.safe_load_all(text) if d is not None]
    except yaml.YAMLError as exc:
        raise RenderError(f"{path}: not valid YAML: {exc}") from None
    out = []
    for i, doc in enumerate(docs):
        where = f"{path} document {i + 1}"
        if isinstance(doc, dict) and doc.get("kind") == KIND:
            out.append((f"{where} ({(doc.get('metadata') or {}).get('name', '?')})", doc))
        elif isinstance(doc, dict) and doc.get("kind") == "List":
            out.extend((f"{where} item {j + 1}", item) for j, item in enumerate(doc.get("items") or []))
    if not out:
        raise RenderError(f"{path}: no {API_VERSION} {KIND} found")
    return out


def validate(where: str, doc: dict[str, Any]) -> None:
    try:
        parse_model_deployment(doc)
    except SpecError as err:
        raise RenderError(f"{where}: {err}") from None


def render_objects(doc: dict[str, Any], config: OperatorConfig, resolve: Any = None) -> list[dict[str, Any]]:
    md = parse_model_deployment(doc)
    body = md.model_dump(mode="json", by_alias=True, exclude={"status"})
    body["metadata"].setdefault("uid", "")
    body["metadata"].setdefault("generation", 1)
    package: PackageInfo | None = None
    if md.spec.model.modelPackageArn:
        package = (resolve or _resolve)(md.spec.model.modelPackageArn)
    desired = reconcile(body, ClusterObservation(now=datetime.now(UTC), package=package), config)
    invalid = next((c for c in desired.status.conditions if c.type == "InvalidSpec" and c.status == "True"), None)
    if invalid:
        raise SpecError(invalid.message.split(":", 1)[0], invalid.message.split(":", 1)[-1].strip())
    approval = next((c for c in desired.status.conditions if c.type == "ModelApproved" and c.status == "False"), None)
    if approval:
        raise SpecError("spec.model.modelPackageArn", approval.message.split(":", 1)[-1].strip())
    objects = [o for o in (desired.isvc, desired.prometheus_rule) if o is not None]
    for obj in objects:
        # Owner UIDs exist only in a cluster; a rendered manifest must not carry an empty one.
        obj["metadata"].pop("ownerReferences", None)
    return objects


def _resolve(arn: str) -> PackageInfo:
    try:
        return describe_package(sagemaker_client(), arn)
    except TransientError as exc:
        raise RenderError(f"cannot resolve {arn}: {exc}") from None


def _run(args: argparse.Namespace, emit: bool) -> int:
    config = OperatorConfig.from_env()
    try:
        docs = load_documents(args.filename)
        rendered: list[dict[str, Any]] = []
        for where, doc in docs:
            validate(where, doc)
            if emit:
                try:
                    rendered.extend(render_objects(doc, config))
                except SpecError as err:
                    raise RenderError(f"{where}: {err}") from None
    except (RenderError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if emit:
        sys.stdout.write(yaml.safe_dump_all(rendered, sort_keys=False))
    else:
        print(f"{len(docs)} {KIND}(s) valid")
    return 0


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("render", help="print every object the controller would create for the ModelDeployments in FILE")
    p.add_argument("-f", "--filename", required=True, help="YAML file with ModelDeployment(s), or - for stdin")
    p.set_defaults(func=lambda a: _run(a, emit=True))
    v = sub.add_parser("validate", help="check ModelDeployments in FILE without printing")
    v.add_argument("-f", "--filename", required=True)
    v.set_defaults(func=lambda a: _run(a, emit=False))
