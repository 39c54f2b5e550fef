"""Neuron instance types: devices, NeuronCores, and their on-demand price.

Sources (AWS Neuron documentation, "Inferentia2 Architecture" and "Trainium Architecture"): every
Inferentia2 and Trainium device has 2 NeuronCore-v2; inf2.xlarge and inf2.8xlarge hold 1 device,
inf2.24xlarge 6, inf2.48xlarge 12; trn1.2xlarge 1 device, trn1.32xlarge and trn1n.32xlarge 16.
The Neuron device plugin advertises both `aws.amazon.com/neuron` (devices) and
`aws.amazon.com/neuroncore` (cores); a pod asks for one of them.

Prices: EC2 on-demand Linux, us-east-1, USD per instance-hour, as published when this table was written.
They are defaults only: the operator's price table (KANARI_NEURON_PRICES) overrides any of them, because
real bills carry Savings Plans, Reserved Instances and other regions.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass

NEURON_DEVICE = "aws.amazon.com/neuron"
NEURON_CORE = "aws.amazon.com/neuroncore"
CORES_PER_DEVICE = 2  # NeuronCore-v2 per Inferentia2 / Trainium device


@dataclass(frozen=True)
class InstanceTopology:
    instance_type: str
    family: str  # inf2 | trn1 | trn1n
    devices: int
    vcpu: int
    memory_gib: int
    on_demand_usd_hour: float

    @property
    def cores(self) -> int:
        return self.devices * CORES_PER_DEVICE


INSTANCES: dict[str, InstanceTopology] = {
    t.instance_type: t
    for t in (
        InstanceTopology("inf2.xlarge", "inf2", 1, 4, 16, 0.7582),
        InstanceTopology("inf2.8xlarge", "inf2", 1, 32, 128, 1.9679),
        InstanceTopology("inf2.24xlarge", "inf2", 6, 96, 384, 6.4906),
        InstanceTopology("inf2.48xlarge", "inf2", 12, 192, 768, 12.9813),
        InstanceTopology("trn1.2xlarge", "trn1", 1, 8, 32, 1.3438),
        InstanceTopology("trn1.32xlarge", "trn1", 16, 128, 512, 21.50),
        InstanceTopology("trn1n.32xlarge", "trn1n", 16, 128, 512, 24.78),
    )
}


class PriceTableError(ValueError):
    """A bad price table; the message names the entry."""


def price_table(overrides: Mapping[str, float] | None = None) -> dict[str, float]:
    """USD per instance-hour by instance type: the defaults above, overridden entry by entry."""
    table = {k: v.on_demand_usd_hour for k, v in INSTANCES.items()}
    for key, value in (overrides or {}).items():
        if not isinstance(value, int | float) or isinstance(value, bool) or not math.isfinite(value) or value < 0:
            raise PriceTableError(f"{key}: price must be a non-negative number of USD per hour, got {value!r}")
        table[key] = float(value)
    return table


def parse_price_table(raw: str | None) -> dict[str, float]:
    """KANARI_NEURON_PRICES: a JSON object {"inf2.xlarge": 0.65, ...}; empty means the defaults."""
    if not raw or not raw.strip():
        return price_table()
    try:
        data = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise PriceTableError(f"KANARI_NEURON_PRICES: not JSON ({exc.msg})") from None
    if not isinstance(data, dict):
        raise PriceTableError("KANARI_NEURON_PRICES: expected an object of instance type -> USD per hour")
    return price_table({str(k): v for k, v in data.items()})


def core_price_per_second(instance_type: str, prices: Mapping[str, float]) -> float | None:
    """What one NeuronCore-second costs on `instance_type`: the whole instance's price over its cores."""
    topo = INSTANCES.get(instance_type)
    price = prices.get(instance_type)
    if topo is None or price is None:
        return None
    return price / 3600.0 / topo.cores
