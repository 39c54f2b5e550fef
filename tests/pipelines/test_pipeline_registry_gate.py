"""The Model Registry (moto): one complete package per training job, lineage in its metadata, approval as
a status change; and the quality gate against the Approved model (missing data never passes)."""

from __future__ import annotations

import logging
import math
from typing import Any

import pytest
from pipelines_testlib import trained_model_tarball

from kfp_pipelines import aws as aws_mod
from kfp_pipelines import data, evaluation, gate, registry, registry_admin, steps
from kfp_pipelines.errors import InputError, StepFailed

JOB_ARN = "arn:aws:sagemaker:us-east-1:123456789012:training-job/kanari-abc"
METADATA = {
    "training_job_arn": JOB_ARN,
    "image_uri": "763104351884.dkr.ecr.us-east-1.amazonaws.com/pytorch-training-neuronx:2.8.0",
    "image_digest": "sha256:" + "a" * 64,
    "source_digest": "0123456789abcdef",
}


def put_documents(aws: Any, job: str, pr_auc: float = 0.9, baseline: bool = True) -> dict[str, str]:
    model = f"s3://{aws.bucket}/training/{job}/output/model.tar.gz"
    aws.s3.put_object(Bucket=aws.bucket, Key=f"training/{job}/output/model.tar.gz", Body=b"model")
    ev = evaluation.Evaluation({"pr_auc": pr_auc, "recall": 0.8, "f1": 0.7}, {"tp": 1, "fp": 0, "fn": 0, "tn": 1},
                               10, 2)
    aws.s3.put_object(Bucket=aws.bucket, Key=f"training/{job}/output/evaluation.json",
                      Body=aws_mod.json.dumps(evaluation.quality_document(ev)).encode())
    if baseline:
        for name in ("statistics.json", "constraints.json"):
            aws.s3.put_object(Bucket=aws.bucket, Key=f"training/{job}/output/baseline/{name}", Body=b"{}")
    return {"model_uri": model, "evaluation_uri": f"s3://{aws.bucket}/training/{job}/output/evaluation.json",
            "baseline_uri": f"s3://{aws.bucket}/training/{job}/output/baseline"}


def register(aws: Any, docs: dict[str, str], job_arn: str = JOB_ARN, **kw: Any) -> tuple[str, str]:
    args = {
        "model_metadata": {**METADATA, "training_job_arn": job_arn}, "model_package_group": aws.group,
        "scores": {"pr_auc": 0.9, "recall": 0.8, "f1": 0.7, "threshold": 0.4}, "dataset_uri": "sklearn://breast_cancer",
        "dataset_version": "sklearn-1.9.1-abc", "git_sha": "6aacda1d590f", "run_id": "12345678",
        "auto_approve": False, "reason": "drift alert KanariFeatureDrift", "model_name": "fraud",
        "serving_image": "", "gate_reason": "no Approved model in the group yet: the first model passes (pr_auc=0.9)",
        **docs, **kw,
    }
    return steps.register(**args)


def test_one_complete_package_per_training_job_with_its_lineage(aws) -> None:
    docs = put_documents(aws, "kanari-abc")
    arn, status = register(aws, docs)
    again, _ = register(aws, docs)  # a restarted register step
    assert again == arn and len(aws.packages()) == 1
    assert status == "PendingManualApproval"
    desc = aws.sm.describe_model_package(ModelPackageName=arn)
    meta = desc["CustomerMetadataProperties"]
    assert meta["kanari:git-sha"] == "6aacda1d590f"
    assert meta["kanari:dataset-uri"] == "sklearn://breast_cancer"
    assert meta["kanari:dataset-version"] == "sklearn-1.9.1-abc"
    assert meta["kanari:pipeline-run-id"] == "12345678"
    assert meta["kanari:training-job-arn"] == JOB_ARN
    assert meta["kanari:image-digest"] == METADATA["image_digest"]
    assert meta["kanari:baseline-uri"] == docs["baseline_uri"]
    assert meta["kanari:metric.pr_auc"] == "0.900000" and "kanari:metric.threshold" not in meta
    assert desc["ModelMetrics"]["ModelQuality"]["Statistics"]["S3Uri"] == docs["evaluation_uri"]
    assert desc["DriftCheckBaselines"]["ModelDataQuality"]["Constraints"]["S3Uri"].endswith("baseline/constraints.json")
    assert desc["InferenceSpecification"]["Containers"][0]["ModelDataUrl"] == docs["model_uri"]


