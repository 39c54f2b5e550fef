"""Model-registry chores of the demo that are not the training pipeline's: the seed dataset in S3, approving
a version, and the deliberately broken version (a fault-injection model).

The fault-injection model is an honest artifact: the trained weights of an existing version plus a
`fault-injection.json` the reference predictor honours (devstack.predictor), registered as a new version
whose registry metadata says `kanari:fault-injection`. No production code has a test branch for it.
"""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import pandas as pd
from kanari import registry_metadata as keys

from devstack.predictor import FAULT_FILE, FaultInjection
from kfp_pipelines import aws, registry_admin

FAULT_KEY = keys.FAULT_INJECTION


@dataclass(frozen=True)
class Registered:
    arn: str
    version: str
    model_uri: str
    baseline_uri: str
    metadata: dict[str, str]
    approval: str


def describe(sm: Any, arn: str) -> Registered:
    desc = sm.describe_model_package(ModelPackageName=arn)
    meta = dict(desc.get("CustomerMetadataProperties") or {})
    container = (desc.get("InferenceSpecification") or {}).get("Containers", [{}])[0]
    return Registered(
        arn=arn,
        version=f"{desc.get('ModelPackageGroupName')}/{desc.get('ModelPackageVersion')}",
        model_uri=str(container.get("ModelDataUrl", "")),
        baseline_uri=meta.get(keys.BASELINE_URI, ""),
        metadata=meta,
        approval=str(desc.get("ModelApprovalStatus", "")),
    )


def upload_dataset(s3: Any, bucket: str, key: str, frame: pd.DataFrame) -> str:
    """Put a dataset version (the bucket is versioned); returns its S3 version id."""
    resp = s3.put_object(Bucket=bucket, Key=key, Body=frame.to_csv(index=False).encode(), ContentType="text/csv")
    return str(resp.get("VersionId", ""))


def shifted(frame: pd.DataFrame, factors: Mapping[str, float]) -> pd.DataFrame:
    out = frame.copy()
    for feature, factor in factors.items():
        out[feature] = out[feature] * factor
    return out


def approve(sm: Any, arn: str, reason: str) -> str:
    return registry_admin.set_status(sm, arn, "Approved", reason)


def fault_artifact(model_tar_gz: bytes, fault: FaultInjection) -> bytes:
    """The same model.tar.gz with fault-injection.json added."""
    out = io.BytesIO()
    with tarfile.open(fileobj=io.BytesIO(model_tar_gz), mode="r:gz") as src, tarfile.open(fileobj=out, mode="w:gz") as dst:
        for member in src.getmembers():
            if member.name.lstrip("./") == FAULT_FILE:
                continue
            dst.addfile(member, src.extractfile(member) if member.isfile() else None)
        data = json.dumps(fault.to_json()).encode()
        info = tarfile.TarInfo(FAULT_FILE)
        info.size = len(data)
        dst.addfile(info, io.BytesIO(data))
    return out.getvalue()


def register_fault_model(sm: Any, s3: Any, base: Registered, fault: FaultInjection, reason: str) -> Registered:
    """Register `base`'s weights with a fault injected as a new version of its group (PendingManualApproval)."""
    src = aws.S3Uri.parse(base.model_uri, "model_uri")
    original = aws.get_bytes(s3, src)
    artifact = fault_artifact(original, fault)
    folder = "fault-injection" if not fault.miss_rate else f"fault-miss-{fault.miss_rate:g}"
    dest = aws.S3Uri(src.bucket, src.key.rsplit("/", 1)[0] + f"/{folder}/model.tar.gz")
    aws.put_bytes(s3, dest, artifact, "application/gzip")
    desc = sm.describe_model_package(ModelPackageName=base.arn)
    spec = desc["InferenceSpecification"]
    spec["Containers"] = [{**spec["Containers"][0], "ModelDataUrl": str(dest)}]
    metadata = dict(base.metadata)
    metadata[FAULT_KEY] = f"errorRate={fault.error_rate} latencySeconds={fault.latency_seconds}" + (
        f" missRate={fault.miss_rate:g}" if fault.miss_rate else "")
    request: dict[str, Any] = {
        "ModelPackageGroupName": desc["ModelPackageGroupName"],
        "ModelPackageDescription": reason[:1024],
        "InferenceSpecification": spec,
        "ModelApprovalStatus": "PendingManualApproval",
        "CustomerMetadataProperties": metadata,
        "ClientToken": hashlib.sha256(f"{base.arn}\n{dest}".encode()).hexdigest()[:36],
    }
    for key in ("ModelMetrics", "DriftCheckBaselines", "MetadataProperties"):
        if desc.get(key):
            request[key] = desc[key]
    arn = str(sm.create_model_package(**request)["ModelPackageArn"])
    return describe(sm, arn)
