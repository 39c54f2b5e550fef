"""The demo's registry chores against a moto server: the fault-injection version is a real, visible registry
entry whose artifact the reference predictor turns into failures."""

from __future__ import annotations

import io
import json
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest

from devstack import models
from devstack.predictor import FaultInjection
from tests.devstack.devstack_testlib import model_tar_gz
from tests.support.moto import moto_server


@pytest.fixture()
def aws(monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, Any]]:
    with moto_server() as endpoint:
        for key, value in {"AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "testing",
                           "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}.items():
            monkeypatch.setenv(key, value)
        yield {"s3": boto3.client("s3"), "sm": boto3.client("sagemaker")}


def _members(data: bytes) -> dict[str, bytes]:
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tf:
        return {m.name: tf.extractfile(m).read() for m in tf.getmembers() if m.isfile()}  # type: ignore[union-attr]


def test_a_fault_injection_model_is_the_same_weights_plus_the_fault(tmp_path: Path) -> None:
    original = model_tar_gz(tmp_path / "m.tar.gz").read_bytes()
    faulty = _members(models.fault_artifact(original, FaultInjection(0.35, 0.3)))
    assert faulty["model.pt"] == _members(original)["model.pt"]
    assert json.loads(faulty["fault-injection.json"]) == {"errorRate": 0.35, "latencySeconds": 0.3}


def test_the_fault_injection_version_is_registered_visibly_and_approved(tmp_path: Path, aws: dict[str, Any]) -> None:
    s3, sm = aws["s3"], aws["sm"]
    s3.create_bucket(Bucket="kanari-models")
    s3.put_object(Bucket="kanari-models", Key="jobs/j1/output/model.tar.gz", Body=model_tar_gz(tmp_path / "m.tar.gz").read_bytes())
    sm.create_model_package_group(ModelPackageGroupName="fraud")
    base_arn = sm.create_model_package(
        ModelPackageGroupName="fraud", ModelApprovalStatus="Approved",
        InferenceSpecification={"Containers": [{"Image": "img", "ModelDataUrl": "s3://kanari-models/jobs/j1/output/model.tar.gz"}],
                                "SupportedContentTypes": ["application/json"],
                                "SupportedResponseMIMETypes": ["application/json"]},
        CustomerMetadataProperties={"kanari:training-job-arn": "arn:job/j1", "kanari:baseline-uri": "s3://kanari-models/base"},
    )["ModelPackageArn"]
    base = models.describe(sm, base_arn)

    v3 = models.register_fault_model(sm, s3, base, FaultInjection(0.35, 0.3), "broken on purpose")
    assert v3.version == "fraud/2" and v3.approval == "PendingManualApproval"
    assert v3.metadata[models.FAULT_KEY] == "errorRate=0.35 latencySeconds=0.3"
    assert v3.metadata["kanari:training-job-arn"] == "arn:job/j1"  # the weights' lineage is kept
    assert v3.model_uri == "s3://kanari-models/jobs/j1/output/fault-injection/model.tar.gz"
    artifact = s3.get_object(Bucket="kanari-models", Key="jobs/j1/output/fault-injection/model.tar.gz")["Body"].read()
    assert "fault-injection.json" in _members(artifact)

    assert models.approve(sm, v3.arn, "approved on purpose") == "Approved"
    assert models.describe(sm, v3.arn).metadata[models.FAULT_KEY]  # approval keeps the metadata
