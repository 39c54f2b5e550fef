"""`kanari render -f FILE` and `kanari validate -f FILE`: the controller's output without a cluster.

Rendering runs the controller's own reconcile for a first deployment, so what it prints is exactly what
the operator would create (like `helm template`). `validate` runs the same reconcile offline and prints
nothing but errors: whatever `render` would refuse (sklearn on Inferentia, an unknown runtime), `validate`
refuses too. Every error of every document is reported, not the first.

A model package is resolved against the SageMaker Model Registry of the ARN's own region; `--offline` (and
`validate`) render with a placeholder artifact instead and say so.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kanari.cli.common import FAILED, OK, USAGE, CliError, classify

KIND, API_VERSION = "ModelDeployment", "kanari.dev/v1alpha1"
YAML_SUFFIXES = (".yaml", ".yml", ".json")
OFFLINE_BUCKET = "kanari-offline-placeholder"


@dataclass
class Document:
    where: str
    body: dict[str, Any]


@dataclass
class Loaded:
    documents: list[Document]
    errors: list[str]
    warnings: list[str]


def _strict_loader() -> type:
    import yaml

    base = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

    class StrictLoader(base):  # type: ignore[misc, valid-type]
        """SafeLoader that refuses duplicate mapping keys (the API server would keep only the last one)."""

    def construct_mapping(loader: Any, node: Any, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, Any] = {}
        for key_node, _ in node.value:
            key = loader.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    "while constructing a mapping", node.start_mark, f"duplicate key {key!r}", key_node.start_mark
                )
            seen[key] = True
        return dict(yaml.SafeLoader.construct_mapping(loader, node, deep=deep))

    StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, construct_mapping)
    return StrictLoader


def expand(paths: list[str], recursive: bool) -> list[str]:
    """-f values as kubectl reads them: files, "-" for stdin, directories (their *.yaml|yml|json; -R: below)."""
    out: list[str] = []
    for path in paths:
        p = Path(path)
        if path == "-" or not p.is_dir():
            out.append(path)
            continue
        found = p.rglob("*") if recursive else p.iterdir()
        out.extend(sorted(str(f) for f in found if f.is_file() and f.suffix in YAML_SUFFIXES))
    return out


def load(paths: list[str], recursive: bool = False) -> Loaded:
    import yaml

    loader = _strict_loader()
    result = Loaded([], [], [])
    files = expand(paths, recursive)
    if not files:
        raise CliError(f"{', '.join(paths)}: no .yaml, .yml or .json files", USAGE)
    for path in files:
        try:
            text = sys.stdin.read() if path == "-" else Path(path).read_text()
        except OSError as exc:
            raise CliError(f"{path}: {exc.strerror or exc}", USAGE) from None
        name = "<stdin>" if path == "-" else path
        try:
            docs = list(yaml.load_all(text, Loader=loader))
        except yaml.YAMLError as exc:
            result.errors.append(f"{name}: not valid YAML: {' '.join(str(exc).split())}")
            continue
        n = 0
        for doc in docs:
            if doc is None:
                continue
            n += 1
            for where, item in _items(f"{name} document {n}", doc):
                _classify(result, where, item)
    return result


def _items(where: str, doc: Any) -> Iterator[tuple[str, Any]]:
    if isinstance(doc, dict) and doc.get("kind") == "List" and isinstance(doc.get("items"), list):
        for j, item in enumerate(doc["items"]):
            yield f"{where} item {j + 1}", item
    else:
        yield where, doc


def _classify(result: Loaded, where: str, doc: Any) -> None:
    if not isinstance(doc, dict):
        result.errors.append(f"{where}: not a Kubernetes object (a mapping with apiVersion and kind)")
        return
    kind, version = doc.get("kind"), doc.get("apiVersion")
    name = (doc.get("metadata") or {}).get("name", "?") if isinstance(doc.get("metadata"), dict) else "?"
    if kind != KIND:
        result.warnings.append(f"{where}: {kind or 'no kind'} {name} ({version or 'no apiVersion'}) is not a "
                               f"{KIND}; ignored")
    elif version != API_VERSION:
        result.errors.append(f"{where} ({name}): apiVersion {version!r}: this kanari reads {API_VERSION}")
    else:
        result.documents.append(Document(f"{where} ({name})", doc))


def offline_package(arn: str) -> Any:
    from kanari.controller.model_source import PackageInfo

    tail = arn.rsplit(":", 1)[-1].removeprefix("model-package/")
    return PackageInfo(arn=arn, storage_uri=f"s3://{OFFLINE_BUCKET}/{tail}/model.tar.gz", image=None,
                       approval_status="Approved", metadata={})


def resolve_online(arn: str) -> Any:
    """The package from the registry of the ARN's region (AWS_REGION is not needed for an ARN)."""
    from kanari import awsclient
    from kanari.controller.model_source import TransientError, describe_package, sagemaker_client

    try:
        return describe_package(sagemaker_client(awsclient.region_of_arn(arn)), arn)
    except TransientError as exc:
        # The controller retries these; a CLI reports them with the everyday exit code of the cause.
        cause = classify(exc.__context__) if exc.__context__ is not None else None
        raise CliError(f"cannot resolve {arn}: {exc}", cause.code if cause else FAILED) from None


