"""Evaluate the trained model on the held-out test split, and judge it against the Approved model."""

from typing import NamedTuple

from kfp import dsl
from kfp.dsl import ClassificationMetrics, Dataset, Input, Markdown, Metrics, Model, Output

from kfp_pipelines.components import COMPONENT_IMAGE


@dsl.component(base_image=COMPONENT_IMAGE, install_kfp_package=False)
def evaluate_model(
    model: Input[Model],
    test_data: Input[Dataset],
    evaluation: Output[Metrics],
    classification: Output[ClassificationMetrics],
    pr_curve: Output[Markdown],
) -> NamedTuple("EvaluationOutputs", scores=dict, evaluation_uri=str):
    """PR-AUC, ROC-AUC, recall, precision, F1 (not accuracy) on the test split, logged as KFP Metrics;
    the confusion matrix and ROC curve as ClassificationMetrics (what the KFP UI draws), and the
    precision-recall curve as a table (ClassificationMetrics has no PR curve type)."""
    from collections import namedtuple
    from pathlib import Path

    from kfp_pipelines import artifacts, steps
    from kfp_pipelines.errors import step

    with step("evaluate-model"):
        scores, report_uri, ev = steps.evaluate(model_uri=artifacts.s3_uri(model),
                                                test_uri=artifacts.s3_uri(test_data))
    for name, value in sorted(scores.items()):
        evaluation.log_metric(name, value)
    evaluation.metadata.update({"test_rows": ev.rows, "test_positives": ev.positives, "report_uri": report_uri})
    c = ev.confusion
    classification.log_confusion_matrix(["negative", "positive"], [[c["tn"], c["fp"]], [c["fn"], c["tp"]]])
    if ev.roc is not None:
        classification.log_roc_curve(ev.roc.x, ev.roc.y, ev.roc.thresholds)
    Path(pr_curve.path).parent.mkdir(parents=True, exist_ok=True)
    Path(pr_curve.path).write_text(steps.pr_curve_markdown(ev))
    return namedtuple("EvaluationOutputs", ["scores", "evaluation_uri"])(scores, report_uri)


@dsl.component(base_image=COMPONENT_IMAGE, install_kfp_package=False)
def quality_gate(
    test_data: Input[Dataset],
    model_package_group: str,
    scores: dict,
    gate_metric: str,
    gate_tolerance: float,
) -> NamedTuple("GateOutputs", passed=bool, reason=str):
    """Passes when there is no Approved model yet, or the candidate is not worse beyond the tolerance,
    with the Approved model scored on this run's test split (the same rows as the candidate)."""
    from collections import namedtuple

    from kfp_pipelines import artifacts, steps
    from kfp_pipelines.errors import step

    with step("quality-gate"):
        verdict = steps.judge(model_package_group=model_package_group, scores=scores, gate_metric=gate_metric,
                              gate_tolerance=gate_tolerance, test_uri=artifacts.s3_uri(test_data))
    return namedtuple("GateOutputs", ["passed", "reason"])(verdict.passed, verdict.reason)


@dsl.component(base_image=COMPONENT_IMAGE, install_kfp_package=False)
def calibrate_model(model: Input[Model], test_data: Input[Dataset]) -> str:
    """Isotonic calibration of the classifier's scores on the holdout (the test split), written as
    calibration.json beside the model for the register step; "" when the task is not binary."""
    from kfp_pipelines import artifacts, steps
    from kfp_pipelines.errors import step

    with step("calibrate-model"):
        return steps.calibrate(model_uri=artifacts.s3_uri(model), test_uri=artifacts.s3_uri(test_data))
