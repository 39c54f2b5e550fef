"""`kanari validate` refuses what `render` and the controller refuse, reports every error, reads YAML
strictly and as kubectl reads -f; `kanari render` resolves a package in its ARN's region, renders offline and
renders the payload logger."""

from __future__ import annotations

import copy
import os
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import boto3
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from kanari.cli.render import check, load
from kanari.controller.config import OperatorConfig
from kanari.controller.reconcile import ClusterObservation, reconcile

from devstack.stack import free_port
from tests.support.moto import moto_server

pytestmark = pytest.mark.timeout(120)
ROOT = Path(__file__).resolve().parents[2]
SAMPLES = ROOT / "manifests" / "samples"
ARN_SAMPLE = SAMPLES / "fraud-scorer-inf2-serverless-canary.yaml"


def md(name: str, **spec: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"model": {"storageUri": "s3://models/m/v1", "format": "sklearn"},
                            "serving": {"accelerator": "cpu"}}
    for key, value in spec.items():
        body[key] = {**body.get(key, {}), **value}
    return {"apiVersion": "kanari.dev/v1alpha1", "kind": "ModelDeployment",
            "metadata": {"name": name, "namespace": "ml"}, "spec": body}


def kanari(*argv: str, stdin: str | None = None, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "KANARI_"))}
    base.update({"AWS_CONFIG_FILE": "/nonexistent", "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent",
                 "AWS_EC2_METADATA_DISABLED": "true", **(env or {})})
    return subprocess.run([sys.executable, "-m", "kanari.cli.main", *argv], input=stdin, capture_output=True,
                          text=True, timeout=90, env=base, cwd=ROOT)


def test_validate_refuses_sklearn_on_inferentia_as_render_does(tmp_path):
    """Regression: validate checked the schema only, so a spec the controller refuses passed it."""
    f = tmp_path / "md.yaml"
    f.write_text(yaml.safe_dump(md("bad", serving={"accelerator": "inferentia2"})))
    v, r = kanari("validate", "-f", str(f)), kanari("render", "-f", str(f))
    assert v.returncode == 1 and r.returncode == 1
    assert "spec.model.format" in v.stderr and "cannot run on accelerator inferentia2" in v.stderr
    assert v.stderr == r.stderr


def test_validate_reports_every_error_of_every_document(tmp_path):
    docs = [md("ok"), md("bad-format", serving={"accelerator": "inferentia2"}),
            md("bad-replicas", serving={"minReplicas": 5, "maxReplicas": 2}), md("Bad_Name")]
    (tmp_path / "a.yaml").write_text(yaml.safe_dump_all(docs[:2]))
    (tmp_path / "b.yaml").write_text(yaml.safe_dump_all(docs[2:]))
    proc = kanari("validate", "-f", str(tmp_path / "a.yaml"), "-f", str(tmp_path / "b.yaml"))
    assert proc.returncode == 1
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 3, proc.stderr
    assert "a.yaml document 2 (bad-format): spec.model.format" in errors[0]
    assert "b.yaml document 1 (bad-replicas)" in errors[1] and "maxReplicas" in errors[1]
    assert "b.yaml document 2 (Bad_Name)" in errors[2] and "metadata.name" in errors[2]


