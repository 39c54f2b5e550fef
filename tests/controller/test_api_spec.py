"""The spec parser: field-named errors, never a crash, and the CRD (schema + CEL) agreeing with it."""

from __future__ import annotations

from typing import Any

import celpy
import jsonschema
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from kanari.api import crd
from kanari.api.v1alpha1 import SpecError, parse_spec

from tests.support.schemas import to_jsonschema

ARN = "arn:aws:sagemaker:us-east-1:123456789012:model-package/fraud/7"


@pytest.mark.parametrize(
    ("spec", "field", "words"),
    [
        ({"model": {}}, "spec.model.modelPackageArn", "exactly one"),
        ({"model": {"storageUri": "s3://b/m", "modelPackageArn": ARN}}, "spec.model.modelPackageArn", "exactly one"),
        ({"model": {"storageUri": "s3://b/m"}, "serving": {"minReplicas": 3, "maxReplicas": 2}},
         "spec.serving.maxReplicas", "minReplicas"),
        ({"model": {"storageUri": "s3://b/m"}, "serving": {"accelerator": "cpu", "neuronCores": 2}},
         "spec.serving.neuronCores", "inferentia2"),
        ({"model": {"storageUri": "s3://b/m"}, "serving": {"instanceType": "m5.xlarge"}},
         "spec.serving.instanceType", "inf2"),
        ({"model": {"storageUri": "s3://b/m"}, "rollout": {"steps": [{"setWeight": 50}, {"setWeight": 10}]}},
         "spec.rollout.steps", "decrease"),
        ({"model": {"storageUri": "s3://b/m"}, "rollout": {"steps": [{"setWeight": 150}]}},
         "spec.rollout.steps[0].setWeight", "100"),
        ({"model": {"storageUri": "s3://b/m"}, "rollout": {"steps": [{"setWeight": 5, "pause": {}}]}},
         "spec.rollout.steps[0]", "exactly one"),
        ({"model": {"storageUri": "s3://b/m"},
          "rollout": {"analysis": {"metrics": [{"name": "x", "template": "request-success-rate"}]}}},
         "spec.rollout.analysis.metrics[0].thresholdRange", "needs thresholdRange"),
        ({"model": {"storageUri": "s3://b/m"},
          "rollout": {"analysis": {"metrics": [{"name": "x", "template": "nope", "thresholdRange": {"min": 1}}]}}},
         "spec.rollout.analysis.metrics[0].template", "request-success-rate"),
        ({"model": {"storageUri": "s3://b/m"}, "rollout": {"steps": [{"analysis": {}}]}},
         "spec.rollout.analysis.metrics", "at least one metric"),
        ({"model": {"storageUri": "s3://b/m"}, "monitoring": {"drift": {"warn": 0.3, "critical": 0.2}}},
         "spec.monitoring.drift.critical", "warn"),
        ({"model": {"storageUri": "s3://b/m"}, "serving": {"maxReplica": 3}}, "spec.serving.maxReplica", "unknown"),
        ({"model": {"storageUri": "s3://b/m"}, "rollout": {"progressDeadline": "soon"}},
         "spec.rollout.progressDeadline", "pattern"),
    ],
)
def test_bad_specs_name_the_field(spec: dict[str, Any], field: str, words: str) -> None:
    with pytest.raises(SpecError) as info:
        parse_spec(spec)
    assert info.value.field == field, str(info.value)
    assert words in info.value.message


