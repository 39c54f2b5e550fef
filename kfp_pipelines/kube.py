"""The Kubernetes client for steps that talk to a cluster (ACK TrainingJobs, applying ModelDeployments).

Kanari's one loader (kanari.kubeclient): in a pod the service account, elsewhere the kubeconfig as kubectl
reads it (KUBECONFIG read on each call, not frozen at import).
"""

from __future__ import annotations

from kanari.kubeclient import custom_objects_api

__all__ = ["custom_objects_api"]
