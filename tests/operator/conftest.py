"""One API emulator, one moto server and one operator process for the whole tests/operator session.

Starting the operator is the expensive part (a Python process importing kopf, kubernetes, boto3), so the
tests share it and keep apart by ModelDeployment name. Each test checks on the way out that the operator
is still running and logged no traceback while it ran.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import pytest

from tests.operator.harness import Cluster, KServe, Kube, Operator, operator_env
from tests.support.moto import moto_server

NAMESPACE = "ml-serving"
REPLICAS_NAMESPACE = "ml-replicas"
PEERING = "kanari"


@pytest.fixture(scope="session")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    with Cluster(tmp_path_factory.mktemp("apiserver")) as c:
        yield c


@pytest.fixture(scope="session")
def sagemaker_endpoint() -> Iterator[str]:
    with moto_server() as endpoint:
        yield endpoint


@pytest.fixture(scope="session")
def sagemaker(sagemaker_endpoint: str) -> Any:
    return boto3.client(
        "sagemaker", endpoint_url=sagemaker_endpoint, region_name="us-east-1",
        aws_access_key_id="testing", aws_secret_access_key="testing",
    )


@pytest.fixture(scope="session")
def operator(cluster: Cluster, sagemaker_endpoint: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Operator]:
    log = tmp_path_factory.mktemp("operator") / "operator.log"
    op = Operator(operator_env(cluster, [NAMESPACE], AWS_ENDPOINT_URL=sagemaker_endpoint), log)
    op.start()
    yield op
    op.stop()


@dataclass
class Replicas:
    operators: list[Operator]
    kube: Kube
    peering: str


@pytest.fixture(scope="session")
def replicas(cluster: Cluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Replicas]:
    """Two operator processes meeting in a kopf peering object, as the chart's default replicas: 2 runs."""
    kube = Kube(cluster, REPLICAS_NAMESPACE)
    kube.custom.create_namespaced_custom_object(  # what the chart's templates/peering.yaml creates
        "kopf.dev", "v1", REPLICAS_NAMESPACE, "kopfpeerings",
        {"apiVersion": "kopf.dev/v1", "kind": "KopfPeering",
         "metadata": {"name": PEERING, "namespace": REPLICAS_NAMESPACE}},
    )
    logs = tmp_path_factory.mktemp("replicas")
    ops = [
        Operator(operator_env(cluster, [REPLICAS_NAMESPACE], KANARI_PEERING_NAME=PEERING, POD_ID=f"kanari-{i}"),
                 logs / f"replica-{i}.log")
        for i in range(2)
    ]
    try:
        for op in ops:
            op.start()
        yield Replicas(ops, Kube(cluster, REPLICAS_NAMESPACE), PEERING)
    finally:
        for op in ops:
            op.stop()


@dataclass
class Env:
    cluster: Cluster
    operator: Operator
    kube: Kube
    kserve: KServe
    name: str


@pytest.fixture()
def env(request: pytest.FixtureRequest, cluster: Cluster, operator: Operator) -> Iterator[Env]:
    """A fresh ModelDeployment name, and the operator's health checked after the test."""
    name = re.sub(r"[^a-z0-9]+", "-", request.node.name.lower().removeprefix("test_"))[:40].strip("-")
    kube = Kube(cluster, NAMESPACE)
    log_size = operator.log.stat().st_size if operator.log.exists() else 0
    yield Env(cluster, operator, kube, KServe(kube), name)
    new_log = Path(operator.log).read_bytes()[log_size:].decode(errors="replace")
    print(f"----- operator log during the test -----\n{new_log[-20000:]}")  # pytest shows it on failure
    assert operator.alive and operator.healthy(), f"the operator died:\n{operator.tail()}"
    crashes = [line for line in new_log.splitlines() if "Traceback" in line or "reconcile crashed" in line]
    assert not crashes, f"the operator logged errors during the test: {crashes}"
