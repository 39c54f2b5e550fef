"""The Kubernetes client for steps that talk to a cluster (ACK TrainingJobs, applying ModelDeployments)."""

from __future__ import annotations

import os
from typing import Any


def custom_objects_api() -> Any:
    """In a pod: the service account; elsewhere: KUBECONFIG / ~/.kube/config, as kubectl does."""
    from kubernetes import client, config

    if os.environ.get("KUBERNETES_SERVICE_HOST"):
        config.load_incluster_config()
    else:
        # Read KUBECONFIG now: the client library resolves its default path once, at import.
        config.load_kube_config(config_file=os.environ.get("KUBECONFIG"))
    return client.CustomObjectsApi()
