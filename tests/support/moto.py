"""A moto server on loopback: what the code under test reaches through AWS_ENDPOINT_URL, as with LocalStack."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from moto.server import ThreadedMotoServer

from devstack.stack import free_port


@contextlib.contextmanager
def moto_server() -> Iterator[str]:
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()


def register_model_package(
    sagemaker: Any, group: str, *, status: str = "Approved", metadata: dict[str, str] | None = None
) -> str:
    """A model package in a new group, as the pipeline's register step leaves it; its ARN."""
    sagemaker.create_model_package_group(ModelPackageGroupName=group)
    return str(sagemaker.create_model_package(
        ModelPackageGroupName=group,
        ModelApprovalStatus=status,
        InferenceSpecification={
            "Containers": [{
                "Image": "123456789012.dkr.ecr.us-east-1.amazonaws.com/kanari-neuron:2.21",
                "ModelDataUrl": f"s3://models/{group}/model.tar.gz",
            }],
            "SupportedContentTypes": ["application/json"],
            "SupportedResponseMIMETypes": ["application/json"],
        },
        CustomerMetadataProperties=metadata or {"kanari:git-sha": "4b825dc", "kanari:pipeline-run-id": "run-17"},
    )["ModelPackageArn"])
