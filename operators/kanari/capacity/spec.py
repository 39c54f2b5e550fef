"""What a ModelDeployment's replica asks of the cluster: NeuronCores, and where it may land."""

from __future__ import annotations

from kanari.api.v1alpha1 import ServingSpec, SpecError
from kanari.capacity.cluster import INSTANCE_TYPE
from kanari.capacity.topology import CORES_PER_DEVICE, INSTANCES


def replica_cores(serving: ServingSpec) -> int:
    """NeuronCores one replica holds (0 off Inferentia). Mirrors the requests the InferenceService sets."""
    if serving.accelerator != "inferentia2":
        return 0
    if serving.neuronDevices:
        return serving.neuronDevices * CORES_PER_DEVICE
    return serving.neuronCores or 1


def node_selector(serving: ServingSpec, family_key: str) -> dict[str, str]:
    """The predictor pods' nodeSelector (kept equal to kanari.controller.inferenceservice's, by a test)."""
    selector = dict(serving.nodeSelector)
    if serving.accelerator == "inferentia2":
        if serving.instanceType:
            selector[INSTANCE_TYPE] = serving.instanceType
        else:
            selector[family_key] = "inf2"
    elif serving.instanceType:
        selector[INSTANCE_TYPE] = serving.instanceType
    return selector


def check_fits_instance(serving: ServingSpec) -> None:
    """A replica larger than its instance type can never be scheduled: refuse it before anything moves."""
    cores = replica_cores(serving)
    topo = INSTANCES.get(serving.instanceType or "")
    if cores and topo is not None and cores > topo.cores:
        field = "neuronDevices" if serving.neuronDevices else "neuronCores"
        raise SpecError(
            f"spec.serving.{field}",
            f"a replica needs {cores} NeuronCores but {topo.instance_type} has {topo.cores} "
            f"({topo.devices} device(s) x {CORES_PER_DEVICE})",
        )