def test_nothing_is_registered_when_a_referenced_document_is_missing(aws) -> None:
    docs = put_documents(aws, "kanari-nobase", baseline=False)
    with pytest.raises(StepFailed, match="statistics.json does not exist; nothing was registered"):
        register(aws, docs)
    assert aws.packages() == []


def test_parameters_the_registry_would_refuse_are_named(aws) -> None:
    docs = put_documents(aws, "kanari-long")
    with pytest.raises(InputError) as err:
        register(aws, docs, reason="x" * 300)
    assert err.value.parameter == "reason"
    with pytest.raises(InputError) as err:
        register(aws, docs, model_package_group="no-such-group")
    assert err.value.parameter == "model_package_group" and "does not exist" in err.value.message
    assert aws.packages() == []


def test_missing_lineage_api_is_logged_and_registration_stands(aws, caplog) -> None:
    docs = put_documents(aws, "kanari-lineage")
    with caplog.at_level(logging.WARNING, logger="kanari.pipeline"):
        arn, _ = register(aws, docs)
    assert any("lineage API unavailable" in r.getMessage() for r in caplog.records)
    assert aws.sm.describe_model_package(ModelPackageName=arn)["ModelPackageStatus"] == "Completed"


def test_approval_is_a_status_change_of_the_same_package(aws) -> None:
    arn, _ = register(aws, put_documents(aws, "kanari-a"))
    assert registry_admin.resolve_arn(aws.sm, f"{aws.group}/1") == arn
    assert registry_admin.set_status(aws.sm, arn, "Approved", "reviewed by SRE") == "Approved"
    desc = aws.sm.describe_model_package(ModelPackageName=arn)
    assert desc["ApprovalDescription"] == "reviewed by SRE"
    rows = registry_admin.list_packages(aws.sm, aws.group)
    assert [(r.version, r.status, r.git_sha) for r in rows] == [(1, "Approved", "6aacda1d590f")]
    assert registry_admin.set_status(aws.sm, arn, "Rejected", "") == "Rejected"
    assert len(aws.packages()) == 1
    with pytest.raises(InputError, match="no version 7"):
        registry_admin.resolve_arn(aws.sm, f"{aws.group}/7")


def put_test_split(aws: Any, key: str = "holdout/test/test.csv") -> str:
    parts = data.split(data.builtin_breast_cancer(), data.BUILTIN_TARGET, seed=7)
    aws.s3.put_object(Bucket=aws.bucket, Key=key, Body=data.to_csv(parts.test))
    return f"s3://{aws.bucket}/{key.rsplit('/', 1)[0]}/"


def approved_champion(aws: Any, job: str, *, recorded_pr_auc: float, invert: bool) -> str:
    """An Approved package whose recorded score (on its own, older test split) is `recorded_pr_auc`, and
    whose model really ranks this data well (invert=False) or backwards (invert=True)."""
    parts = data.split(data.builtin_breast_cancer(), data.BUILTIN_TARGET, seed=7)
    docs = put_documents(aws, job, pr_auc=recorded_pr_auc)
    aws.s3.put_object(Bucket=aws.bucket, Key=f"training/{job}/output/model.tar.gz",
                      Body=trained_model_tarball(parts.train, data.BUILTIN_TARGET, invert=invert))
    arn, _ = register(aws, docs, job_arn=f"{JOB_ARN}-{job}", auto_approve=True)
    return arn


def judge(aws: Any, pr_auc: float, test_uri: str, tolerance: float = 0.02) -> gate.GateVerdict:
    return steps.judge(model_package_group=aws.group, scores={"pr_auc": pr_auc}, gate_metric="pr_auc",
                       gate_tolerance=tolerance, test_uri=test_uri)


def test_the_first_model_passes_and_bad_gate_parameters_are_named(aws) -> None:
    test_uri = put_test_split(aws)
    assert judge(aws, 0.5, test_uri).passed
    with pytest.raises(InputError) as err:
        steps.judge(model_package_group=aws.group, scores={"pr_auc": 0.9}, gate_metric="accuracy",
                    gate_tolerance=0.0, test_uri=test_uri)
    assert err.value.parameter == "gate_metric"


def test_the_gate_scores_the_approved_model_on_this_runs_test_split(aws) -> None:
    """Regression: the Approved model's recorded 0.99 was on its own old split. On the current holdout it
    ranks backwards; the candidate's 0.85 on the same rows is the better model and must pass."""
    test_uri = put_test_split(aws)
    arn = approved_champion(aws, "kanari-stale", recorded_pr_auc=0.99, invert=True)
    verdict = judge(aws, 0.85, test_uri)
    assert verdict.champion_arn == arn
    assert verdict.champion is not None and verdict.champion < 0.5  # scored here, not read from the registry
    assert verdict.passed, verdict.reason


