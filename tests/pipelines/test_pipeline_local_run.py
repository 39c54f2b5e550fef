"""The whole pipeline through kfp.local, AWS on a moto server: a first model is released with its lineage;
a worse one is refused and changes nothing; bad input stops at the step that owns it, naming the parameter."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from kanari import registry_metadata as keys
from kanari.api import v1alpha1
from kanari.cli.main import main
from pipelines_testlib import MODELDEPLOYMENT_CRD, strict_validator
from sklearn.isotonic import IsotonicRegression

from kfp_pipelines import data, steps
from kfp_pipelines import evaluation as evaluation_mod
from kfp_pipelines.local import PipelineRunError, run_local

GIT_SHA = "0123456789abcdef0123456789abcdef01234567"
FAST = {"epochs": 6}


@pytest.mark.timeout(300)
def test_release_then_a_worse_model_is_refused(aws, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    gitops = tmp_path / "gitops"
    progress: list[str] = []
    first = run_local(bucket=aws.bucket, model_package_group=aws.group, model_name="fraud", namespace="ml-prod",
                      hyperparameters=FAST, manifest_dir=gitops, git_sha=GIT_SHA, reason="initial release",
                      workdir=tmp_path / "work", progress=progress.append)

    # Progress named each step as it ran.
    started = [p[2:] for p in progress if p.startswith("> ")]
    assert started[:4] == ["validate-data", "sagemaker-training-job", "evaluate-model", "quality-gate"]
    # The baseline, the calibration and the (here: pass-through) compile step all follow the gate, in any order.
    assert sorted(started[4:7]) == ["calibrate-model", "neuron-compile", "write-drift-baseline"]
    assert started[7:] == ["register-model", "emit-model-deployment", "stop-training-jobs"]
    # Metrics for imbalanced data, and no accuracy.
    assert first.gate_passed and "first model passes" in first.gate_reason
    assert {"pr_auc", "recall", "precision", "f1"} <= set(first.metrics) and "accuracy" not in first.metrics
    assert first.metrics["pr_auc"] > 0.8 > first.metrics["pr_auc_no_skill"]

    # A real training job record, and one registered package with the full lineage.
    job = aws.sm.describe_training_job(TrainingJobName=first.training_job_name)
    assert job["TrainingJobArn"] == first.training_job_arn
    assert job["ResourceConfig"]["InstanceType"] == "ml.trn1.2xlarge"
    assert first.approval_status == "PendingManualApproval"
    pkg = aws.sm.describe_model_package(ModelPackageName=first.model_package_arn)
    meta = pkg["CustomerMetadataProperties"]
    assert meta["kanari:git-sha"] == GIT_SHA
    assert meta["kanari:dataset-uri"] == data.BUILTIN_DATASET
    assert meta["kanari:dataset-version"].startswith("sklearn-")
    assert meta["kanari:pipeline-run-id"] == first.pipeline_run_id
    assert meta["kanari:training-job-arn"] == first.training_job_arn
    assert meta["kanari:image-digest"] == "unresolved"  # moto's ECR does not hold AWS's DLC images
    assert float(meta["kanari:metric.pr_auc"]) == pytest.approx(first.metrics["pr_auc"], abs=1e-6)
    # No neuron_target (the default): no compile step ran, the model is registered as trained, for CPU.
    assert not [k for k in meta if k.startswith("kanari:neuron.")] and meta["kanari:serving-accelerator"] == "cpu"
    assert pkg["InferenceSpecification"]["Containers"][0]["ModelDataUrl"] == first.model_uri
    evaluation = aws.s3.get_object(Bucket=aws.bucket, Key=pkg["ModelMetrics"]["ModelQuality"]["Statistics"]["S3Uri"]
                                   .split(f"s3://{aws.bucket}/", 1)[1])["Body"].read()
    assert json.loads(evaluation)["binary_classification_metrics"]["pr_auc"]["value"] == pytest.approx(
        first.metrics["pr_auc"])

    # The drift baseline beside the model, and the ModelDeployment pointing at both.
    assert first.baseline_uri == first.model_uri.rsplit("/", 1)[0] + "/baseline"
    stats_key = first.baseline_uri.split(f"s3://{aws.bucket}/", 1)[1] + "/statistics.json"
    statistics = json.loads(aws.s3.get_object(Bucket=aws.bucket, Key=stats_key)["Body"].read())
    assert {f["name"] for f in statistics["features"]} >= {"mean radius", "label"}
    manifest = Path(first.manifest_path)
    assert manifest == gitops / "ml-prod" / "fraud.yaml"
    obj = yaml.safe_load(manifest.read_text())
    strict_validator(MODELDEPLOYMENT_CRD).validate(obj)
    md = v1alpha1.parse_model_deployment(obj)
    assert md.spec.model.modelPackageArn == first.model_package_arn
    assert md.spec.monitoring and md.spec.monitoring.baselineUri == first.baseline_uri
    assert obj["metadata"]["annotations"]["kanari.dev/lineage-training-job"] == first.training_job_arn
    # The score calibration, fitted on the holdout and registered with the package, reproduces the holdout's
    # isotonic-calibrated scores (tests/pipelines/test_pipeline_calibration.py has the details).
    calibration = keys.read_calibration(meta, lambda uri: aws.s3.get_object(
        Bucket=aws.bucket, Key=uri.split(f"s3://{aws.bucket}/", 1)[1])["Body"].read())
    assert calibration is not None and meta[keys.CALIBRATION_URI] == first.model_uri.rsplit("/", 1)[0] + "/calibration.json"
    test_split = steps.run_prefix(aws.bucket, "kanari", aws.group).join("runs", first.pipeline_run_id, "data", "test")
    holdout = evaluation_mod.score_holdout(aws.s3, first.model_uri, f"{test_split}/")
    expected = IsotonicRegression(y_min=0, y_max=1, out_of_bounds="clip").fit(holdout.scores, holdout.labels)
    np.testing.assert_allclose(calibration.apply(holdout.scores), expected.predict(holdout.scores), atol=1e-9)
    assert first.api_calls["sagemaker.CreateTrainingJob"] == 1
    assert first.api_calls["sagemaker.CreateModelPackage"] == 1

    # Approval is a status change in the registry.
    assert main(["models", "approve", f"{aws.group}/1", "--reason", "reviewed"]) == 0
    capsys.readouterr()
    assert main(["models", "list", "--group", aws.group]) == 0
    assert "Approved" in capsys.readouterr().out

    # Retraining with settings that cannot learn (one hidden unit, one epoch, a vanishing learning rate):
    # on the same test split as the Approved model it is far worse, and the gate refuses it, through the CLI.
    before = manifest.read_text()
    code = main(["pipeline", "run", "--local", "--bucket", aws.bucket, "--model-package-group", aws.group,
                 "--model-name", "fraud", "--namespace", "ml-prod", "--hyperparameter", "epochs=1",
                 "--hyperparameter", "hidden=1", "--hyperparameter", "learning_rate=1e-06", "--hyperparameter",
                 "seed=1", "--manifest-dir", str(gitops), "--git-sha", GIT_SHA, "--workdir", str(tmp_path / "work"),
                 "--reason", "drift alert"])
    out = capsys.readouterr()
    assert code == 3
    assert "quality gate REJECTED: pr_auc" in out.out and "worse than the Approved model's" in out.out
    assert "> record-rejection" in out.err and "> register-model" not in out.err
    assert len(aws.packages()) == 1 and manifest.read_text() == before


def artifact_uris(tree: Path) -> list[str]:
    """Every artifact URI the steps reported to KFP (their executor outputs)."""
    found: list[str] = []

    def walk(node: object) -> None:
        if isinstance(node, dict):
            found.extend(str(v) for k, v in node.items() if k == "uri")
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    for path in tree.rglob("executor_output.json"):
        walk(json.loads(path.read_text()))
    return found


ALERT = {"alertname": "KanariFeatureDrift", "fingerprint": "5f3a9c01d2e4b678", "startsAt": "2026-11-30T04:00:00Z",
         "status": "firing", "labels": {"feature": "amount", "severity": "warning", "model": "fraud"},
         "annotations": {"summary": "PSI 0.31 on amount"}}


@pytest.mark.timeout(150)
def test_a_retrain_started_by_an_alert_on_data_labelled_is_fraud(aws, tmp_path: Path) -> None:
    """Regressions: the label column reached the validate step but not the training script (which looked
    for `label` and failed, on SageMaker after the instance started); the steps rewrote their output
    artifacts' URIs to s3://<bucket>/..., outside the pipeline root KFP's launcher uploads under; and an
    alert-started run recorded the alert nowhere."""
    frame = data.builtin_breast_cancer().rename(columns={"label": "is_fraud"})
    aws.s3.put_object(Bucket=aws.bucket, Key="incoming/fraud.csv", Body=data.to_csv(frame))
    result = run_local(bucket=aws.bucket, model_package_group=aws.group, model_name="fraud", namespace="ml-prod",
                       dataset_uri=f"s3://{aws.bucket}/incoming/fraud.csv", target="is_fraud", hyperparameters=FAST,
                       git_sha=GIT_SHA, reason="drift alert KanariFeatureDrift", workdir=tmp_path,
                       parameters={"drift_alert": ALERT})
    assert result.gate_passed and result.metrics["pr_auc"] > 0.8
    job = aws.sm.describe_training_job(TrainingJobName=result.training_job_name)
    assert json.loads(job["HyperParameters"]["target"]) == "is_fraud"

    run_root = tmp_path / "kfp" / Path(result.log_path).stem
    uris = artifact_uris(run_root)
    assert uris and all(u.startswith(str(run_root)) for u in uris), [u for u in uris if not u.startswith(str(run_root))]

    # The alert, as separate fields: in the registry, and on the ModelDeployment.
    meta = aws.sm.describe_model_package(ModelPackageName=result.model_package_arn)["CustomerMetadataProperties"]
    assert meta["kanari:drift-alert"] == "KanariFeatureDrift"
    assert meta["kanari:drift-alert-fingerprint"] == ALERT["fingerprint"]
    assert meta["kanari:drift-alert-starts-at"] == ALERT["startsAt"]
    assert meta["kanari:drift-alert-feature"] == "amount"
    obj = yaml.safe_load(Path(result.manifest_path).read_text())
    annotations = obj["metadata"]["annotations"]
    assert annotations["kanari.dev/lineage-drift-alert"] == "KanariFeatureDrift"
    assert annotations["kanari.dev/lineage-drift-alert-fingerprint"] == ALERT["fingerprint"]
    statistics_key = result.baseline_uri.split(f"s3://{aws.bucket}/", 1)[1] + "/statistics.json"
    statistics = json.loads(aws.s3.get_object(Bucket=aws.bucket, Key=statistics_key)["Body"].read())
    assert "is_fraud" in {f["name"] for f in statistics["features"]}


@pytest.mark.timeout(90)
def test_a_reason_the_registry_would_refuse_stops_before_anything_runs(aws, tmp_path: Path, capsys) -> None:
    """Regression: a reason with ',' or '(' (or over 256 characters) was refused at register, after training."""
    for reason, fragment in (("drift (PSI 0.3), retrain", "characters the registry's metadata does not accept"),
                             ("x" * 257, "257 characters; the registry keeps at most 256")):
        code = main(["pipeline", "run", "--local", "--bucket", aws.bucket, "--model-package-group", aws.group,
                     "--git-sha", GIT_SHA, "--workdir", str(tmp_path), "--reason", reason])
        err = capsys.readouterr().err
        assert code == 2 and "--reason: " in err and fragment in err
    # The same check in the pipeline's first step, for runs submitted without the CLI.
    with pytest.raises(PipelineRunError) as exc:
        run_local(bucket=aws.bucket, model_package_group=aws.group, git_sha=GIT_SHA, reason="a, b", workdir=tmp_path)
    assert exc.value.step == "validate-data" and exc.value.parameter == "reason"
    assert aws.training_jobs() == [] or not [j for j in aws.training_jobs() if j.startswith("kanari-classifier")]
    assert aws.object_keys() == []


@pytest.mark.timeout(90)
def test_a_missing_registry_group_stops_the_first_step(aws, tmp_path: Path, capsys) -> None:
    code = main(["pipeline", "run", "--local", "--bucket", aws.bucket, "--model-package-group", "no-such-group",
                 "--git-sha", GIT_SHA, "--workdir", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 1
    assert "step validate-data failed (model_package_group): model package group 'no-such-group' does not exist" in err
    assert aws.object_keys() == []  # nothing written, nothing registered


@pytest.mark.timeout(90)
def test_an_unknown_instance_type_stops_training_before_submission(aws, tmp_path: Path) -> None:
    with pytest.raises(PipelineRunError) as err:
        run_local(bucket=aws.bucket, model_package_group=aws.group, model_name="bad-instance",
                  instance_type="ml.trn1.4xlarge", git_sha=GIT_SHA, workdir=tmp_path)
    assert err.value.step == "sagemaker-training-job" and err.value.parameter == "instance_type"
    assert "unknown SageMaker training instance type 'ml.trn1.4xlarge'" in err.value.cause
    assert not [j for j in aws.training_jobs() if j.startswith("bad-instance")]
    assert aws.packages() == [] and not [k for k in aws.object_keys() if "/training/" in k]
    assert Path(err.value.log_path).exists()
