"""Compiled-artifact provenance for Neuron models: what it was built for, checked before traffic moves.

A Neuron model is compiled ahead of time (torch-neuronx trace, neuronx-distributed, optimum-neuron): the
compiled graph (NEFF) is tied to a Neuron SDK release, a target chip family (inf2 or trn1), a
tensor-parallel degree (how many NeuronCores one copy of the model spans) and fixed input shapes and batch
size. The pipeline records these in the model package's CustomerMetadataProperties (NeuronBuild.properties);
the controller reads them back and compares them with the ServingRuntime's Neuron SDK (its annotation
kanari.dev/neuron-sdk) and the NeuronCores the spec requests. A mismatch is InvalidSpec naming the field,
and the stable version keeps serving.

Compatibility rule: the same Neuron SDK major.minor (a NEFF compiled by one release is not guaranteed to load
on the runtime of another; patch releases keep it).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from kanari.api.v1alpha1 import ModelDeploymentSpec, SpecError
from kanari.capacity.spec import replica_cores

PREFIX = "kanari:neuron."
KEYS = {
    "compiled": f"{PREFIX}compiled",
    "sdk_version": f"{PREFIX}sdk-version",
    "compiler_version": f"{PREFIX}compiler-version",
    "target": f"{PREFIX}target",
    "tp_degree": f"{PREFIX}tp-degree",
    "batch_size": f"{PREFIX}batch-size",
    "input_shapes": f"{PREFIX}input-shapes",
}
RUNTIME_SDK_ANNOTATION = "kanari.dev/neuron-sdk"
ARN_FIELD = "spec.model.modelPackageArn"
_VERSION = re.compile(r"^(\d+)\.(\d+)(\.\d+)*$")
_SHAPES = re.compile(r"^([A-Za-z_][\w.]*=\d+(x\d+)*)( [A-Za-z_][\w.]*=\d+(x\d+)*)*$")
Target = Literal["inf2", "trn1"]
ACCELERATOR_TARGET: dict[str, Target] = {"inferentia2": "inf2"}


@dataclass(frozen=True)
class NeuronBuild:
    compiled: bool
    sdk_version: str | None = None
    compiler_version: str | None = None
    target: Target | None = None
    tp_degree: int | None = None
    batch_size: int | None = None
    input_shapes: str | None = None  # "input_ids=1x128 attention_mask=1x128"

    def properties(self) -> dict[str, str]:
        """CustomerMetadataProperties values (SageMaker's pattern: no commas, brackets or quotes)."""
        out = {KEYS["compiled"]: "true" if self.compiled else "false"}
        for attr in ("sdk_version", "compiler_version", "target", "tp_degree", "batch_size", "input_shapes"):
            value = getattr(self, attr)
            if value is not None:
                out[KEYS[attr]] = str(value)
        return out

    @classmethod
    def from_metadata(cls, metadata: Mapping[str, str]) -> NeuronBuild | None:
        """The build record of a package; None when it has none. Raises SpecError on a malformed record."""
        if not any(k.startswith(PREFIX) for k in metadata):
            return None

        def bad(attr: str, why: str) -> SpecError:
            return SpecError(ARN_FIELD, f"the package's {KEYS[attr]} {why}")

        compiled_raw = metadata.get(KEYS["compiled"], "true").strip().lower()
        if compiled_raw not in ("true", "false"):
            raise bad("compiled", f"is {compiled_raw!r}, not true or false")
        ints: dict[str, int | None] = {}
        for attr in ("tp_degree", "batch_size"):
            raw = metadata.get(KEYS[attr])
            if raw is None:
                ints[attr] = None
            # ASCII digits only: str.isdigit() also accepts '¹', on which int() raises (a traceback, not InvalidSpec).
            elif not re.fullmatch(r"[0-9]+", raw.strip()) or int(raw) < 1:
                raise bad(attr, f"is {raw!r}, not a positive integer")
            else:
                ints[attr] = int(raw)
        target = metadata.get(KEYS["target"])
        if target is not None and target not in ("inf2", "trn1"):
            raise bad("target", f"is {target!r}, not inf2 or trn1")
        for attr in ("sdk_version", "compiler_version"):
            raw = metadata.get(KEYS[attr])
            if raw is not None and not _VERSION.match(raw):
                raise bad(attr, f"is {raw!r}, not a version like 2.20.0")
        shapes = metadata.get(KEYS["input_shapes"])
        if shapes is not None and not _SHAPES.match(shapes):
            raise bad("input_shapes", f"is {shapes!r}, not 'name=1x128 other=1x128'")
        return cls(
            compiled=compiled_raw == "true",
            sdk_version=metadata.get(KEYS["sdk_version"]),
            compiler_version=metadata.get(KEYS["compiler_version"]),
            target=target,  # type: ignore[arg-type]
            tp_degree=ints["tp_degree"],
            batch_size=ints["batch_size"],
            input_shapes=shapes,
        )


def _major_minor(version: str) -> tuple[int, int] | None:
    m = _VERSION.match(version.strip())
    return (int(m.group(1)), int(m.group(2))) if m else None


def check(
    build: NeuronBuild | None, spec: ModelDeploymentSpec, runtime: str, runtime_sdk: str | None
) -> SpecError | None:
    """Why this compiled model cannot be served as the spec asks, naming the field to change; None when it can."""
    serving = spec.serving
    if build is None or serving.accelerator not in ACCELERATOR_TARGET:
        return None
    if not build.compiled:
        return SpecError(ARN_FIELD, f"the package was not compiled for Neuron ({KEYS['compiled']}=false); "
                                    "run the pipeline's compile step on the target family")
    want = ACCELERATOR_TARGET[serving.accelerator]
    if build.target is not None and build.target != want:
        return SpecError("spec.serving.accelerator", f"the model was compiled for {build.target} "
                                                     f"({KEYS['target']}), not {want} ({serving.accelerator})")
    cores = replica_cores(serving)
    if build.tp_degree is not None and (cores < build.tp_degree or cores % build.tp_degree):
        field = "spec.serving.neuronDevices" if serving.neuronDevices else "spec.serving.neuronCores"
        return SpecError(field, f"the model was compiled for tensor-parallel degree {build.tp_degree} "
                                f"({KEYS['tp_degree']}): a replica needs a multiple of {build.tp_degree} NeuronCores, "
                                f"not {cores}")
    if build.sdk_version is not None:
        if runtime_sdk is None:
            return SpecError("spec.model.runtime", f"ServingRuntime {runtime} declares no Neuron SDK (annotation "
                                                   f"{RUNTIME_SDK_ANNOTATION}), so the model's Neuron SDK "
                                                   f"{build.sdk_version} cannot be checked against it")
        have, built = _major_minor(runtime_sdk), _major_minor(build.sdk_version)
        if have is None:
            return SpecError("spec.model.runtime", f"ServingRuntime {runtime}'s {RUNTIME_SDK_ANNOTATION} "
                                                   f"{runtime_sdk!r} is not a version like 2.20.0")
        if have != built:
            wanted = f"{built[0]}.{built[1]}.x" if built else build.sdk_version
            return SpecError("spec.model.runtime", f"the model was compiled with Neuron SDK {build.sdk_version} "
                                                   f"({KEYS['sdk_version']}) but ServingRuntime {runtime} runs "
                                                   f"Neuron SDK {runtime_sdk}; use a runtime of SDK {wanted} "
                                                   "or recompile")
    return None
