"""The pipeline as KFP IR YAML (golden file, version fields stripped), the CLI around it, and the
training component run on its own by kfp.local: bad settings fail before anything is created."""

from __future__ import annotations

import contextlib
import io
import os
import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml
from kanari.cli.main import main
from kfp import local

from devstack.stack import free_port
from kfp_pipelines.components.sagemaker_training import sagemaker_training_job
from kfp_pipelines.errors import parse_error_line

GOLDEN = Path(__file__).parent / "golden" / "kanari-training.yaml"


IMAGE = "123456789012.dkr.ecr.us-east-1.amazonaws.com/kanari-pipelines:0.1.0"
ROOT = "s3://ml-artifacts/kanari/pipeline-root"


def normalized(text: str) -> str:
    """The compiled pipeline without what changes with the kfp SDK release."""
    docs = list(yaml.safe_load_all(text))
    docs[0].pop("sdkVersion", None)
    return yaml.safe_dump_all(docs, sort_keys=True)


def compile_with_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> tuple[str, list[dict[str, Any]]]:
    out = tmp_path / "pipeline.yaml"
    assert main(["pipeline", "compile", "-o", str(out), "--image", IMAGE, "--pipeline-root", ROOT]) == 0
    assert str(out) in capsys.readouterr().out
    return out.read_text(), list(yaml.safe_load_all(out.read_text()))


def test_compiled_pipeline_matches_the_golden_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    text, (ir, platform) = compile_with_cli(tmp_path, capsys)
    got = normalized(text)
    if os.environ.get("KANARI_UPDATE_GOLDEN"):
        GOLDEN.write_text(got)
    assert got == GOLDEN.read_text(), "pipeline changed: review it, then rerun with KANARI_UPDATE_GOLDEN=1"
    conditions = [t["triggerPolicy"]["condition"] for c in ir["components"].values()
                  for t in (c.get("dag") or {}).get("tasks", {}).values() if t.get("triggerPolicy", {}).get("condition")]
    assert any("passed" in c and "== true" in c for c in conditions)  # the dsl.If quality gate
    assert any("!(" in c for c in conditions)  # and its Else
    for name, executor in ir["deploymentSpec"]["executors"].items():
        assert "pip install" not in " ".join(executor["container"]["command"]), name  # nothing installed at run time


def test_the_image_and_pipeline_root_are_compile_time_settings(tmp_path: Path, capsys) -> None:
    """Regression: every component ran a hard-coded ghcr.io image nobody built, and no pipeline root was
    set, so KFP's launcher had nowhere under which to write the steps' artifacts."""
    text, (ir, _) = compile_with_cli(tmp_path, capsys)
    assert ir["defaultPipelineRoot"] == ROOT
    images = {e["container"]["image"] for e in ir["deploymentSpec"]["executors"].values()}
    assert images == {IMAGE} and "ghcr.io" not in text
    # Without an image or a root, nothing is written and the flag is named.
    for missing, flag in ((["--pipeline-root", ROOT], "--image"), (["--image", IMAGE], "--pipeline-root")):
        assert main(["pipeline", "compile", "-o", str(tmp_path / "x.yaml"), *missing]) == 2
        assert flag in capsys.readouterr().err
    assert main(["pipeline", "compile", "-o", str(tmp_path / "x.yaml"), "--image", "kanari-pipelines",
                 "--pipeline-root", ROOT]) == 2
    assert "--image: 'kanari-pipelines' is not an image reference with a tag or digest" in capsys.readouterr().err
    assert not (tmp_path / "x.yaml").exists()


