"""Compiled-artifact provenance: a Neuron model records how it was built in the registry, and a model that
cannot run as the spec asks is refused (InvalidSpec naming the field) before any traffic moves."""

from __future__ import annotations

import copy
from typing import Any

import boto3
import pytest
from hypothesis import given
from hypothesis import strategies as st
from kanari.api.v1alpha1 import SpecError, parse_spec
from kanari.capacity.provenance import KEYS, NeuronBuild, check
from kanari.controller.config import OperatorConfig
from kanari.controller.model_source import PackageInfo, describe_package
from kanari.controller.reconcile import ClusterObservation, reconcile

from tests.controller.test_reconcile import T0, body, cond, ready
from tests.support.moto import moto_server

ARN1 = "arn:aws:sagemaker:us-east-1:123456789012:model-package/llm/1"
ARN2 = "arn:aws:sagemaker:us-east-1:123456789012:model-package/llm/2"
BUILD = NeuronBuild(compiled=True, sdk_version="2.20.0", compiler_version="2.15.128.0", target="inf2", tp_degree=2,
                    batch_size=1, input_shapes="input_ids=1x128 attention_mask=1x128")
CONFIG = OperatorConfig()


def spec(arn: str = ARN1, **serving: Any) -> Any:
    cores = {} if "neuronDevices" in serving else {"neuronCores": 2}
    return parse_spec({"model": {"modelPackageArn": arn, "requireApproval": False},
                       "serving": {**cores, **serving}})


def test_a_build_record_round_trips_through_the_registry() -> None:
    """SageMaker's own parameter validation (moto, with botocore's) accepts the record; it reads back equal."""
    with moto_server() as endpoint:
        sm = boto3.client("sagemaker", endpoint_url=endpoint, region_name="us-east-1",
                          aws_access_key_id="testing", aws_secret_access_key="testing")
        sm.create_model_package_group(ModelPackageGroupName="llm")
        arn = sm.create_model_package(
            ModelPackageGroupName="llm", ModelApprovalStatus="Approved",
            InferenceSpecification={"Containers": [{"Image": "img:1", "ModelDataUrl": "s3://m/llm/1/model.tar.gz"}],
                                    "SupportedContentTypes": ["application/json"],
                                    "SupportedResponseMIMETypes": ["application/json"]},
            CustomerMetadataProperties=BUILD.properties(),
        )["ModelPackageArn"]
        info = describe_package(sm, arn)
    assert NeuronBuild.from_metadata(info.metadata) == BUILD


@given(st.dictionaries(st.sampled_from(sorted(KEYS.values())), st.text(max_size=20), min_size=1))
def test_hostile_records_are_refused_naming_the_package_never_a_traceback(record: dict[str, str]) -> None:
    try:
        build = NeuronBuild.from_metadata(record)
    except SpecError as err:
        assert err.field == "spec.model.modelPackageArn" and "kanari:neuron." in err.message
        return
    assert build is not None
    result = check(build, spec(), "kanari-neuron", "2.20.0")
    assert result is None or isinstance(result, SpecError)


@pytest.mark.parametrize(("build", "serving", "runtime_sdk", "field", "words"), [
    (BUILD, {}, "2.19.1", "spec.model.runtime", "compiled with Neuron SDK 2.20.0"),
    (BUILD, {}, None, "spec.model.runtime", "declares no Neuron SDK"),
    (BUILD, {"neuronCores": 1}, "2.20.0", "spec.serving.neuronCores", "tensor-parallel degree 2"),
    (BUILD, {"neuronCores": 3}, "2.20.0", "spec.serving.neuronCores", "multiple of 2"),
    (NeuronBuild(compiled=True, target="trn1"), {}, "2.20.0", "spec.serving.accelerator", "compiled for trn1"),
    (NeuronBuild(compiled=False), {}, "2.20.0", "spec.model.modelPackageArn", "not compiled for Neuron"),
])
def test_mismatches_name_the_field(build: NeuronBuild, serving: dict[str, Any], runtime_sdk: str | None,
                                   field: str, words: str) -> None:
    err = check(build, spec(**serving), "kanari-neuron", runtime_sdk)
    assert err is not None and err.field == field and words in err.message


