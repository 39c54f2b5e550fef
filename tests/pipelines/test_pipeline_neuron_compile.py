"""The pipeline's optional Neuron compile step.

- On SageMaker: a CreateTrainingJob on Trainium with the PyTorch Neuron DLC running compile.py, validated by
  botocore's service model (and the strict checks of conftest) and accepted by moto; "SageMaker" then runs the job
  under the container contract (local_runner) with a TEST STAND-IN for torch-neuronx/neuronx-cc (no Neuron SDK
  here). Its build record reaches the registry through NeuronBuild.properties(), and the controller's provenance
  check accepts it against the kanari-neuron runtime's SDK and refuses it against another.
- Run locally (kfp.local): the model is registered as NOT compiled and for CPU; the controller serves that package
  on CPU and refuses it on inferentia2, naming the field.
- Bad compile parameters stop the first step, naming the parameter.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st
from kanari.capacity import provenance
from kanari.capacity.provenance import NeuronBuild
from kanari.controller.config import OperatorConfig
from kanari.controller.model_source import describe_package
from kanari.controller.reconcile import ClusterObservation, reconcile
from pipelines_testlib import MODELDEPLOYMENT_CRD, strict_validator

from kfp_pipelines import aws as aws_mod
from kfp_pipelines import neuron, steps
from kfp_pipelines.errors import InputError
from kfp_pipelines.local import PipelineRunError, run_local
from kfp_pipelines.sagemaker import local_runner, training
from kfp_pipelines.sagemaker.config import DISTRIBUTED_HP, TRAINIUM_INSTANCE_TYPES
from kfp_pipelines.sagemaker.waiter import Backoff
from tests.controller.test_reconcile import T0, body, cond
from tests.pipelines.test_pipeline_local_run import FAST, GIT_SHA
from tests.pipelines.test_pipeline_sagemaker_backends import ROLE

STUB_COMPILER_VERSION = "2.15.128.0"
STAND_IN = '''"""TEST STAND-IN for {name} (no Neuron SDK on this machine): {what}"""
import json, os
import torch
__version__ = "{version}"


def trace(model, example, compiler_args=()):
    with open(os.environ["KANARI_TEST_COMPILER_ARGS"], "w") as f:
        json.dump(list(compiler_args), f)
    return torch.jit.trace(model, example)
'''


@pytest.fixture()
def stand_in_compiler(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """torch_neuronx and neuronxcc modules for the compile script's process; returns where the args land."""
    root = tmp_path / "stand-in"
    for name, version, what in (("torch_neuronx", "2.1.2.2.3.0", "trace() is torch.jit.trace"),
                                ("neuronxcc", STUB_COMPILER_VERSION, "only its version")):
        (root / name).mkdir(parents=True)
        (root / name / "__init__.py").write_text(STAND_IN.format(name=name, version=version, what=what))
    args = tmp_path / "compiler-args.json"
    monkeypatch.setenv("PYTHONPATH", f"{root}:{__import__('os').environ.get('PYTHONPATH', '')}")
    monkeypatch.setenv("KANARI_TEST_COMPILER_ARGS", str(args))
    return args