def test_design_sketch_spec_parses() -> None:
    spec = parse_spec(
        {
            "model": {"modelPackageArn": ARN, "format": "pytorch-neuronx", "requireApproval": True},
            "serving": {"accelerator": "inferentia2", "instanceType": "inf2.xlarge", "neuronCores": 2,
                        "minReplicas": 2, "maxReplicas": 10, "deploymentMode": "Serverless"},
            "rollout": {
                "strategy": "Canary",
                "steps": [{"setWeight": 10}, {"pause": {"duration": "5m"}}, {"setWeight": 50}, {"pause": {}}],
                "analysis": {"interval": "1m", "failureLimit": 2, "minSampleCount": 100, "metrics": [
                    {"name": "success-rate", "template": "request-success-rate", "thresholdRange": {"min": 0.99}},
                    {"name": "p99", "template": "request-latency-p99", "thresholdRange": {"max": 0.25}},
                ]},
            },
            "monitoring": {"baselineUri": "s3://b/baseline", "drift": {"method": "psi", "for": "15m"},
                           "retrain": {"pipeline": "fraud-training", "cooldown": "24h"}},
        }
    )
    assert spec.model.display_version() == "fraud/7"
    assert spec.monitoring and spec.monitoring.drift.for_ == "15m"
    # Scaling alone is not a new rollout; a new model is.
    scaled = spec.model_copy(update={"serving": spec.serving.model_copy(update={"maxReplicas": 20})})
    assert scaled.rollout_revision() == spec.rollout_revision()
    other = spec.model_copy(update={"model": spec.model.model_copy(update={"modelPackageArn": ARN[:-1] + "8"})})
    assert other.rollout_revision() != spec.rollout_revision()


def test_strategies_become_steps() -> None:
    linear = parse_spec({"model": {"storageUri": "s3://b/m"},
                         "rollout": {"strategy": "Linear", "linear": {"stepWeight": 40, "interval": "30s"}}})
    weights = [s.setWeight for s in linear.rollout.effective_steps() if s.setWeight is not None]
    assert weights == [40, 80, 100]
    bg = parse_spec({"model": {"storageUri": "s3://b/m"}, "rollout": {"strategy": "BlueGreen", "analysis": {
        "metrics": [{"name": "ok", "template": "request-success-rate", "thresholdRange": {"min": 0.9}}]}}})
    kinds = [("w", s.setWeight) if s.setWeight is not None else ("a" if s.analysis else "p", None)
             for s in bg.rollout.effective_steps()]
    assert kinds == [("w", 0), ("a", None), ("w", 100)]


# ------------------------------------------------------------------- the CRD agrees with the parser
def _cel_rules(schema: dict[str, Any], path: tuple[Any, ...] = ()) -> list[tuple[tuple[Any, ...], str, str]]:
    out = [(path, r["rule"], r["message"]) for r in schema.get("x-kubernetes-validations", [])]
    for key, sub in (schema.get("properties") or {}).items():
        out.extend(_cel_rules(sub, (*path, key)))
    if "items" in schema:
        out.extend(_cel_rules(schema["items"], (*path, "*")))
    return out


def _apply_defaults(schema: dict[str, Any], value: Any) -> Any:
    """Structural defaulting, as the API server does before CEL validation."""
    if isinstance(value, dict) and "properties" in schema:
        value = dict(value)
        for key, sub in schema["properties"].items():
            if key not in value and "default" in sub:
                value[key] = sub["default"]
            if key in value:
                value[key] = _apply_defaults(sub, value[key])
    elif isinstance(value, list) and "items" in schema:
        value = [_apply_defaults(schema["items"], v) for v in value]
    return value


def _nodes(value: Any, path: tuple[Any, ...]) -> list[Any]:
    if not path:
        return [value]
    head, rest = path[0], path[1:]
    if head == "*":
        return [n for v in (value if isinstance(value, list) else []) for n in _nodes(v, rest)]
    if isinstance(value, dict) and head in value:
        return _nodes(value[head], rest)
    return []


def _is_sorted(lst: Any) -> Any:
    items = list(lst)
    return celpy.celtypes.BoolType(all(a <= b for a, b in zip(items, items[1:], strict=False)))


SPEC_SCHEMA = crd.build_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
CEL_ENV = celpy.Environment()
RULES = [(p, CEL_ENV.program(CEL_ENV.compile(r), functions={"isSorted": _is_sorted}), m)
         for p, r, m in _cel_rules(SPEC_SCHEMA)]


def api_server_accepts(spec: dict[str, Any]) -> bool:
    try:
        jsonschema.Draft4Validator(to_jsonschema(SPEC_SCHEMA)).validate(spec)
    except jsonschema.ValidationError:
        return False
    defaulted = _apply_defaults(SPEC_SCHEMA, spec)
    return all(
        bool(program.evaluate({"self": celpy.json_to_cel(node)}))
        for path, program, _ in RULES
        for node in _nodes(defaulted, path)
    )