def render_objects(doc: dict[str, Any], config: Any, resolve: Any = None) -> list[dict[str, Any]]:
    """What the controller would create for `doc` on its first reconcile; SpecError when it would refuse."""
    from datetime import UTC, datetime

    from kanari.api.v1alpha1 import SpecError, parse_model_deployment
    from kanari.controller.reconcile import ClusterObservation, reconcile

    md = parse_model_deployment(doc)
    body = md.model_dump(mode="json", by_alias=True, exclude={"status"})
    body["metadata"].setdefault("uid", "")
    body["metadata"].setdefault("generation", 1)
    package = None
    if md.spec.model.modelPackageArn:
        package = (resolve or resolve_online)(md.spec.model.modelPackageArn)
    desired = reconcile(body, ClusterObservation(now=datetime.now(UTC), package=package), config)
    invalid = next((c for c in desired.status.conditions if c.type == "InvalidSpec" and c.status == "True"), None)
    if invalid:
        raise SpecError(invalid.message.split(":", 1)[0], invalid.message.split(":", 1)[-1].strip())
    approval = next((c for c in desired.status.conditions if c.type == "ModelApproved" and c.status == "False"), None)
    if approval:
        raise SpecError("spec.model.modelPackageArn", approval.message.split(":", 1)[-1].strip())
    objects = [o for o in (desired.isvc, *desired.rules.values()) if o is not None]
    for obj in objects:
        # Owner UIDs exist only in a cluster; a rendered manifest must not carry an empty one.
        obj["metadata"].pop("ownerReferences", None)
    return objects


def check(loaded: Loaded, config: Any, offline: bool, rendering: bool = True) -> tuple[list[dict[str, Any]], list[str], list[str]]:
    """Render every document; all errors and warnings, not the first."""
    from kanari.api.v1alpha1 import SpecError

    rendered: list[dict[str, Any]] = []
    errors, warnings = list(loaded.errors), list(loaded.warnings)
    for doc in loaded.documents:
        spec: dict[str, Any] = doc.body["spec"] if isinstance(doc.body.get("spec"), dict) else {}
        model = spec.get("model")
        arn = model.get("modelPackageArn") if isinstance(model, dict) else None
        try:
            objs = render_objects(doc.body, config, offline_package if offline else None)
        except SpecError as err:
            errors.append(f"{doc.where}: {err}")
            continue
        if rendering and offline and arn:
            warnings.append(f"{doc.where}: rendered offline: the artifact of {arn} is a placeholder "
                            f"(s3://{OFFLINE_BUCKET}/...) and its approval is not checked")
        monitoring = spec.get("monitoring")
        if rendering and isinstance(monitoring, dict) and monitoring.get("enabled", True) is not False and not monitoring.get("loggerUrl") \
                and not config.drift_monitor_url:
            warnings.append(f"{doc.where}: monitoring is on but no payload logger is rendered: pass "
                            "--drift-monitor-url (the chart sets KANARI_DRIFT_MONITOR_URL for the controller)")
        rendered.extend(objs)
    return rendered, errors, warnings


def _run(args: argparse.Namespace, emit: bool) -> int:
    import dataclasses

    from kanari.controller.config import OperatorConfig

    config = OperatorConfig.from_env()
    if getattr(args, "drift_monitor_url", None):
        config = dataclasses.replace(config, drift_monitor_url=args.drift_monitor_url)
    loaded = load(args.filename, args.recursive)
    rendered, errors, warnings = check(loaded, config, offline=not emit or args.offline, rendering=emit)
    for w in warnings:
        print(f"warning: {w}", file=sys.stderr)
    for e in errors:
        print(f"error: {e}", file=sys.stderr)
    if errors:
        return FAILED
    if not loaded.documents:
        print(f"error: no {API_VERSION} {KIND} found in {', '.join(args.filename)}", file=sys.stderr)
        return FAILED
    if emit:
        _print(rendered, args.output)
    elif args.output == "name":
        print("\n".join(f"modeldeployment.kanari.dev/{d.body['metadata']['name']}" for d in loaded.documents))
    else:
        print(f"{len(loaded.documents)} {KIND}(s) valid")
    return OK


def _print(objs: list[dict[str, Any]], output: str | None) -> None:
    import json

    import yaml

    if output == "json":
        print(json.dumps({"apiVersion": "v1", "kind": "List", "items": objs}, indent=2))
    elif output == "name":
        for o in objs:
            group = o["apiVersion"].split("/")[0] if "/" in o["apiVersion"] else ""
            print(f"{o['kind'].lower()}{'.' + group if group else ''}/{o['metadata']['name']}")
    else:
        sys.stdout.write(yaml.safe_dump_all(objs, sort_keys=False))


def _files(p: argparse.ArgumentParser) -> None:
    p.add_argument("-f", "--filename", action="append", required=True, metavar="FILE",
                   help="file or directory of ModelDeployment(s), or - for stdin (repeatable)")
    p.add_argument("-R", "--recursive", action="store_true", help="read directories given with -f recursively")


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "render", help="print every object the controller would create for the ModelDeployments in FILE",
        description="Print what the controller would create (like helm template). A modelPackageArn is resolved in "
        "the registry of the ARN's region; --offline renders a placeholder artifact instead.",
    )
    _files(p)
    p.add_argument("--offline", action="store_true", help="do not call the Model Registry (placeholder artifact)")
    p.add_argument("--drift-monitor-url", metavar="URL",
                   help="the drift monitor's URL, for the payload logger (default $KANARI_DRIFT_MONITOR_URL)")
    p.add_argument("-o", "--output", choices=("yaml", "json", "name"), default=None, help="yaml (default)|json|name")
    p.set_defaults(func=lambda a: _run(a, emit=True))
    v = sub.add_parser(
        "validate", help="check ModelDeployments in FILE offline: every check render makes, all errors reported",
        description="Validate offline: schema, cross-field rules and everything render refuses (runtime, "
        "accelerator). Exit 0 valid, 1 invalid, 2 unreadable input.",
    )
    _files(v)
    v.add_argument("-o", "--output", choices=("name",), default=None, help="name: print the valid objects' names")
    v.set_defaults(func=lambda a: _run(a, emit=False))
