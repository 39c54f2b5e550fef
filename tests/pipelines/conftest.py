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


# ------------------------------------------------------------------ strict request validation (moto)
# botocore's ParamValidator (on by default in every client) checks types, required members and minimum
# lengths; moto then accepts whatever arrives. SageMaker itself also enforces maximum lengths, enums and
# patterns, so every request made in this process is held to those too, against the same service model.
def _strict_errors(shape: Any, value: Any, path: str) -> list[str]:
    import re

    errors: list[str] = []
    if value is None:
        return errors
    kind = shape.type_name
    if kind == "structure" and isinstance(value, dict):
        for name, member in shape.members.items():
            if name in value:
                errors += _strict_errors(member, value[name], f"{path}.{name}")
    elif kind == "list" and isinstance(value, list):
        if "max" in shape.metadata and len(value) > shape.metadata["max"]:
            errors.append(f"{path}: {len(value)} items > max {shape.metadata['max']}")
        for i, item in enumerate(value):
            errors += _strict_errors(shape.member, item, f"{path}[{i}]")
    elif kind == "map" and isinstance(value, dict):
        if "max" in shape.metadata and len(value) > shape.metadata["max"]:
            errors.append(f"{path}: {len(value)} entries > max {shape.metadata['max']}")
        for k, v in value.items():
            errors += _strict_errors(shape.key, k, f"{path} key {k!r}")
            errors += _strict_errors(shape.value, v, f"{path}[{k!r}]")
    elif kind == "string" and isinstance(value, str):
        if "max" in shape.metadata and len(value) > shape.metadata["max"]:
            errors.append(f"{path}: {len(value)} characters > max {shape.metadata['max']}")
        if shape.enum and value not in shape.enum:
            errors.append(f"{path}: {value!r} not one of {shape.enum}")
        pattern = shape.metadata.get("pattern")
        if pattern:
            try:
                compiled = re.compile(pattern, re.DOTALL)
            except re.error:  # Java-only syntax (\p{...}): botocore's model is the authority, not Python's re
                compiled = None
            if compiled is not None and not compiled.fullmatch(value):
                errors.append(f"{path}: {value!r} does not match {pattern}")
    elif kind in ("integer", "long") and isinstance(value, int) and value > shape.metadata.get("max", value):
        errors.append(f"{path}: {value} > max {shape.metadata['max']}")
    return errors


class StrictRequestError(ValueError):
    pass


def _validate_strictly(params: dict[str, Any], model: Any, **_: Any) -> None:
    if model.input_shape is None:
        return
    errors = _strict_errors(model.input_shape, params, model.name)
    if errors:
        raise StrictRequestError("; ".join(errors))


@pytest.fixture(autouse=True)
def strict_aws_requests() -> Iterator[None]:
    """Every client kfp_pipelines.aws creates in this process (steps run in-process, the CLI, the
    Stubber-backed ones) refuses a request SageMaker/S3 would refuse."""
    from kfp_pipelines import aws as aws_mod

    events = aws_mod.session().events
    events.register("before-parameter-build.*.*", _validate_strictly, unique_id="kanari-strict-validation")
    yield
    events.unregister("before-parameter-build.*.*", unique_id="kanari-strict-validation")
