"""The pipeline's optional Neuron compile step: compile the model that passed the gate for a Neuron target, as a
SageMaker job on Trainium, and say how it was built (kanari.capacity.provenance.NeuronBuild) for the registry.

Off unless the run names a target (`neuron_target`): the reference model serves on CPU, and a compile job bills a
Trainium instance. With `neuron_target: inf2` the trained model is traced with torch-neuronx (neuronx-cc
`--target inf2`) by kfp_pipelines/training/compile.py in the PyTorch Neuron training DLC, as a SageMaker training
job: the only SageMaker job kind offered on Neuron instances, and on Trainium only (botocore's service model lists
ml.trn1/ml.trn2 among TrainingInstanceType and no Neuron type among ProcessingInstanceType). Inf2 and Trn1 share
the NeuronCore-v2 architecture, so neuronx-cc compiles for inf2 on trn1. The job reuses the training step's
machinery (sagemaker.training.run_training): deterministic names (a restarted step re-attaches), the run's tags (the
exit handler stops it), its log lines in the step's log, the sagemaker or ack backend.

Run locally (training_backend local: no Neuron compiler on this machine) nothing is compiled, and the registry says
so (kanari:neuron.compiled=false): the package is registered for CPU, and the controller refuses it on inferentia2.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kanari.api.v1alpha1 import SpecError
from kanari.capacity.provenance import NeuronBuild

from kfp_pipelines import aws, registry
from kfp_pipelines.errors import InputError, StepFailed
from kfp_pipelines.sagemaker.config import TRAINIUM_INSTANCE_TYPES, dlc_image, parse_config
from kfp_pipelines.sagemaker.training import default_source_dir, run_training
from kfp_pipelines.sagemaker.waiter import Backoff

log = logging.getLogger("kanari.pipeline")

# Neuron target -> the serving accelerator a model compiled for it is registered for. Kanari serves Neuron models
# on Inferentia2 (spec.serving.accelerator inferentia2); a trn1 build could not be deployed by it.
TARGETS = {"inf2": "inferentia2"}
ENTRY_POINT = "compile.py"
# The compile image's Neuron SDK must be the serving runtime's (manifests/serving: kanari-neuron runs SDK 2.20.0):
# the controller refuses a NEFF built by another major.minor.
IMAGE_REPOSITORY = "pytorch-training-neuronx"
IMAGE_TAG = "2.1.2-neuronx-py310-sdk2.20.0-ubuntu20.04"
_SDK_IN_TAG = re.compile(r"sdk(\d+\.\d+\.\d+)")
MAX_BATCH = 1024
# Model metadata keys (the compile step's output artifact), read by the register and deploy steps.
BUILD_KEY = "neuron_build"


def default_image(region: str) -> str:
    return dlc_image(region, IMAGE_REPOSITORY, IMAGE_TAG)


def sdk_version(image_uri: str) -> str:
    """The Neuron SDK release of a Neuron DLC image, from its tag (…-neuronx-py310-sdk2.20.0-ubuntu20.04)."""
    tag = image_uri.rsplit(":", 1)[-1] if ":" in image_uri.rsplit("/", 1)[-1] else ""
    m = _SDK_IN_TAG.search(tag)
    if not m:
        raise InputError("neuron_compile_image", f"{image_uri!r}: its tag names no Neuron SDK release (a Neuron DLC "
                                                 "tag reads like 2.1.2-neuronx-py310-sdk2.20.0-ubuntu20.04); the "
                                                 "registry must record the SDK the model was compiled with")
    return m.group(1)


def check_parameters(neuron_target: str, instance_type: str, batch_size: int, image_uri: str = "") -> None:
    """The compile parameters, checked by the first step of the run (before training is billed)."""
    if not neuron_target:
        return
    if neuron_target not in TARGETS:
        why = ("Kanari serves Neuron models on Inferentia2 (spec.serving.accelerator inferentia2); a model compiled "
               "for trn1 could not be deployed by it" if neuron_target == "trn1" else "")
        raise InputError("neuron_target", f"{neuron_target!r} is not one of '' (no compile step), "
                                          f"{', '.join(TARGETS)}" + (f": {why}" if why else ""))
    if instance_type not in TRAINIUM_INSTANCE_TYPES:
        raise InputError("neuron_compile_instance_type",
                         f"{instance_type!r}: SageMaker runs jobs on Neuron instances only on Trainium "
                         f"({', '.join(TRAINIUM_INSTANCE_TYPES)})")
    if not 1 <= batch_size <= MAX_BATCH:
        raise InputError("neuron_batch_size", f"{batch_size} is not between 1 and {MAX_BATCH}")
    if image_uri:
        sdk_version(image_uri)


@dataclass(frozen=True)
class CompileResult:
    model_uri: str
    build: NeuronBuild | None  # None: no compile step was asked for
    job_name: str = ""
    job_arn: str = ""
    reason: str = ""

    def metadata(self) -> dict[str, Any]:
        """What the compile step adds to the model artifact's metadata (KFP metadata: JSON values)."""
        out: dict[str, Any] = {"neuron_compile_reason": self.reason}
        if self.build is not None:
            out[BUILD_KEY] = self.build.properties()
        if self.job_arn:
            out.update(neuron_compile_job_name=self.job_name, neuron_compile_job_arn=self.job_arn)
        return out


