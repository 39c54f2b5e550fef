"""The pipeline as KFP IR YAML (golden file, version fields stripped), the CLI around it, and the
training component run on its own by kfp.local: bad settings fail before anything is created."""

from __future__ import annotations

import contextlib
import io
import os
import re
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


def normalized(text: str) -> str:
    """The compiled pipeline without what changes with the kfp SDK or Kanari release."""
    doc = yaml.safe_load(text)
    doc.pop("sdkVersion", None)
    for executor in doc["deploymentSpec"]["executors"].values():
        container = executor.get("container") or {}
        if "image" in container:
            container["image"] = re.sub(r":[^:/]+$", ":VERSION", container["image"])
    return yaml.safe_dump(doc, sort_keys=True)


def test_compiled_pipeline_matches_the_golden_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "pipeline.yaml"
    assert main(["pipeline", "compile", "--out", str(out)]) == 0
    assert str(out) in capsys.readouterr().out
    got = normalized(out.read_text())
    if os.environ.get("KANARI_UPDATE_GOLDEN"):
        GOLDEN.write_text(got)
    assert got == GOLDEN.read_text(), "pipeline changed: review it, then rerun with KANARI_UPDATE_GOLDEN=1"
    doc = yaml.safe_load(out.read_text())
    conditions = [t["triggerPolicy"]["condition"] for c in doc["components"].values()
                  for t in (c.get("dag") or {}).get("tasks", {}).values() if t.get("triggerPolicy", {}).get("condition")]
    assert any("passed" in c and "== true" in c for c in conditions)  # the dsl.If quality gate
    assert any("!(" in c for c in conditions)  # and its Else
    for name, executor in doc["deploymentSpec"]["executors"].items():
        assert "pip install" not in " ".join(executor["container"]["command"]), name  # nothing installed at run time


def test_pipeline_run_needs_local_and_submit_reports_an_unreachable_endpoint(capsys) -> None:
    assert main(["pipeline", "run", "--bucket", "b", "--model-package-group", "g"]) == 2
    assert "needs --local" in capsys.readouterr().err
    host = f"http://127.0.0.1:{free_port()}"
    code = main(["pipeline", "submit", "--host", host, "--bucket", "b", "--model-package-group", "g",
                 "--role-arn", "arn:aws:iam::123456789012:role/r", "--git-sha", "abc"])
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
