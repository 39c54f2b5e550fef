"""`kanari lineage NAME`: what produced the model serving here?

Read from the ModelDeployment (which version serves, and the lineage the controller copied into its
status) and from the SageMaker Model Registry (the package the pipeline registered: dataset, code,
pipeline run, training job, images, metrics, gate decision, approval, the drift alert that started the
run). `assemble` is pure; the handler only fetches.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

META = "kanari:"


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = subparsers.add_parser("lineage", help="what produced the model a ModelDeployment serves")
    p.add_argument("name", help="ModelDeployment name")
    p.add_argument("-n", "--namespace", help="namespace (default: the kubeconfig context's)")
    p.add_argument("-o", "--output", choices=("text", "json"), default="text")
    p.set_defaults(func=cmd_lineage)


def _identity(who: dict[str, Any] | None) -> str:
    who = who or {}
    return str(who.get("UserProfileName") or (who.get("IamIdentity") or {}).get("Arn") or who.get("DomainId") or "")


def _time(value: Any) -> str:
    return value.isoformat() if hasattr(value, "isoformat") else str(value or "")


def assemble(deployment: dict[str, Any], package: dict[str, Any] | None, job: dict[str, Any] | None) -> dict[str, Any]:
    """The lineage record (pure): the registry's facts where the package is known, the status otherwise."""
    meta = deployment.get("metadata") or {}
    spec = deployment.get("spec") or {}
    status = deployment.get("status") or {}
    stable = status.get("stableModel") or {}
    lineage = status.get("lineage") or {}
    props = (package or {}).get("CustomerMetadataProperties") or {}

    def fact(key: str, status_key: str) -> str:
        return str(props.get(f"{META}{key}") or lineage.get(status_key) or "")

    containers = ((package or {}).get("InferenceSpecification") or {}).get("Containers") or [{}]
    alert = None
    if fact("drift-alert", "driftAlert"):
        alert = {"alertname": fact("drift-alert", "driftAlert"),
                 "fingerprint": fact("drift-alert-fingerprint", "driftAlertFingerprint"),
                 "startsAt": fact("drift-alert-starts-at", "driftAlertStartsAt"),
                 "feature": str(props.get(f"{META}drift-alert-feature", "")),
                 "severity": str(props.get(f"{META}drift-alert-severity", ""))}
    job_arn = fact("training-job-arn", "trainingJob")
    return {
        "modelDeployment": f"{meta.get('namespace', 'default')}/{meta.get('name', '')}",
        "serving": {
            "revision": stable.get("revision", ""),
            "version": stable.get("version", ""),
            "modelPackageArn": stable.get("modelPackageArn") or (spec.get("model") or {}).get("modelPackageArn") or "",
            "modelDataUrl": str(containers[0].get("ModelDataUrl") or stable.get("storageUri") or ""),
            "servingImage": str(containers[0].get("Image") or stable.get("image") or ""),
        },
        "dataset": {"uri": fact("dataset-uri", "datasetUri"), "version": fact("dataset-version", "datasetVersion")},
        "code": {"gitSha": fact("git-sha", "gitSha"), "sourceDigest": str(props.get(f"{META}source-digest", ""))},
        "pipelineRun": fact("pipeline-run-id", "pipelineRun"),
        "trainingJob": {
            "arn": job_arn,
            "name": job_arn.rsplit("/", 1)[-1] if job_arn else "",
            "status": str((job or {}).get("TrainingJobStatus", "")),
            "instanceType": str(((job or {}).get("ResourceConfig") or {}).get("InstanceType", "")),
            "image": str(props.get(f"{META}training-image") or ((job or {}).get("AlgorithmSpecification") or {}).get(
                "TrainingImage", "")),
            "imageDigest": fact("image-digest", "imageDigest"),
        },
        "metrics": {k.removeprefix(f"{META}metric."): float(v) for k, v in sorted(props.items())
                    if k.startswith(f"{META}metric.")},
        "gate": str(props.get(f"{META}gate", "")),
        "reason": str(props.get(f"{META}reason", "")),
        "approval": {
            "status": str((package or {}).get("ModelApprovalStatus", "")),
            "by": _identity((package or {}).get("LastModifiedBy")) if package else "",
            "at": _time((package or {}).get("LastModifiedTime")) if package else "",
            "description": str((package or {}).get("ApprovalDescription", "")),
        },
        "triggeredBy": alert,
        "source": "registry" if package else "status",
    }