def test_validate_refuses_duplicate_keys_and_warns_about_other_kinds(tmp_path):
    f = tmp_path / "dup.yaml"
    f.write_text("apiVersion: kanari.dev/v1alpha1\nkind: ModelDeployment\nmetadata: {name: a}\nspec:\n"
                 "  model: {storageUri: 's3://m/v1', format: sklearn}\n  serving: {accelerator: cpu}\n"
                 "  serving: {accelerator: gpu}\n")
    proc = kanari("validate", "-f", str(f))
    assert proc.returncode == 1 and "duplicate key 'serving'" in proc.stderr, proc.stderr
    g = tmp_path / "mixed.yaml"
    g.write_text(yaml.safe_dump_all([{"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "cm"}}, md("ok")]))
    proc = kanari("validate", "-f", str(g))
    assert proc.returncode == 0, proc.stderr
    assert "warning: " in proc.stderr and "ConfigMap cm (v1) is not a ModelDeployment; ignored" in proc.stderr
    assert "1 ModelDeployment(s) valid" in proc.stdout
    wrong = md("old")
    wrong["apiVersion"] = "kanari.dev/v1beta9"
    g.write_text(yaml.safe_dump(wrong))
    proc = kanari("validate", "-f", str(g))
    assert proc.returncode == 1 and "apiVersion 'kanari.dev/v1beta9'" in proc.stderr


def test_validate_reads_directories_recursively_and_multi_document_stdin(tmp_path):
    (tmp_path / "nested").mkdir()
    (tmp_path / "top.yaml").write_text(yaml.safe_dump(md("top")))
    (tmp_path / "notes.txt").write_text("not yaml: [")
    (tmp_path / "nested" / "deep.yml").write_text(yaml.safe_dump(md("deep", serving={"accelerator": "inferentia2"})))
    flat = kanari("validate", "-f", str(tmp_path), "-o", "name")
    assert flat.returncode == 0 and flat.stdout.split() == ["modeldeployment.kanari.dev/top"], flat.stderr
    deep = kanari("validate", "-R", "-f", str(tmp_path))
    assert deep.returncode == 1 and "deep.yml document 1 (deep): spec.model.format" in deep.stderr
    stdin = kanari("validate", "-f", "-", stdin=yaml.safe_dump_all([md("one"), md("two"), None]))
    assert stdin.returncode == 0 and "2 ModelDeployment(s) valid" in stdin.stdout, stdin.stderr
    empty = kanari("validate", "-f", str(tmp_path / "nested" / "nothing"))
    assert empty.returncode == 2 and empty.stderr.count("\n") == 1


def test_every_shipped_sample_validates_and_renders_offline():
    proc = kanari("validate", "-f", str(SAMPLES))
    assert proc.returncode == 0, proc.stderr
    proc = kanari("render", "-f", str(SAMPLES), "--offline", "--drift-monitor-url", "http://drift.kanari-system.svc")
    assert proc.returncode == 0, proc.stderr
    kinds = [o["kind"] for o in yaml.safe_load_all(proc.stdout)]
    assert kinds.count("InferenceService") == len(list(SAMPLES.glob("*.yaml")))


def test_render_offline_names_the_placeholder_and_renders_the_payload_logger():
    proc = kanari("render", "-f", str(ARN_SAMPLE), "--offline", "--drift-monitor-url", "http://drift.kanari.svc:8080")
    assert proc.returncode == 0, proc.stderr
    assert "rendered offline" in proc.stderr and "approval is not checked" in proc.stderr
    isvc = next(o for o in yaml.safe_load_all(proc.stdout) if o["kind"] == "InferenceService")
    assert isvc["spec"]["predictor"]["model"]["storageUri"].startswith("s3://kanari-offline-placeholder/")
    assert isvc["spec"]["predictor"]["logger"]["url"] == "http://drift.kanari.svc:8080"
    # Without the URL, monitoring is on but no logger can be rendered: said, not silently dropped.
    proc = kanari("render", "-f", str(ARN_SAMPLE), "--offline")
    assert proc.returncode == 0 and "no payload logger is rendered: pass --drift-monitor-url" in proc.stderr
    isvc = next(o for o in yaml.safe_load_all(proc.stdout) if o["kind"] == "InferenceService")
    assert "logger" not in isvc["spec"]["predictor"]


@pytest.fixture(scope="module")
def registry():
    with moto_server() as endpoint:
        sm = boto3.client("sagemaker", endpoint_url=endpoint, region_name="us-west-2",
                          aws_access_key_id="testing", aws_secret_access_key="testing")
        sm.create_model_package_group(ModelPackageGroupName="fraud-scorer")
        arn = sm.create_model_package(
            ModelPackageGroupName="fraud-scorer", ModelApprovalStatus="Approved",
            InferenceSpecification={"Containers": [{"Image": "1.dkr.ecr.us-west-2.amazonaws.com/serve:1",
                                                    "ModelDataUrl": "s3://artifacts/fraud/1/model.tar.gz"}],
                                    "SupportedContentTypes": ["application/json"],
                                    "SupportedResponseMIMETypes": ["application/json"]},
        )["ModelPackageArn"]
        yield endpoint, arn


def test_render_resolves_a_package_in_the_region_of_its_arn(registry, tmp_path):
    endpoint, arn = registry
    doc = yaml.safe_load(ARN_SAMPLE.read_text())
    doc["spec"]["model"]["modelPackageArn"] = arn
    f = tmp_path / "md.yaml"
    f.write_text(yaml.safe_dump(doc))
    creds = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}
    # No AWS_REGION: the region is the ARN's.
    proc = kanari("render", "-f", str(f), env={"AWS_ENDPOINT_URL": endpoint, **creds})
    assert proc.returncode == 0, proc.stderr
    isvc = next(o for o in yaml.safe_load_all(proc.stdout) if o["kind"] == "InferenceService")
    assert isvc["spec"]["predictor"]["model"]["storageUri"] == "s3://artifacts/fraud/1/model.tar.gz"
    # Everyday failures: one line and their exit codes.
    missing = arn.rsplit("/", 1)[0] + "/99"
    doc["spec"]["model"]["modelPackageArn"] = missing
    f.write_text(yaml.safe_dump(doc))
    proc = kanari("render", "-f", str(f), env={"AWS_ENDPOINT_URL": endpoint, **creds})
    assert proc.returncode == 1 and f"model package {missing} does not exist" in proc.stderr
    doc["spec"]["model"]["modelPackageArn"] = arn
    f.write_text(yaml.safe_dump(doc))
    proc = kanari("render", "-f", str(f), env={"AWS_ENDPOINT_URL": f"http://127.0.0.1:{free_port()}",
                                               "AWS_MAX_ATTEMPTS": "1", **creds})
    assert proc.returncode == 7 and proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr, proc.stderr
    proc = kanari("render", "-f", str(f), env={"AWS_ENDPOINT_URL": endpoint})
    assert proc.returncode == 6 and proc.stderr.count("\n") == 1, proc.stderr


def test_models_list_honours_aws_region_and_reports_everyday_failures(registry):
    """Regression: `kanari models list` built its client without AWS_REGION (boto3 reads only AWS_DEFAULT_REGION)."""
    endpoint, _ = registry
    creds = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_ENDPOINT_URL": endpoint}
    proc = kanari("models", "list", "--group", "fraud-scorer", "-o", "name", env={"AWS_REGION": "us-west-2", **creds})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["arn:aws:sagemaker:us-west-2:123456789012:model-package/fraud-scorer/1"]
    proc = kanari("models", "list", "--group", "fraud-scorer", env=creds)
    assert proc.returncode == 8 and proc.stderr.strip() == \
        "kanari: error: no AWS region: set AWS_REGION (or pass --region)", proc.stderr
    proc = kanari("models", "list", "--group", "fraud-scorer", "--region", "us-west-2",
                  env={"AWS_ENDPOINT_URL": endpoint})
    assert proc.returncode == 6 and proc.stderr.count("\n") == 1 and "no AWS credentials" in proc.stderr


FORMATS = ("pytorch-neuronx", "huggingface-neuronx", "pytorch", "sklearn", "xgboost", "onnx", "tensorflow")


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(fmt=st.sampled_from(FORMATS), acc=st.sampled_from(("cpu", "gpu", "inferentia2")),
       mode=st.sampled_from(("Serverless", "RawDeployment")), runtime=st.sampled_from((None, "custom-rt")),
       replicas=st.tuples(st.integers(0, 4), st.integers(0, 4)))
def test_validate_refuses_exactly_what_the_controller_refuses(tmp_path, fmt, acc, mode, runtime, replicas):
    doc = md("m", model={"format": fmt, **({"runtime": runtime} if runtime else {})},
             serving={"accelerator": acc, "deploymentMode": mode, "minReplicas": replicas[0],
                      "maxReplicas": replicas[1]})
    f = tmp_path / "md.yaml"
    f.write_text(yaml.safe_dump(doc))
    config = OperatorConfig()
    _, errors, _ = check(load([str(f)]), config, offline=True, rendering=False)
    # What the controller concludes for the same object on its first reconcile.
    from kanari.api.v1alpha1 import SpecError, parse_model_deployment

    try:
        body = parse_model_deployment(copy.deepcopy(doc)).model_dump(mode="json", by_alias=True, exclude={"status"})
    except SpecError:
        assert errors
        return
    body["metadata"].update(uid="u", generation=1)
    result = reconcile(body, ClusterObservation(now=datetime.now(UTC)), config)
    refused = any(c.type == "InvalidSpec" and c.status == "True" for c in result.status.conditions)
    assert bool(errors) == refused, (errors, result.status.conditions)
