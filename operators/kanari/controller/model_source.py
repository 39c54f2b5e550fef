"""Resolving a SageMaker Model Registry package to what KServe serves: its S3 artifact and image.

The endpoint comes from the standard AWS configuration (AWS_ENDPOINT_URL for LocalStack or moto); the
credentials from IRSA in the cluster. Throttling is retried by botocore's adaptive mode; anything still
failing is a TransientError (retried by the controller), never mistaken for "not found".
"""

from __future__ import annotations

import posixpath
from dataclasses import dataclass, field
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from kanari import awsclient
from kanari import registry_metadata as keys
from kanari.api.v1alpha1 import Lineage, ModelDeploymentSpec, ModelRef, SpecError

ARN_FIELD = "spec.model.modelPackageArn"

class TransientError(RuntimeError):
    """The registry could not be asked (throttled past retries, network, 5xx): try again later."""


@dataclass(frozen=True)
class PackageInfo:
    arn: str
    storage_uri: str
    image: str | None
    approval_status: str
    metadata: dict[str, str] = field(default_factory=dict)

    @property
    def lineage(self) -> Lineage:
        values = {k: next((self.metadata[m] for m in keys if m in self.metadata), None) for k, keys in keys.LINEAGE.items()}
        return Lineage(modelPackageArn=self.arn, **values)

    @property
    def baseline_uri(self) -> str | None:
        explicit = next((self.metadata[k] for k in keys.BASELINE if k in self.metadata), None)
        return explicit


def sagemaker_client(region: str | None = None) -> Any:
    try:
        return awsclient.client(
            "sagemaker", region_name=region, config=awsclient.retry_config(connect_timeout=5, read_timeout=20)
        )
    except BotoCoreError as exc:
        raise TransientError(f"cannot create a SageMaker client: {exc} (set AWS_REGION)") from None


def describe_package(client: Any, arn: str) -> PackageInfo:
    try:
        desc = client.describe_model_package(ModelPackageName=arn)
    except ClientError as exc:
        code = exc.response.get("Error", {}).get("Code", "")
        msg = exc.response.get("Error", {}).get("Message", str(exc))
        if code in ("ValidationException", "ResourceNotFound", "ResourceNotFoundException") and (
            "not exist" in msg.lower() or "not found" in msg.lower() or code.startswith("ResourceNotFound")
        ):
            raise SpecError(ARN_FIELD, f"model package {arn} does not exist") from None
        if code in ("AccessDeniedException", "UnrecognizedClientException"):
            raise TransientError(f"not allowed to read model package {arn}: {msg} (check the IRSA role)") from None
        raise TransientError(f"SageMaker DescribeModelPackage failed ({code}): {msg}") from None
    except BotoCoreError as exc:
        raise TransientError(f"SageMaker unreachable: {exc}") from None
    containers = (desc.get("InferenceSpecification") or {}).get("Containers") or []
    if not containers or not containers[0].get("ModelDataUrl"):
        raise SpecError(ARN_FIELD, f"model package {arn} has no model artifact (InferenceSpecification.Containers[0].ModelDataUrl)")
    c0 = containers[0]
    return PackageInfo(
        arn=arn,
        storage_uri=c0["ModelDataUrl"],
        image=c0.get("Image"),
        approval_status=desc.get("ModelApprovalStatus", "PendingManualApproval"),
        metadata=dict(desc.get("CustomerMetadataProperties") or {}),
    )


def model_ref(spec: ModelDeploymentSpec, package: PackageInfo | None) -> ModelRef:
    """The served identity of the spec's model; a package contributes its artifact and image."""
    if spec.model.modelPackageArn:
        if package is None:
            raise ValueError("a model package must be resolved first")
        return ModelRef(
            revision=spec.rollout_revision(),
            version=spec.model.display_version(),
            storageUri=package.storage_uri,
            modelPackageArn=package.arn,
            image=package.image,
            format=spec.model.format,
            calibrationUri=package.metadata.get(keys.CALIBRATION_URI) or None,
            calibrationSha256=package.metadata.get(keys.CALIBRATION_SHA256) or None,
            registeredMetrics=keys.registered_metrics(package.metadata),
        )
    assert spec.model.storageUri
    return ModelRef(
        revision=spec.rollout_revision(),
        version=spec.model.display_version(),
        storageUri=spec.model.storageUri,
        format=spec.model.format,
    )


def baseline_uri(spec: ModelDeploymentSpec, ref: ModelRef, package: PackageInfo | None) -> str | None:
    """Where the drift baseline for this model version lives: explicit, recorded by the pipeline, or beside the model."""
    if spec.monitoring and spec.monitoring.baselineUri:
        return spec.monitoring.baselineUri
    if package and package.baseline_uri:
        return package.baseline_uri
    if ref.storageUri.startswith(("s3://", "file://")):
        head = ref.storageUri.rstrip("/")
        parent = posixpath.dirname(head) if head.endswith((".tar.gz", ".pt", ".joblib", ".onnx")) else head
        return parent + "/baseline"
    return None