def test_cel_rules_compile_and_cover_cross_field_checks() -> None:
    messages = {m for _, _, m in RULES}
    assert "maxReplicas must be >= minReplicas" in messages
    assert "exactly one of modelPackageArn and storageUri must be set" in messages
    assert "setWeight must not decrease from one step to the next" in messages


weights = st.one_of(st.integers(-5, 120), st.sampled_from([0, 10, 50, 100]))
steps = st.lists(
    st.one_of(
        st.fixed_dictionaries({"setWeight": weights}),
        st.fixed_dictionaries({"pause": st.one_of(st.just({}), st.just({"duration": "1m"}))}),
        st.fixed_dictionaries({"analysis": st.just({})}),
        st.fixed_dictionaries({"setWeight": weights, "pause": st.just({})}),
    ),
    max_size=5,
)
metric = st.fixed_dictionaries(
    {"name": st.sampled_from(["a", "b"])},
    optional={
        "template": st.sampled_from(["request-success-rate", "request-latency-p99", "bogus"]),
        "query": st.just("sum(up)"),
        "thresholdRange": st.one_of(st.just({"min": 0.9}), st.just({"max": 1.0}), st.just({}),
                                    st.just({"min": 2.0, "max": 1.0})),
        "successCondition": st.just("result >= 0.5"),
        "failureCondition": st.just("result < 0.2"),
        "sampleQuery": st.just("sum(up)"),
        "minSampleCount": st.sampled_from([0, 5]),
        "dryRun": st.booleans(),
    },
)
spec_dicts = st.fixed_dictionaries(
    {"model": st.fixed_dictionaries({}, optional={
        "storageUri": st.sampled_from(["s3://b/m", "nope"]),
        "modelPackageArn": st.sampled_from([ARN, "arn:bad"]),
        "format": st.sampled_from(["pytorch-neuronx", "sklearn", "bogus"]),
    })},
    optional={
        "serving": st.fixed_dictionaries({}, optional={
            "accelerator": st.sampled_from(["inferentia2", "gpu", "cpu", "tpu"]),
            "minReplicas": st.integers(-1, 4),
            "maxReplicas": st.integers(0, 4),
            "neuronCores": st.integers(0, 3),
            "neuronDevices": st.integers(1, 2),
            "gpus": st.integers(1, 2),
            "instanceType": st.sampled_from(["inf2.xlarge", "m5.large"]),
        }),
        "rollout": st.fixed_dictionaries({}, optional={
            "strategy": st.sampled_from(["Canary", "Linear", "BlueGreen", "AllAtOnce"]),
            "steps": steps,
            "linear": st.fixed_dictionaries({}, optional={"stepWeight": st.integers(0, 120),
                                                          "maxWeight": st.integers(0, 100)}),
            "analysis": st.fixed_dictionaries({}, optional={"metrics": st.lists(metric, max_size=3),
                                                            "minSampleCount": st.sampled_from([0, 100])}),
        }),
        "monitoring": st.fixed_dictionaries({}, optional={
            "drift": st.fixed_dictionaries({}, optional={"warn": st.sampled_from([0.1, 0.3]),
                                                         "critical": st.sampled_from([0.2, 0.25])}),
        }),
    },
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(spec_dicts)
def test_crd_and_parser_agree(spec: dict[str, Any]) -> None:
    try:
        parse_spec(spec)
        parsed = True
    except SpecError:
        parsed = False
    assert api_server_accepts(spec) == parsed, spec


@settings(max_examples=300, deadline=None)
@given(st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=8),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(
        st.sampled_from(["model", "serving", "rollout", "steps", "storageUri", "setWeight", "x"]), children,
        max_size=4),
    max_leaves=12,
))
def test_any_input_is_a_spec_error_or_a_spec(spec: Any) -> None:
    try:
        parse_spec(spec)
    except SpecError as err:
        assert err.field.startswith("spec")