def test_a_champion_that_is_better_on_the_current_data_keeps_its_place(aws) -> None:
    """The reverse: its recorded score (0.5, on harder old data) would let a worse candidate through."""
    test_uri = put_test_split(aws)
    approved_champion(aws, "kanari-strong", recorded_pr_auc=0.5, invert=False)
    verdict = judge(aws, 0.6, test_uri)
    assert verdict.champion is not None and verdict.champion > 0.9
    assert not verdict.passed and "worse than the Approved model's" in verdict.reason


def test_a_champion_that_cannot_be_scored_on_the_current_data_fails_the_gate(aws) -> None:
    put_test_split(aws)
    arn = approved_champion(aws, "kanari-other-schema", recorded_pr_auc=0.5, invert=False)
    frame = data.builtin_breast_cancer().drop(columns=["mean radius"])
    aws.s3.put_object(Bucket=aws.bucket, Key="narrow/test/test.csv", Body=data.to_csv(frame))
    verdict = judge(aws, 0.99, f"s3://{aws.bucket}/narrow/test/")
    assert not verdict.passed and arn in verdict.reason and "cannot compare" in verdict.reason


@pytest.mark.parametrize(
    ("candidate", "champion", "passed", "fragment"),
    [
        ({"pr_auc": math.nan}, None, False, "the candidate has no pr_auc"),
        ({"recall": 0.9}, gate.Champion("arn:c", {"pr_auc": 0.9}), False, "the candidate has no pr_auc"),
        ({"pr_auc": 0.99}, gate.Champion("arn:c", {}), False, "has no recorded pr_auc; cannot compare"),
        ({"pr_auc": 0.70}, gate.Champion("arn:c", {"pr_auc": 0.80}), False, "worse than"),
        ({"pr_auc": 0.80}, gate.Champion("arn:c", {"pr_auc": 0.80}), True, "no regression"),
    ],
)
def test_gate_decisions(candidate: dict[str, float], champion: gate.Champion | None, passed: bool,
                        fragment: str) -> None:
    verdict = gate.decide(candidate, champion, "pr_auc", 0.02)
    assert verdict.passed is passed and fragment in verdict.reason


LINEAGE = registry.ReleaseLineage(git_sha="6aacda1d590f", dataset_uri="s3://ml-data/fraud.csv", dataset_version="etag:1",
                                  pipeline_run="run-5", training_job_arn=JOB_ARN, image_uri="img", image_digest="d",
                                  source_digest="s")


@pytest.mark.parametrize("accelerator", ["cpu", "inferentia2"])
def test_the_package_says_what_it_runs_on_and_what_it_is(accelerator: str) -> None:
    target = registry.serving_target(accelerator)
    req = registry.package_request(group="fraud", model_uri="s3://b/m.tar.gz",
                                   serving_image=registry.default_serving_image("eu-west-1", accelerator),
                                   evaluation_uri="s3://b/e.json", baseline_uri="s3://b/base", lineage=LINEAGE,
                                   metadata={}, auto_approve=False, reason="", target=target, model_name="fraud")
    spec = req["InferenceSpecification"]
    container = spec["Containers"][0]
    assert req["Task"] == "CLASSIFICATION" and req["Domain"] == "MACHINE_LEARNING"
    assert container["Framework"] == "PYTORCH" and container["FrameworkVersion"]
    if accelerator == "inferentia2":
        assert "/pytorch-inference-neuronx:" in container["Image"]
        assert spec["SupportedRealtimeInferenceInstanceTypes"] == ["ml.inf2.xlarge", "ml.inf2.8xlarge",
                                                                    "ml.inf2.24xlarge", "ml.inf2.48xlarge"]
    else:
        assert "/pytorch-inference:" in container["Image"] and "-cpu-" in container["Image"]
        assert not any(t.startswith("ml.inf2") for t in spec["SupportedRealtimeInferenceInstanceTypes"])
    assert {"Key": "kanari.dev/model", "Value": "fraud"} in req["Tags"]
    assert req["CustomerMetadataProperties"]["kanari:serving-accelerator"] == accelerator
    # Every member and value is one SageMaker accepts (its service model).
    import boto3
    from botocore.validate import ParamValidator
    model = boto3.client("sagemaker", region_name="eu-west-1").meta.service_model.operation_model("CreateModelPackage")
    report = ParamValidator().validate(req, model.input_shape)
    assert not report.has_errors(), report.generate_report()