@pytest.fixture()
def sagemaker_runs_jobs(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> list[dict[str, Any]]:
    """moto accepts a training job and marks it Completed without running it; here the accepted request is then
    run under SageMaker's container contract, producing the artifacts where SageMaker puts them."""
    created: list[dict[str, Any]] = []
    real = training.create_or_attach

    def create_and_run(sm: Any, request: dict[str, Any], exists: bool = False) -> bool:
        reattached = real(sm, request, exists)
        created.append(request)
        local_runner.run(request, aws_mod.client("s3"), tmp_path / "sagemaker")
        return reattached

    monkeypatch.setattr(training, "create_or_attach", create_and_run)
    return created


def trained_model(aws: Any) -> str:
    from pipelines_testlib import trained_model_tarball

    from kfp_pipelines import data

    frame = data.builtin_breast_cancer()
    key = f"kanari/{aws.group}/training/train-{uuid.uuid4().hex[:6]}/output/model.tar.gz"
    aws.s3.put_object(Bucket=aws.bucket, Key=key, Body=trained_model_tarball(frame, data.BUILTIN_TARGET, epochs=2))
    return f"s3://{aws.bucket}/{key}"


@pytest.mark.timeout(120)
def test_a_sagemaker_compile_job_on_trainium_records_how_the_model_was_built(
    aws: Any, stand_in_compiler: Path, sagemaker_runs_jobs: list[dict[str, Any]], tmp_path: Path
) -> None:
    model_uri = trained_model(aws)
    result = neuron.compile_model(
        model_uri=model_uri, neuron_target="inf2", training_backend="sagemaker", role_arn=ROLE, run_id="run-7",
        task="neuron-compile", base_job_name="fraud-neuron", instance_type="ml.trn1.2xlarge", image_uri="",
        batch_size=4, max_runtime_seconds=3600, backoff=Backoff(initial=0.01, cap=0.02),
    )
    # The job as SageMaker got it: Trainium, the Neuron DLC of the serving runtime's SDK, one compiler process,
    # the trained model as its input channel.
    (request,) = sagemaker_runs_jobs
    job = aws.sm.describe_training_job(TrainingJobName=request["TrainingJobName"])
    assert job["ResourceConfig"]["InstanceType"] == "ml.trn1.2xlarge"
    assert job["AlgorithmSpecification"]["TrainingImage"] == (
        "763104351884.dkr.ecr.us-east-1.amazonaws.com/pytorch-training-neuronx:2.1.2-neuronx-py310-sdk2.20.0-ubuntu20.04")
    hps = {k: json.loads(v) for k, v in job["HyperParameters"].items()}
    assert hps["neuron_target"] == "inf2" and hps["batch_size"] == 4 and hps["sagemaker_program"] == "compile.py"
    assert DISTRIBUTED_HP not in hps  # torchrun would start the compiler once per NeuronCore
    assert [c["ChannelName"] for c in job["InputDataConfig"]] == ["model"]
    assert {t["Key"]: t["Value"] for t in request["Tags"]}["kanari.dev/pipeline-run"] == "run-7"  # the exit handler stops it
    assert json.loads(stand_in_compiler.read_text()) == ["--target", "inf2"]

    # The compiled artifact, and the record the registry gets.
    assert result.model_uri != model_uri and result.model_uri.endswith(f"{request['TrainingJobName']}/output/model.tar.gz")
    assert result.job_arn == job["TrainingJobArn"]
    assert result.build == NeuronBuild(compiled=True, sdk_version="2.20.0", compiler_version=STUB_COMPILER_VERSION,
                                       target="inf2", tp_degree=1, batch_size=4, input_shapes="features=4x30")
    with __import__("tempfile").TemporaryDirectory() as tmp:
        aws_mod.extract_tar_gz(aws_mod.get_bytes(aws.s3, aws_mod.S3Uri.parse(result.model_uri, "m")), Path(tmp))
        assert sorted(p.name for p in Path(tmp).iterdir()) == ["model.pt", "model_neuron.pt", "neuron-build.json"]
    assert neuron.serving_accelerator(result.build) == "inferentia2"

    # The register step (botocore-validated CreateModelPackage on moto) and the deploy step, as the pipeline runs them
    # on the compile step's output artifact.
    model_metadata = {"training_job_arn": "arn:aws:sagemaker:us-east-1:123456789012:training-job/fraud-0123",
                      "image_uri": "img", "image_digest": "unresolved", "source_digest": "abc", **result.metadata()}
    base = result.model_uri.rsplit("/", 1)[0]
    for key in ("evaluation.json", "baseline/statistics.json", "baseline/constraints.json"):
        aws_mod.put_json(aws.s3, aws_mod.S3Uri.parse(f"{base}/{key}", "k"), {})
    arn, _ = steps.register(
        model_uri=result.model_uri, model_metadata=model_metadata, model_package_group=aws.group,
        scores={"pr_auc": 0.9}, evaluation_uri=f"{base}/evaluation.json", baseline_uri=f"{base}/baseline",
        dataset_uri="sklearn://breast_cancer", dataset_version="v1", git_sha=GIT_SHA, run_id="run-7",
        auto_approve=True, reason="", model_name="fraud", serving_image="", gate_reason="first model")
    desc = aws.sm.describe_model_package(ModelPackageName=arn)
    meta = desc["CustomerMetadataProperties"]
    assert {k: v for k, v in meta.items() if k.startswith(provenance.PREFIX)} == result.build.properties()
    assert meta["kanari:serving-accelerator"] == "inferentia2" and meta["kanari:neuron-compile-job-arn"] == result.job_arn
    container = desc["InferenceSpecification"]["Containers"][0]
    assert container["ModelDataUrl"] == result.model_uri and "pytorch-inference-neuronx" in container["Image"]
    obj, _, _ = steps.deploy(
        model_package_arn=arn, baseline_uri=f"{base}/baseline", model_metadata=model_metadata,
        dataset_uri="sklearn://breast_cancer", dataset_version="v1", git_sha=GIT_SHA, run_id="run-7",
        model_name="fraud", namespace="ml-prod", manifest_dir="", apply_manifest=False,
        artifact_path=str(tmp_path / "md.yaml"))
    strict_validator(MODELDEPLOYMENT_CRD).validate(obj)
    assert obj["spec"]["serving"]["accelerator"] == "inferentia2" and obj["spec"]["model"]["format"] == "pytorch-neuronx"

    # The controller: served on the kanari-neuron runtime's SDK; refused, naming the field, on another SDK.
    package = describe_package(aws.sm, arn)
    config = OperatorConfig()
    served = reconcile(body(obj["spec"]), ClusterObservation(now=T0, package=package, neuron_runtime_sdk="2.20.0"),
                       config)
    assert not [c for c in served.status.conditions if c.type == "InvalidSpec" and c.status == "True"]
    assert served.isvc is not None
    refused = reconcile(body(obj["spec"]), ClusterObservation(now=T0, package=package, neuron_runtime_sdk="2.19.0"),
                        config)
    assert cond(refused.status, "InvalidSpec")["message"].startswith("spec.model.runtime:") and refused.isvc is None


@pytest.mark.timeout(60)
def test_a_compile_job_that_reports_no_build_is_not_called_compiled(
    aws: Any, sagemaker_runs_jobs: list[dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without torch-neuronx the script fails the job, naming why: never a model recorded as compiled."""
    from kfp_pipelines.sagemaker.waiter import TrainingJobFailed

    with pytest.raises(TrainingJobFailed) as err:
        neuron.compile_model(
            model_uri=trained_model(aws), neuron_target="inf2", training_backend="sagemaker", role_arn=ROLE,
            run_id="run-8", task="neuron-compile", base_job_name="fraud-neuron", instance_type="ml.trn1.2xlarge",
            image_uri="", batch_size=1, max_runtime_seconds=600, backoff=Backoff(initial=0.01, cap=0.02),
        )
    assert "ModuleNotFoundError" in err.value.reason and "neuronxcc" in err.value.reason


@pytest.mark.parametrize(("kwargs", "parameter", "words"), [
    ({"neuron_target": "trn1"}, "neuron_target", "a model compiled for trn1 could not be deployed"),
    ({"neuron_target": "inf1"}, "neuron_target", "is not one of"),
    ({"instance_type": "ml.inf2.xlarge"}, "neuron_compile_instance_type", "only on Trainium"),
    ({"batch_size": 0}, "neuron_batch_size", "between 1 and"),
    ({"image_uri": "123456789012.dkr.ecr.us-east-1.amazonaws.com/mine:latest"}, "neuron_compile_image",
     "names no Neuron SDK"),
])
def test_bad_compile_parameters_name_the_parameter(kwargs: dict[str, Any], parameter: str, words: str) -> None:
    args = {"neuron_target": "inf2", "instance_type": "ml.trn1.2xlarge", "batch_size": 1, "image_uri": "", **kwargs}
    with pytest.raises(InputError) as err:
        neuron.check_parameters(**args)
    assert err.value.parameter == parameter and words in err.value.message


def test_no_target_means_no_compile_step_and_nothing_to_check() -> None:
    for instance_type in ("ml.inf2.xlarge", *TRAINIUM_INSTANCE_TYPES):
        neuron.check_parameters("", instance_type, 0, "whatever")
    result = neuron.compile_model(model_uri="s3://b/m/model.tar.gz", neuron_target="", training_backend="sagemaker",
                                  role_arn=ROLE, run_id="r", task="t", base_job_name="m", instance_type="x",
                                  image_uri="", batch_size=1, max_runtime_seconds=1)
    assert result.build is None and result.model_uri == "s3://b/m/model.tar.gz"
    assert neuron.serving_accelerator(None) == "cpu" and neuron.BUILD_KEY not in result.metadata()


@given(st.text(max_size=80))
def test_any_compile_image_gives_a_recordable_sdk_or_names_the_parameter(image: str) -> None:
    try:
        sdk = neuron.sdk_version(image)
    except InputError as err:
        assert err.parameter == "neuron_compile_image"
        return
    assert NeuronBuild.from_metadata(NeuronBuild(compiled=True, sdk_version=sdk).properties()) is not None


@given(st.dictionaries(st.sampled_from(["compiled", "target", "tp_degree", "batch_size", "input_shapes"]),
                       st.text(max_size=12)))
def test_a_malformed_build_record_on_the_artifact_fails_the_step_never_registers(raw: dict[str, str]) -> None:
    from kfp_pipelines.errors import StepFailed

    record = {provenance.KEYS[k]: v for k, v in raw.items()}
    try:
        build = neuron.build_of({neuron.BUILD_KEY: record})
    except StepFailed as err:
        assert "build record is malformed" in str(err)
        return
    assert build is None or neuron.serving_accelerator(build) in ("cpu", "inferentia2")


@pytest.mark.timeout(300)
def test_a_local_run_registers_the_model_as_not_compiled_and_the_controller_serves_it_on_cpu_only(
    aws: Any, tmp_path: Path
) -> None:
    progress: list[str] = []
    name = f"fraud-{uuid.uuid4().hex[:6]}"
    result = run_local(bucket=aws.bucket, model_package_group=aws.group, model_name=name, namespace="ml-prod",
                       hyperparameters=FAST, git_sha=GIT_SHA, workdir=tmp_path, progress=progress.append,
                       manifest_dir=tmp_path / "gitops", parameters={"neuron_target": "inf2"})
    assert "> neuron-compile" in progress
    assert any("not compiled" in p for p in progress)
    assert result.gate_passed and result.model_package_arn
    package = describe_package(aws.sm, result.model_package_arn)
    assert package.metadata[provenance.KEYS["compiled"]] == "false"  # the fact, in the registry
    assert package.metadata["kanari:serving-accelerator"] == "cpu"
    assert package.storage_uri == result.model_uri  # the trained model, as it was
    # No compile job was started (it would be named <model_name>-neuron-...), only the training job.
    assert aws.sm.list_training_jobs(NameContains=f"{name}-neuron")["TrainingJobSummaries"] == []
    assert aws.sm.list_training_jobs(NameContains=name)["TrainingJobSummaries"][0]["TrainingJobName"] == (
        result.training_job_name)

    # The ModelDeployment the pipeline wrote serves it on CPU, and the controller agrees.
    emitted = yaml.safe_load(Path(result.manifest_path or "").read_text())
    assert emitted["spec"]["serving"]["accelerator"] == "cpu"
    config = OperatorConfig()
    spec = {**emitted["spec"], "model": {**emitted["spec"]["model"], "requireApproval": False}}
    served = reconcile(body(spec), ClusterObservation(now=T0, package=package), config)
    assert not [c for c in served.status.conditions if c.type == "InvalidSpec" and c.status == "True"]
    assert served.isvc is not None
    # Asked to serve it on Inferentia2, the controller refuses before any traffic moves, naming the field.
    neuron_spec = {**spec, "model": {**spec["model"], "format": "pytorch-neuronx"},
                   "serving": {"accelerator": "inferentia2", "neuronCores": 2}}
    refused = reconcile(body(neuron_spec), ClusterObservation(now=T0, package=package, neuron_runtime_sdk="2.20.0"),
                        config)
    invalid = cond(refused.status, "InvalidSpec")
    assert invalid["status"] == "True" and invalid["message"].startswith("spec.model.modelPackageArn:")
    assert "not compiled for Neuron" in invalid["message"] and refused.isvc is None


@pytest.mark.timeout(120)
def test_a_compile_target_kanari_cannot_serve_stops_the_first_step(aws: Any, tmp_path: Path) -> None:
    with pytest.raises(PipelineRunError) as err:
        run_local(bucket=aws.bucket, model_package_group=aws.group, git_sha=GIT_SHA, workdir=tmp_path,
                  parameters={"neuron_target": "trn1"})
    assert err.value.step == "validate-data" and err.value.parameter == "neuron_target"
    assert aws.object_keys() == []  # nothing written, nothing trained


@pytest.mark.parametrize(("param", "words"), [
    ("neuron_target=trn1", "--neuron-target: 'trn1'"),
    ("neuron_batch_size=many", "--neuron-batch-size: 'many' is not an integer"),
    ("neuron_compile_image=mine:latest", "--neuron-compile-image: 'mine:latest': its tag names no Neuron SDK"),
])
def test_submit_refuses_bad_compile_parameters_before_contacting_kfp(param: str, words: str,
                                                                      capsys: pytest.CaptureFixture[str]) -> None:
    from kanari.cli.main import main

    code = main(["pipeline", "submit", "--host", "http://127.0.0.1:9", "--bucket", "b", "--model-package-group", "g",
                 "--role-arn", ROLE, "--git-sha", "abc", "--image", "r.example/kanari-pipelines:1",
                 "--param", "neuron_target=inf2", "--param", param])
    assert code == 2 and words in capsys.readouterr().err


IMAGE = "763104351884.dkr.ecr.us-east-1.amazonaws.com/pytorch-training-neuronx:2.1.2-neuronx-py310-sdk2.20.0-ubuntu20.04"
_ANY = st.one_of(st.none(), st.booleans(), st.integers(-3, 300), st.text(max_size=30), st.floats(allow_nan=True))


GOOD_RECORD = {"compiled": True, "target": "inf2", "batch_size": 4, "tp_degree": 1, "compiler_version": "2.15.128.0",
               "input_shapes": "features=4x30"}


@given(st.sets(st.sampled_from(sorted(GOOD_RECORD))), st.sets(st.sampled_from(sorted(GOOD_RECORD))),
       st.dictionaries(st.sampled_from(sorted(GOOD_RECORD)), _ANY), st.integers(1, 64))
def test_whatever_a_compile_job_reports_the_registry_gets_a_valid_record_of_the_request_or_nothing(
    dropped: set[str], changed: set[str], values: dict[str, Any], tp_degree: int,
) -> None:
    """Hostile or broken metrics.json: the step fails, or the record says what was asked for and reads back the same
    in the controller (never a record the controller would refuse, never compiled=true for another target/batch)."""
    from kfp_pipelines import registry
    from kfp_pipelines.errors import StepFailed

    record = {**GOOD_RECORD, "tp_degree": tp_degree}
    record.update({k: v for k, v in values.items() if k in changed})
    record = {k: v for k, v in record.items() if k not in dropped}
    try:
        build = neuron.build_from_record(record, job="j", neuron_target="inf2", batch_size=4, image_uri=IMAGE)
    except StepFailed:
        return
    assert build.compiled and build.target == "inf2" and build.batch_size == 4 and build.sdk_version == "2.20.0"
    assert NeuronBuild.from_metadata(build.properties()) == build
    for key, value in build.properties().items():
        registry.check_metadata_value(key, value)


def test_a_record_for_another_batch_or_target_is_refused() -> None:
    from kfp_pipelines.errors import StepFailed

    good = GOOD_RECORD
    assert neuron.build_from_record(good, job="j", neuron_target="inf2", batch_size=4, image_uri=IMAGE).tp_degree == 1
    for change in ({"batch_size": 1}, {"target": "trn1"}, {"compiled": "true"}, {"tp_degree": "1"},
                   {"input_shapes": "features=(4, 30)"}):
        with pytest.raises(StepFailed):
            neuron.build_from_record({**good, **change}, job="j", neuron_target="inf2", batch_size=4, image_uri=IMAGE)


@pytest.mark.parametrize(("param", "words"), [
    ("neuron_target=trn1", "--neuron-target: 'trn1'"),
    ("training_backend=sagemaker", "a local run trains with the local backend"),
])
def test_a_local_run_refuses_bad_parameters_before_running_anything(param: str, words: str, tmp_path: Path,
                                                                    capsys: pytest.CaptureFixture[str]) -> None:
    from kanari.cli.main import main

    code = main(["pipeline", "run", "--local", "--bucket", "b", "--model-package-group", "g", "--git-sha", GIT_SHA,
                 "--workdir", str(tmp_path), "--param", param])
    assert code == 2 and words in capsys.readouterr().err
    assert not (tmp_path / "logs").exists() or not list((tmp_path / "logs").iterdir())  # nothing ran