def test_compatible_builds_pass() -> None:
    assert check(BUILD, spec(), "kanari-neuron", "2.20.1") is None  # patch releases load the same NEFF
    assert check(BUILD, spec(neuronCores=4), "kanari-neuron", "2.20.0") is None  # two copies of a TP=2 model
    assert check(BUILD, spec(neuronDevices=1), "kanari-neuron", "2.20.0") is None
    assert check(None, spec(), "kanari-neuron", None) is None  # nothing recorded: nothing to check


def test_a_model_compiled_for_another_sdk_is_refused_before_traffic_moves() -> None:
    v1 = {"model": {"modelPackageArn": ARN1, "requireApproval": False}, "serving": {"neuronCores": 2},
          "rollout": {"steps": [{"setWeight": 20}, {"pause": {}}]}}
    pkg1 = PackageInfo(arn=ARN1, storage_uri="s3://m/llm/1/model.tar.gz", image=None, approval_status="Approved",
                       metadata=BUILD.properties())
    d1 = reconcile(body(v1), ClusterObservation(now=T0, package=pkg1, neuron_runtime_sdk="2.20.0"), CONFIG)
    assert d1.isvc is not None
    live = ready(d1.isvc)
    d2 = reconcile(body(v1, d1.status.model_dump(mode="json")),
                   ClusterObservation(now=T0, isvc=live, package=pkg1, neuron_runtime_sdk="2.20.0"), CONFIG)
    assert d2.status.phase == "Succeeded"

    v2 = copy.deepcopy(v1)
    v2["model"]["modelPackageArn"] = ARN2
    old_sdk = NeuronBuild(compiled=True, sdk_version="2.18.2", target="inf2", tp_degree=2)
    pkg2 = PackageInfo(arn=ARN2, storage_uri="s3://m/llm/2/model.tar.gz", image=None, approval_status="Approved",
                       metadata=old_sdk.properties())
    d3 = reconcile(body(v2, d2.status.model_dump(mode="json"), generation=2),
                   ClusterObservation(now=T0, isvc=live, package=pkg2, neuron_runtime_sdk="2.20.0"), CONFIG)
    invalid = cond(d3.status, "InvalidSpec")
    assert invalid["status"] == "True" and invalid["message"].startswith("spec.model.runtime:")
    assert "2.18.2" in invalid["message"] and "2.20.0" in invalid["message"]
    assert d3.isvc is None  # the InferenceService is left alone: no canary, no traffic moved
    assert d3.status.stableModel is not None and d3.status.stableModel.modelPackageArn == ARN1
    assert d3.status.canaryModel is None and any(e.reason == "InvalidSpec" for e in d3.events)


def test_a_replica_larger_than_its_instance_type_is_refused_by_reconcile() -> None:
    v1 = {"model": {"storageUri": "s3://m/llm/1"}, "serving": {"neuronCores": 4, "instanceType": "inf2.xlarge"}}
    d = reconcile(body(v1), ClusterObservation(now=T0), CONFIG)
    invalid = cond(d.status, "InvalidSpec")
    assert invalid["status"] == "True" and invalid["message"].startswith("spec.serving.neuronCores:")
    assert d.isvc is None


@pytest.mark.parametrize("raw", ["¹", "²0", "٣", " 2", "+2", "2.0"])
def test_a_count_that_is_not_plain_ascii_digits_is_refused_naming_the_package(raw: str) -> None:
    """Regression: '¹' passed str.isdigit() and then int() raised ValueError: a traceback in reconcile, not InvalidSpec."""
    for key in ("tp_degree", "batch_size"):
        try:
            build = NeuronBuild.from_metadata({KEYS[key]: raw})
        except SpecError as err:
            assert err.field == "spec.model.modelPackageArn" and KEYS[key] in err.message
        else:
            assert build is not None and raw.strip().isascii() and getattr(build, key) == int(raw)