def test_what_a_kfp_user_sees_in_the_ir(tmp_path: Path, capsys) -> None:
    _, (ir, platform) = compile_with_cli(tmp_path, capsys)
    params = ir["root"]["inputDefinitions"]["parameters"]
    # Every parameter says what it is for; the required ones are the four without a default.
    assert all(p.get("description") for p in params.values()), [k for k, p in params.items() if not p.get("description")]
    assert sorted(k for k, p in params.items() if not p.get("isOptional")) == ["bucket", "git_sha",
                                                                               "model_package_group", "role_arn"]
    assert params["drift_alert"]["parameterType"] == "STRUCT"
    # The exit handler: stop-training-jobs runs after the body, whatever its outcome, with its final status.
    root_tasks = ir["root"]["dag"]["tasks"]
    stop = root_tasks["stop-training-jobs"]
    assert stop["triggerPolicy"]["strategy"] == "ALL_UPSTREAM_TASKS_COMPLETED"
    assert stop["inputs"]["parameters"]["status"] == {"taskFinalStatus": {"producerTask": "exit-handler-1"}}
    body = ir["components"]["comp-exit-handler-1"]["dag"]["tasks"]
    assert {"validate-data", "sagemaker-training-job", "evaluate-model", "quality-gate"} <= set(body)
    # Retries everywhere, and a single one for training (each attempt bills instance time).
    assert body["sagemaker-training-job"]["retryPolicy"]["maxRetryCount"] == 1
    assert all(t["retryPolicy"]["maxRetryCount"] == 2 for n, t in body.items() if n.startswith(("validate", "evaluate",
                                                                                                "quality")))
    for name, executor in ir["deploymentSpec"]["executors"].items():
        res = executor["container"]["resources"]
        assert res["resourceCpuRequest"] and res["resourceMemoryRequest"] and res["resourceMemoryLimit"], name
    sec = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    assert all(e["securityContext"]["runAsNonRoot"] for e in sec.values()) and len(sec) == len(
        ir["deploymentSpec"]["executors"])
    # The KFP UI draws these.
    outputs = ir["components"]["comp-evaluate-model"]["outputDefinitions"]["artifacts"]
    assert outputs["classification"]["artifactType"]["schemaTitle"] == "system.ClassificationMetrics"
    assert outputs["evaluation"]["artifactType"]["schemaTitle"] == "system.Metrics"
    assert outputs["pr_curve"]["artifactType"]["schemaTitle"] == "system.Markdown"


def test_pipeline_run_needs_local_and_submit_reports_an_unreachable_endpoint(capsys) -> None:
    assert main(["pipeline", "run", "--bucket", "b", "--model-package-group", "g"]) == 2
    assert "needs --local" in capsys.readouterr().err
    host = f"http://127.0.0.1:{free_port()}"
    code = main(["pipeline", "submit", "--host", host, "--bucket", "b", "--model-package-group", "g",
                 "--role-arn", "arn:aws:iam::123456789012:role/r", "--git-sha", "abc", "--image", IMAGE])
    err = capsys.readouterr().err
    assert code == 1 and f"Kubeflow Pipelines at {host} (--host)" in err


def run_component(**kwargs: Any) -> tuple[bool, list[dict[str, Any]]]:
    """The component alone under kfp.local; returns (succeeded, structured step errors)."""
    out = io.StringIO()
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=kwargs.pop("root"))
    with contextlib.redirect_stdout(out):
        try:
            sagemaker_training_job(**kwargs)
            ok = True
        except RuntimeError:
            ok = False
    return ok, [e for line in out.getvalue().splitlines() if (e := parse_error_line(line))]


@pytest.mark.timeout(120)
@pytest.mark.parametrize(
    ("settings", "parameter", "fragment"),
    [
        ({"channels": {}}, "channels", "no input channels"),
        ({"use_spot": True, "max_runtime_seconds": 3600, "max_wait_seconds": 600, "checkpoint_s3_uri": "s3://b/c/"},
         "max_wait_seconds", "must be >= max_runtime_seconds (3600)"),
        ({"use_spot": True, "max_runtime_seconds": 600, "max_wait_seconds": 3600}, "checkpoint_s3_uri",
         "required with use_spot"),
        ({"max_wait_seconds": 3600}, "max_wait_seconds", "only valid with use_spot"),
    ],
)
def test_training_component_rejects_bad_settings_before_submitting(aws, tmp_path: Path, settings: dict[str, Any],
                                                                   parameter: str, fragment: str) -> None:
    base = f"bad-{uuid.uuid4().hex[:6]}"
    kwargs = {
        "channels": {"train": f"s3://{aws.bucket}/data/train/"}, "output_s3_uri": f"s3://{aws.bucket}/training",
        "role_arn": "arn:aws:iam::123456789012:role/kanari", "run_id": "1", "task_name": "train",
        "training_backend": "local", "base_job_name": base, **settings,
    }
    ok, errors = run_component(root=str(tmp_path), **kwargs)
    assert not ok
    assert errors[-1]["parameter"] == parameter and fragment in errors[-1]["message"]
    assert not [j for j in aws.training_jobs() if j.startswith(base)]
    assert aws.object_keys() == []
