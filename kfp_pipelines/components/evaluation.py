"""Evaluate the trained model on the held-out test split, and judge it against the Approved model."""

from typing import NamedTuple

from kfp import dsl
from kfp.dsl import Dataset, Input, Metrics, Model, Output

from kfp_pipelines.components import COMPONENT_IMAGE


@dsl.component(base_image=COMPONENT_IMAGE, install_kfp_package=False)
def evaluate_model(
    model: Input[Model],
    test_data: Input[Dataset],
    evaluation: Output[Metrics],
) -> NamedTuple("EvaluationOutputs", scores=dict, evaluation_uri=str):
    """PR-AUC, ROC-AUC, recall, precision, F1 (not accuracy) on the test split, logged as KFP Metrics."""
    from collections import namedtuple

    from kfp_pipelines import steps
    from kfp_pipelines.errors import step

    with step("evaluate-model"):
        scores, report_uri, ev = steps.evaluate(model_uri=model.uri, test_uri=test_data.uri)
    for name, value in sorted(scores.items()):
        evaluation.log_metric(name, value)
    evaluation.metadata.update({"test_rows": ev.rows, "test_positives": ev.positives, "report_uri": report_uri})
    return namedtuple("EvaluationOutputs", ["scores", "evaluation_uri"])(scores, report_uri)


@dsl.component(base_image=COMPONENT_IMAGE, install_kfp_package=False)
def quality_gate(
    model_package_group: str,
    scores: dict,
    gate_metric: str,
    gate_tolerance: float,
) -> NamedTuple("GateOutputs", passed=bool, reason=str):
    """Passes when there is no Approved model yet, or the candidate is not worse beyond the tolerance."""
    from collections import namedtuple

    from kfp_pipelines import steps
    from kfp_pipelines.errors import step

    with step("quality-gate"):
        verdict = steps.judge(model_package_group=model_package_group, scores=scores, gate_metric=gate_metric,
                              gate_tolerance=gate_tolerance)
    return namedtuple("GateOutputs", ["passed", "reason"])(verdict.passed, verdict.reason)
