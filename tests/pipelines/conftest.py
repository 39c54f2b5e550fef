"""Shared fixtures: a moto server on loopback as the AWS endpoint (AWS_ENDPOINT_URL, fake credentials,
us-east-1), fresh S3 bucket and model package group per test."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import boto3
import pytest

from tests.support.moto import moto_server

AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
    # Keep botocore's retries short in tests; the modes are the production ones.
    "AWS_MAX_ATTEMPTS": "3",
}


@pytest.fixture(scope="session")
def aws_endpoint() -> Iterator[str]:
    with moto_server() as endpoint:
        saved = {k: os.environ.get(k) for k in [*AWS_ENV, "AWS_ENDPOINT_URL"]}
        # Set for the whole session: kfp.local's step subprocesses inherit this environment.
        os.environ.update(AWS_ENV, AWS_ENDPOINT_URL=endpoint)
        yield endpoint
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@dataclass
class Aws:
    endpoint: str
    bucket: str
    group: str
    s3: Any
    sm: Any

    def training_jobs(self) -> list[str]:
        return [j["TrainingJobName"] for j in self.sm.list_training_jobs(MaxResults=100)["TrainingJobSummaries"]]

    def packages(self) -> list[dict[str, Any]]:
        return self.sm.list_model_packages(ModelPackageGroupName=self.group)["ModelPackageSummaryList"]

    def object_keys(self, prefix: str = "") -> list[str]:
        return [o["Key"] for o in self.s3.list_objects_v2(Bucket=self.bucket, Prefix=prefix).get("Contents", [])]


@pytest.fixture()
def aws(aws_endpoint: str) -> Aws:
    """A bucket and a model package group of this test's own (the moto server lives for the session)."""
    suffix = uuid.uuid4().hex[:8]
    s3 = boto3.client("s3", endpoint_url=aws_endpoint)
    sm = boto3.client("sagemaker", endpoint_url=aws_endpoint)
    bucket, group = f"kanari-{suffix}", f"group-{suffix}"
    s3.create_bucket(Bucket=bucket)
    sm.create_model_package_group(ModelPackageGroupName=group)
    return Aws(aws_endpoint, bucket, group, s3, sm)
