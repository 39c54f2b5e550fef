"""The whole pipeline through kfp.local, AWS on a moto server: a first model is released with its lineage;
a worse one is refused and changes nothing; bad input stops at the step that owns it, naming the parameter."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from kanari.api import v1alpha1
from kanari.cli.main import main
from pipelines_testlib import MODELDEPLOYMENT_CRD, shuffled_labels_csv, strict_validator

from kfp_pipelines import data
from kfp_pipelines.local import PipelineRunError, run_local

GIT_SHA = "0123456789abcdef0123456789abcdef01234567"
FAST = {"epochs": 6}


@pytest.mark.timeout(150)
def test_release_then_a_worse_model_is_refused(aws, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    gitops = tmp_path / "gitops"
    progress: list[str] = []
    first = run_local(bucket=aws.bucket, model_package_group=aws.group, model_name="fraud", namespace="ml-prod",
                      hyperparameters=FAST, manifest_dir=gitops, git_sha=GIT_SHA, reason="initial release",
                      workdir=tmp_path / "work", progress=progress.append)

    # Progress named each step as it ran.
    started = [p[2:] for p in progress if p.startswith("> ")]
    assert started == ["validate-data", "sagemaker-training-job", "evaluate-model", "quality-gate",
                       "write-drift-baseline", "register-model", "emit-model-deployment"]
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
    assert first.api_calls["sagemaker.CreateTrainingJob"] == 1
    assert first.api_calls["sagemaker.CreateModelPackage"] == 1

    # Approval is a status change in the registry.
    assert main(["models", "approve", f"{aws.group}/1", "--reason", "reviewed"]) == 0
    capsys.readouterr()
    assert main(["models", "list", "--group", aws.group]) == 0
    assert "Approved" in capsys.readouterr().out

    # Retraining on labels that carry no signal: the gate refuses it, through the CLI.
    aws.s3.put_object(Bucket=aws.bucket, Key="incoming/shuffled.csv",
                      Body=shuffled_labels_csv(data.builtin_breast_cancer(), data.BUILTIN_TARGET))
    before = manifest.read_text()
    code = main(["pipeline", "run", "--local", "--bucket", aws.bucket, "--model-package-group", aws.group,
                 "--dataset-uri", f"s3://{aws.bucket}/incoming/shuffled.csv", "--model-name", "fraud",
                 "--namespace", "ml-prod", "--hyperparameter", "epochs=6", "--manifest-dir", str(gitops),
                 "--git-sha", GIT_SHA, "--workdir", str(tmp_path / "work"), "--reason", "drift alert"])
    out = capsys.readouterr()
    assert code == 3
    assert "quality gate REJECTED: pr_auc" in out.out and "worse than the Approved model's" in out.out
    assert "> record-rejection" in out.err and "> register-model" not in out.err
    assert len(aws.packages()) == 1 and manifest.read_text() == before


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
