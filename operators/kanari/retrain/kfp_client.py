"""The four Kubeflow Pipelines calls the retraining receiver makes, on kfp-server-api (KFP's generated REST
client) rather than the kfp SDK.

kfp.Client wraps the same generated client, but the SDK brings the pipeline compiler, google-cloud-storage,
protobuf and a second Kubernetes client into the operator image, for a receiver that only starts runs.
Behaviour follows kfp.Client's for these calls (same endpoints, filters and bodies; the in-cluster token
from KF_PIPELINES_SA_TOKEN_PATH, re-read on every call because it rotates).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

TOKEN_PATH_ENV = "KF_PIPELINES_SA_TOKEN_PATH"
TOKEN_PATH = "/var/run/secrets/kubeflow/pipelines/token"


def _equals(key: str, value: str) -> str:
    return json.dumps({"predicates": [{"operation": "EQUALS", "key": key, "stringValue": value}]})


class KfpClient:
    def __init__(self, host: str, namespace: str | None = None):
        import kfp_server_api

        config = kfp_server_api.Configuration(host=host.rstrip("/"))
        token_path = Path(os.environ.get(TOKEN_PATH_ENV) or TOKEN_PATH)

        def refresh(conf: Any) -> None:
            if token_path.is_file():
                conf.api_key["authorization"] = token_path.read_text().strip()
                conf.api_key_prefix["authorization"] = "Bearer"

        config.refresh_api_key_hook = refresh
        api = kfp_server_api.ApiClient(config)
        self.namespace = namespace
        self._models = kfp_server_api
        self._pipelines = kfp_server_api.PipelineServiceApi(api)
        self._experiments = kfp_server_api.ExperimentServiceApi(api)
        # `_run_api` as kfp.Client names it: the launcher gives the one REST client under all three a timeout.
        self._run_api = kfp_server_api.RunServiceApi(api)

    def get_pipeline_id(self, name: str) -> str | None:
        found = self._pipelines.pipeline_service_list_pipelines(filter=_equals("display_name", name)).pipelines or []
        if len(found) > 1:
            raise ValueError(f"several pipelines are named {name!r}; the name must be unique")
        return found[0].pipeline_id if found else None

    def list_pipeline_versions(self, pipeline_id: str, page_size: int = 1, sort_by: str = "") -> Any:
        return self._pipelines.pipeline_service_list_pipeline_versions(
            pipeline_id, page_size=page_size, sort_by=sort_by
        )

    def create_experiment(self, name: str, namespace: str | None = None) -> Any:
        """The experiment of that name, created when missing (as kfp.Client does)."""
        kwargs = {"namespace": namespace} if namespace else {}
        found = self._experiments.experiment_service_list_experiments(filter=_equals("display_name", name), **kwargs)
        if found.experiments:
            return found.experiments[0]
        body = self._models.V2beta1Experiment(display_name=name, namespace=namespace)
        return self._experiments.experiment_service_create_experiment(experiment=body)

    def run_pipeline(self, experiment_id: str, job_name: str, params: dict[str, Any], pipeline_id: str,
                     version_id: str, service_account: str | None = None) -> Any:
        m = self._models
        run = m.V2beta1Run(
            experiment_id=experiment_id, display_name=job_name, service_account=service_account,
            pipeline_version_reference=m.V2beta1PipelineVersionReference(
                pipeline_id=pipeline_id, pipeline_version_id=version_id),
            runtime_config=m.V2beta1RuntimeConfig(parameters=params),
        )
        return self._run_api.run_service_create_run(run=run)
