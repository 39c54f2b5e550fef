"""The one way Kanari connects to Kubernetes (controller, receiver, CLI, pipeline steps, demo).

In a pod: the service account. Elsewhere: the kubeconfig as kubectl reads it (`--kubeconfig`, else
KUBECONFIG, a colon-separated list merged in order, else ~/.kube/config), with `--context` choosing the
context and the context's namespace as the default namespace. KUBECONFIG is read on every call, never at
import: the client library freezes its default path when it is imported.

Failures to find credentials are a KubeConfigError (one line, no path secrets beyond what the user passed);
the CLI maps it to its "no credentials" exit code.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SERVICE_ACCOUNT_NAMESPACE = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"
# `kanari pipeline run --context` hands its context to the pipeline's steps (separate processes) through this.
CONTEXT_ENV = "KANARI_KUBE_CONTEXT"


class KubeConfigError(Exception):
    """No usable Kubernetes credentials: no kubeconfig, an unknown context, an unreadable file."""


@dataclass(frozen=True)
class Connection:
    api_client: Any  # kubernetes.client.ApiClient
    namespace: str  # the context's namespace (or the service account's), used when -n is not given
    context: str | None  # None in a pod


def kubeconfig_path(explicit: str | None = None) -> str:
    return explicit or os.environ.get("KUBECONFIG") or str(Path("~/.kube/config").expanduser())


def connect(kubeconfig: str | None = None, context: str | None = None) -> Connection:
    """An ApiClient of its own (nothing global is changed), and the default namespace."""
    from kubernetes import client, config

    context = context or os.environ.get(CONTEXT_ENV) or None
    from kubernetes.config.config_exception import ConfigException

    if kubeconfig is None and context is None and os.environ.get("KUBERNETES_SERVICE_HOST"):
        conf = client.Configuration()
        try:
            config.load_incluster_config(client_configuration=conf)
        except ConfigException as exc:
            raise KubeConfigError(f"in-cluster credentials: {exc}") from None
        namespace = "default"
        if os.path.exists(SERVICE_ACCOUNT_NAMESPACE):
            with open(SERVICE_ACCOUNT_NAMESPACE) as f:
                namespace = f.read().strip() or namespace
        return Connection(client.ApiClient(conf), namespace, None)
    path = kubeconfig_path(kubeconfig)
    files = [p for p in path.split(os.pathsep) if p]
    if not any(os.path.exists(p) for p in files):
        raise KubeConfigError(
            f"no kubeconfig at {path} (pass --kubeconfig, set KUBECONFIG, or run inside the cluster)"
        )
    if context is None:
        context = _current_context(files)
    try:
        contexts, active = config.list_kube_config_contexts(config_file=path)
        if context is not None:
            active = next((c for c in contexts if c.get("name") == context), None)
            if active is None:
                raise KubeConfigError(f"context {context!r} not found in the kubeconfig")
        if not active:
            raise KubeConfigError("the kubeconfig has no current context (pass --context)")
        api_client = config.new_client_from_config(config_file=path, context=active["name"])
    except ConfigException as exc:
        raise KubeConfigError(f"kubeconfig: {exc}") from None
    except (OSError, ValueError) as exc:
        raise KubeConfigError(f"kubeconfig unreadable: {exc}") from None
    namespace = (active.get("context") or {}).get("namespace") or "default"
    return Connection(api_client, namespace, active["name"])


def _current_context(files: list[str]) -> str | None:
    """kubectl's rule for a KUBECONFIG list: the first file that sets current-context wins (the Python client's
    merge lets the last one win, so the context is chosen here)."""
    import yaml

    for f in files:
        try:
            with open(f) as fh:
                doc = yaml.safe_load(fh)
        except (OSError, yaml.YAMLError):
            continue
        if isinstance(doc, dict) and doc.get("current-context"):
            return str(doc["current-context"])
    return None


def configure_default(kubeconfig: str | None = None, context: str | None = None) -> Connection:
    """connect(), and make its configuration the process default (for code that builds clients without one)."""
    from kubernetes import client

    conn = connect(kubeconfig, context)
    client.Configuration.set_default(conn.api_client.configuration)
    return conn


def custom_objects_api(kubeconfig: str | None = None, context: str | None = None) -> Any:
    from kubernetes import client

    return client.CustomObjectsApi(connect(kubeconfig, context).api_client)
