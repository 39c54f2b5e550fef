"""Which KServe ServingRuntime and modelFormat serve a model on a given accelerator."""

from __future__ import annotations

from dataclasses import dataclass

from kanari.api.v1alpha1 import ModelDeploymentSpec, SpecError

# Runtimes that ship with KServe (ClusterServingRuntimes) and the one Kanari ships for Neuron.
KSERVE_RUNTIMES = {
    "pytorch": "kserve-torchserve",
    "huggingface": "kserve-huggingfaceserver",
    "sklearn": "kserve-sklearnserver",
    "xgboost": "kserve-xgbserver",
    "lightgbm": "kserve-lgbserver",
    "onnx": "kserve-tritonserver",
    "tensorflow": "kserve-tensorflow-serving",
}
NEURON_FORMATS = ("pytorch-neuronx", "huggingface-neuronx")
# Formats a Neuron runtime can serve after compilation; anything else cannot run on Inferentia.
CPU_ONLY = ("sklearn", "xgboost", "lightgbm")


@dataclass(frozen=True)
class RuntimeChoice:
    runtime: str
    model_format: str


def choose_runtime(spec: ModelDeploymentSpec, neuron_runtime: str) -> RuntimeChoice:
    """Pick the runtime, or raise SpecError naming the field that makes the model unservable.

    An explicit spec.model.runtime is passed to KServe as written: the operator does not list ServingRuntimes
    (that needs cluster-wide read rights for a check KServe makes anyway). A name KServe does not know shows
    as the InferenceService not becoming Ready, in the Ready condition, with KServe's own message.
    """
    fmt = spec.model.format
    acc = spec.serving.accelerator
    if acc == "inferentia2" and fmt not in NEURON_FORMATS:
        raise SpecError(
            "spec.model.format",
            f"{fmt} cannot run on accelerator inferentia2; compile it with torch-neuronx "
            f"(format pytorch-neuronx) or choose accelerator cpu/gpu",
        )
    if acc != "inferentia2" and fmt in NEURON_FORMATS:
        raise SpecError("spec.model.format", f"{fmt} needs accelerator inferentia2, not {acc}")
    if acc == "gpu" and fmt in CPU_ONLY:
        raise SpecError("spec.model.format", f"{fmt} has no GPU runtime; use accelerator cpu")
    default = neuron_runtime if fmt in NEURON_FORMATS else KSERVE_RUNTIMES[fmt]
    return RuntimeChoice(runtime=spec.model.runtime or default, model_format=fmt)
