"""Shared fixtures for the drift tests: a moto S3 server on loopback holding a baseline of a real dataset."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from drift_testlib import cancer_frame
from kanari.drift.model_monitor import CONSTRAINTS, STATISTICS, write_baseline

from tests.support.moto import moto_server

AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}
BUCKET = "kanari-baselines"


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    with moto_server() as endpoint:
        yield endpoint


@pytest.fixture(scope="session")
def s3(s3_endpoint: str) -> Any:
    client = boto3.client(
        "s3", endpoint_url=s3_endpoint, region_name="us-east-1",
        aws_access_key_id="testing", aws_secret_access_key="testing",
    )
    client.create_bucket(Bucket=BUCKET)
    return client


@pytest.fixture(scope="session")
def cancer_baseline_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("cancer-baseline")
    write_baseline(cancer_frame(), out, target="target")
    return out


@pytest.fixture(scope="session")
def cancer_baseline_uri(s3: Any, cancer_baseline_dir: Path) -> str:
    """s3:// directory holding the baseline, as the pipeline writes it next to the model."""
    prefix = "breast-cancer/v7/baseline"
    for name in (STATISTICS, CONSTRAINTS):
        s3.put_object(Bucket=BUCKET, Key=f"{prefix}/{name}", Body=(cancer_baseline_dir / name).read_bytes())
    return f"s3://{BUCKET}/{prefix}"


@pytest.fixture(scope="session")
def monitor_env(s3_endpoint: str) -> dict[str, str]:
    return {**AWS_ENV, "AWS_ENDPOINT_URL": s3_endpoint}