def test_a_package_for_inferentia_gets_a_model_deployment_on_inferentia2() -> None:
    from kanari.api import v1alpha1

    from kfp_pipelines import deployment

    target = registry.serving_target("inferentia2")
    obj = deployment.build(None, name="fraud", namespace="ml-prod", model_package_arn="arn:aws:sagemaker:us-east-1:"
                           "123456789012:model-package/fraud/3", baseline_uri="s3://b/base",
                           lineage=v1alpha1.Lineage(), dataset_version="v1", model_format=target.model_format,
                           accelerator=target.accelerator)
    md = v1alpha1.parse_model_deployment(obj)
    assert md.spec.serving.accelerator == "inferentia2" and md.spec.model.format == "pytorch-neuronx"
    from kanari.controller.serving_runtime import choose_runtime

    assert choose_runtime(md.spec, "kanari-neuron").runtime == "kanari-neuron"


def test_inferentia_is_refused_up_front_while_the_artifact_is_a_cpu_model() -> None:
    with pytest.raises(InputError) as err:
        steps.check_parameters(model_name="fraud", namespace="ml", git_sha="abc", reason="", dataset_uri="",
                               serving_accelerator="inferentia2")
    assert err.value.parameter == "serving_accelerator" and "Neuron-compiled" in err.value.message


def test_lineage_links_dataset_training_job_package_and_the_alert(aws) -> None:
    """moto has no ML lineage API: botocore's Stubber checks each request against SageMaker's model."""
    from botocore.stub import ANY, Stubber
    from kanari.retrain.training_run import DriftAlert

    sm = aws_mod.client("sagemaker")
    pkg = "arn:aws:sagemaker:us-east-1:123456789012:model-package/fraud/4"
    art = "arn:aws:sagemaker:us-east-1:123456789012:artifact/"
    tc = "arn:aws:sagemaker:us-east-1:123456789012:experiment-trial-component/kanari-abc-aws-training-job"
    alert = DriftAlert(alertname="KanariFeatureDrift", fingerprint="5f3a9c01", startsAt="2026-11-30T04:00:00Z",
                       labels={"feature": "amount", "severity": "warning"})
    with Stubber(sm) as stub:
        stub.add_response("list_artifacts", {"ArtifactSummaries": []}, {"SourceUri": "s3://ml-data/fraud.csv", "MaxResults": 1})
        stub.add_response("create_artifact", {"ArtifactArn": art + "d1"}, {
            "ArtifactType": "DataSet", "ArtifactName": "training-data", "Properties": {"DatasetVersion": "etag:1"},
            "Source": {"SourceUri": "s3://ml-data/fraud.csv", "SourceTypes": [{"SourceIdType": "Custom", "Value": "etag:1"}]}})
        # The package's artifact exists already (a re-run of the step): reused, not duplicated.
        stub.add_response("list_artifacts", {"ArtifactSummaries": [{"ArtifactArn": art + "m1"}]},
                          {"SourceUri": pkg, "MaxResults": 1})
        stub.add_response("describe_trial_component", {"TrialComponentArn": tc},
                          {"TrialComponentName": "kanari-abc-aws-training-job"})
        stub.add_response("list_artifacts", {"ArtifactSummaries": []}, {"SourceUri": ANY, "MaxResults": 1})
        stub.add_response("create_artifact", {"ArtifactArn": art + "a1"}, {
            "ArtifactType": "DriftAlert", "ArtifactName": "KanariFeatureDrift", "Source": {"SourceUri": ANY},
            "Properties": {"alertname": "KanariFeatureDrift", "fingerprint": "5f3a9c01",
                           "startsAt": "2026-11-30T04:00:00Z", "feature": "amount", "severity": "warning"}})
        for source, dest, kind in ((art + "d1", tc, "ContributedTo"), (tc, art + "m1", "Produced"),
                                   (art + "a1", tc, "AssociatedWith")):
            stub.add_response("add_association", {"SourceArn": source, "DestinationArn": dest},
                              {"SourceArn": source, "DestinationArn": dest, "AssociationType": kind})
        made = registry.record_lineage(sm, dataset_uri="s3://ml-data/fraud.csv", dataset_version="etag:1",
                                       model_package_arn=pkg, training_job_arn=JOB_ARN, alert=alert)
        stub.assert_no_pending_responses()
    assert made == [(art + "d1", tc, "ContributedTo"), (tc, art + "m1", "Produced"), (art + "a1", tc, "AssociatedWith")]
