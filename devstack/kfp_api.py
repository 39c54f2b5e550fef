"""A Kubeflow Pipelines API stand-in for the demo: the retraining receiver's KFP launcher talks to it exactly
as it talks to a cluster's `ml-pipeline` service, and a run it accepts executes the training pipeline
through kfp.local (`kanari pipeline run --local`'s runner).

So the demo's drift-triggered retraining takes the cluster's path: Alertmanager -> receiver -> KfpLauncher
(parameters derived from the ModelDeployment, the alert as `drift_alert`) -> kfp.Client -> this API. Only
the few kfp.Client endpoints the launcher calls are served (v2beta1: healthz, pipelines, versions,
experiments, runs). The run id returned is `pid-<pid>` of the local run, so the demo can follow it.

  python -m devstack.kfp_api serve --port P --workdir DIR --log-dir DIR   (binds 127.0.0.1)
  python -m devstack.kfp_api run PARAMS.json --workdir DIR                 (one run; started by serve)
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from kfp_pipelines.deployment import PIPELINE_NAME

PIPELINE_ID = "kanari-training-pipeline"
VERSION_ID = "kanari-training-local"
# run_local's own keyword arguments; every other pipeline parameter goes through `parameters`.
RUN_LOCAL_ARGS = ("bucket", "model_package_group", "dataset_uri", "target", "model_name", "namespace", "auto_approve",
                  "reason", "hyperparameters", "instance_type", "gate_metric", "gate_tolerance", "manifest_dir",
                  "apply_manifest", "git_sha", "role_arn")
# Cluster-only parameters the local runner sets itself.
LOCAL_ONLY = ("training_backend", "ack_namespace")


def handler(workdir: Path, log_dir: Path) -> type[BaseHTTPRequestHandler]:
    class Api(BaseHTTPRequestHandler):
        def _send(self, doc: dict[str, Any], code: int = 200) -> None:
            body = json.dumps(doc).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:  # noqa: N802
            path = self.path.split("?", 1)[0]
            if path == "/apis/v2beta1/healthz":
                self._send({"multi_user": False})
            elif path == "/apis/v2beta1/pipelines":
                self._send({"pipelines": [{"pipeline_id": PIPELINE_ID, "display_name": PIPELINE_NAME}], "total_size": 1})
            elif path == f"/apis/v2beta1/pipelines/{PIPELINE_ID}/versions":
                self._send({"pipeline_versions": [{"pipeline_id": PIPELINE_ID, "pipeline_version_id": VERSION_ID}],
                            "total_size": 1})
            elif path == "/apis/v2beta1/experiments":
                self._send({"experiments": [{"experiment_id": "kanari-retraining", "display_name": "kanari-retraining"}],
                            "total_size": 1})
            else:
                self._send({"error": f"not served by the demo's KFP stand-in: {path}"}, 404)

        def do_POST(self) -> None:  # noqa: N802
            try:
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"{}")
            except json.JSONDecodeError:
                self._send({"error": "body: not JSON"}, 400)
                return
            if self.path.split("?", 1)[0] == "/apis/v2beta1/experiments":
                self._send({"experiment_id": "kanari-retraining", **body})
                return
            if self.path.split("?", 1)[0] != "/apis/v2beta1/runs":
                self._send({"error": f"not served: {self.path}"}, 404)
                return
            ref = body.get("pipeline_version_reference") or {}
            if ref.get("pipeline_id") != PIPELINE_ID:
                self._send({"error": f"unknown pipeline {ref.get('pipeline_id')!r}"}, 404)
                return
            params = (body.get("runtime_config") or {}).get("parameters") or {}
            spec = log_dir / f"run-{uuid.uuid4().hex[:8]}.json"
            log_dir.mkdir(parents=True, exist_ok=True)
            spec.write_text(json.dumps(params))
            with open(spec.with_suffix(".log"), "ab") as out:
                proc = subprocess.Popen([sys.executable, "-m", "devstack.kfp_api", "run", str(spec), "--workdir",
                                         str(workdir)], stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
            self._send({"run_id": f"pid-{proc.pid}", "display_name": body.get("display_name", ""), "state": "RUNNING"})

        def log_message(self, *args: Any) -> None:
            pass

    return Api


def run(params: dict[str, Any], workdir: Path) -> int:
    from kfp_pipelines.errors import InputError
    from kfp_pipelines.local import PipelineRunError, run_local

    kwargs = {k: params[k] for k in RUN_LOCAL_ARGS if k in params}
    extra = {k: v for k, v in params.items() if k not in RUN_LOCAL_ARGS and k not in LOCAL_ONLY}
    try:
        result = run_local(workdir=workdir, parameters=extra, progress=lambda line: print(line, flush=True), **kwargs)
    except (InputError, PipelineRunError) as exc:
        print(f"run failed: {exc}", flush=True)
        return 1
    print(json.dumps({"gate_passed": result.gate_passed, "model_package_arn": result.model_package_arn,
                      "gate_reason": result.gate_reason}), flush=True)
    return 0 if result.gate_passed else 3


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="devstack.kfp_api")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve")
    serve.add_argument("--port", type=int, required=True)
    serve.add_argument("--workdir", required=True)
    serve.add_argument("--log-dir", required=True)
    one = sub.add_parser("run")
    one.add_argument("params")
    one.add_argument("--workdir", required=True)
    args = parser.parse_args(argv)
    if args.command == "run":
        return run(json.loads(Path(args.params).read_text()), Path(args.workdir))
    server = ThreadingHTTPServer(("127.0.0.1", args.port), handler(Path(args.workdir), Path(args.log_dir)))
    try:
        server.serve_forever()
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