def build_of(model_metadata: dict[str, Any]) -> NeuronBuild | None:
    """The build record the compile step put on the model artifact (None: no compile step ran)."""
    raw = model_metadata.get(BUILD_KEY)
    if not raw:
        return None
    try:
        return NeuronBuild.from_metadata({str(k): str(v) for k, v in dict(raw).items()})
    except SpecError as exc:
        raise StepFailed(f"the compile step's build record is malformed: {exc.message}") from None


def serving_accelerator(build: NeuronBuild | None) -> str:
    """What the registered version is served on: the compiled target's accelerator, else CPU (the trained model)."""
    if build is not None and build.compiled and build.target in TARGETS:
        return TARGETS[build.target]
    return "cpu"


def build_from_record(record: dict[str, Any], *, job: str, neuron_target: str, batch_size: int,
                      image_uri: str) -> NeuronBuild:
    """The build record a compile job reported (its metrics.json), checked against what was asked for; StepFailed when
    it is missing, contradicts the request or holds a value the registry or the controller would refuse."""
    if record.get("compiled") is not True or record.get("target") != neuron_target or (
            record.get("batch_size") != batch_size):
        raise StepFailed(f"compile job {job} completed without a build record for {neuron_target}, batch size "
                         f"{batch_size} (its metrics.json: {str(record)[:300] or 'none'}); nothing is registered as "
                         "compiled")
    fields = {attr: record.get(attr) for attr in ("compiler_version", "tp_degree", "input_shapes")}
    if not isinstance(fields["tp_degree"], int) or isinstance(fields["tp_degree"], bool):
        raise StepFailed(f"compile job {job} reported tp_degree {fields['tp_degree']!r}, not an integer")
    build = NeuronBuild(compiled=True, sdk_version=sdk_version(image_uri), target=neuron_target,  # type: ignore[arg-type]
                        batch_size=batch_size, compiler_version=str(fields["compiler_version"] or "") or None,
                        tp_degree=fields["tp_degree"], input_shapes=str(fields["input_shapes"] or "") or None)
    try:
        # The controller reads the record back with the same parser: a value it would refuse fails here, not there;
        # and SageMaker's own pattern for metadata values (registry.check_metadata_value) holds for each.
        parsed = NeuronBuild.from_metadata(build.properties())
        for key, value in build.properties().items():
            registry.check_metadata_value(key, value)
    except (SpecError, InputError) as exc:
        raise StepFailed(f"compile job {job} reported a build the registry cannot hold: {exc}") from None
    if parsed != build:
        raise StepFailed(f"compile job {job} reported a build that does not read back as written: {build}")
    return build


def compile_model(
    *, model_uri: str, neuron_target: str, training_backend: str, role_arn: str, run_id: str, task: str,
    base_job_name: str, instance_type: str, image_uri: str, batch_size: int, max_runtime_seconds: int,
    ack_namespace: str = "", backoff: Backoff | None = None, workdir: Path | None = None,
) -> CompileResult:
    if not neuron_target:
        log.info("no neuron_target: nothing compiled; the model is registered as trained (CPU)")
        return CompileResult(model_uri, None, reason="no neuron_target")
    image = image_uri or default_image(aws.session().region_name or "")
    check_parameters(neuron_target, instance_type, batch_size, image)
    if training_backend == "local":
        # No neuronx-cc here. The registry records the fact, and the package is served on CPU.
        reason = "run locally (training_backend local): no Neuron compiler here, the model was not compiled"
        log.info("%s; recorded as kanari:neuron.compiled=false", reason)
        return CompileResult(model_uri, NeuronBuild(compiled=False), reason=reason)
    model = aws.S3Uri.parse(model_uri, "model")
    if not model.key.endswith("/model.tar.gz"):
        raise StepFailed(f"{model_uri} is not a SageMaker model artifact (<prefix>/model.tar.gz)")
    cfg = parse_config(
        purpose="compile",
        # The training job's output prefix (SageMaker's S3Prefix channels take a prefix); compile.py reads model.tar.gz.
        channels={"model": f"s3://{model.bucket}/{model.key.rsplit('/', 1)[0]}/"},
        output_s3_uri=str(aws.S3Uri(model.bucket, model.key.rsplit("/", 3)[0]).join("neuron")),
        role_arn=role_arn,
        image_uri=image,
        instance_type=instance_type,
        max_runtime_seconds=max_runtime_seconds,
        hyperparameters={"neuron_target": neuron_target, "batch_size": batch_size},
        entry_point=ENTRY_POINT,
    )
    result = run_training(cfg, backend=training_backend, run_id=run_id, task=task, base_job_name=base_job_name,
                          source_dir=default_source_dir(), ack_namespace=ack_namespace, backoff=backoff,
                          workdir=workdir)
    build = build_from_record(result.metrics, job=result.job_name, neuron_target=neuron_target, batch_size=batch_size,
                              image_uri=image)
    log.info("compiled %s for %s (Neuron SDK %s, neuronx-cc %s, %s): %s", model_uri, neuron_target, build.sdk_version,
             build.compiler_version, build.input_shapes, result.model_uri)
    return CompileResult(result.model_uri, build, result.job_name, result.job_arn, f"compiled by {result.job_name}")