def render(record: dict[str, Any]) -> str:
    s, d, t, a = record["serving"], record["dataset"], record["trainingJob"], record["approval"]
    lines = [
        f"ModelDeployment {record['modelDeployment']} serves {s['version'] or '?'} ({s['modelPackageArn'] or s['modelDataUrl']})",
        f"  dataset        {d['uri']} (version {d['version'] or 'unknown'})",
        f"  code           git {record['code']['gitSha'] or 'unknown'}"
        + (f", source {record['code']['sourceDigest']}" if record["code"]["sourceDigest"] else ""),
        f"  pipeline run   {record['pipelineRun'] or 'unknown'}",
        f"  training job   {t['arn'] or 'unknown'}" + (f" ({t['status']}, {t['instanceType']})" if t["status"] else ""),
        f"  images         training {t['image'] or '?'} @ {t['imageDigest'] or '?'}; serving {s['servingImage'] or '?'}",
        "  metrics        " + (", ".join(f"{k}={v:.4f}" for k, v in record["metrics"].items()) or "none recorded"),
        f"  gate           {record['gate'] or 'not recorded'}",
        f"  approval       {a['status'] or 'unknown'}" + (f" by {a['by']}" if a["by"] else "")
        + (f" at {a['at']}" if a["at"] else "") + (f": {a['description']}" if a["description"] else ""),
    ]
    alert = record["triggeredBy"]
    lines.append("  triggered by   " + (f"drift alert {alert['alertname']} (fingerprint {alert['fingerprint']}, "
                                       f"since {alert['startsAt']}" + (f", feature {alert['feature']}" if alert["feature"]
                                                                       else "") + ")" if alert else "no alert (a manual or scheduled run)"))
    if record["source"] == "status":
        lines.append("  (from the ModelDeployment's status only: no registry package to read)")
    return "\n".join(lines)


def cmd_lineage(args: argparse.Namespace) -> int:
    from kanari.cli.rollout import CliError, _connect, _get
    from kfp_pipelines import aws

    try:
        api, ns = _connect(args.namespace)
        deployment = _get(api, ns, args.name)
    except CliError as exc:
        print(f"kanari: {exc}", file=sys.stderr)
        return 1
    status = deployment.get("status") or {}
    arn = (status.get("stableModel") or {}).get("modelPackageArn") or ((deployment.get("spec") or {}).get(
        "model") or {}).get("modelPackageArn")
    package = job = None
    if arn:
        sm = aws.client("sagemaker", region=arn.split(":")[3] or None)
        try:
            package = dict(sm.describe_model_package(ModelPackageName=arn))
        except aws.ClientError as exc:
            print(f"kanari: model package {arn}: {aws.error_code(exc)}: {aws.error_message(exc)}", file=sys.stderr)
            return 1
        job_arn = str((package.get("CustomerMetadataProperties") or {}).get(f"{META}training-job-arn", ""))
        if job_arn:
            try:
                job = dict(sm.describe_training_job(TrainingJobName=job_arn.rsplit("/", 1)[-1]))
            except aws.ClientError as exc:
                # Training jobs are kept by SageMaker, but a role may not be allowed to read them.
                print(f"kanari: training job {job_arn}: {aws.error_code(exc)} (shown from the registry only)",
                      file=sys.stderr)
    record = assemble(deployment, package, job)
    print(json.dumps(record, indent=2, sort_keys=True) if args.output == "json" else render(record))
    return 0
