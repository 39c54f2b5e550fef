"""The reference predictor: KServe's own model server (kserve.ModelServer) serving a Kanari-trained model.

`python -m devstack.predictor --model_name NAME --model_dir DIR --http_port PORT` is what a
ServingRuntime container runs; DIR is what KServe's storage initializer unpacked from the storageUri
(the training job's model.tar.gz: model.pt from kfp_pipelines.training.mlp).

A model directory may also hold `fault-injection.json` ({"errorRate": 0.4, "latencySeconds": 0.3}):
a *fault-injection model*, built on purpose to show what a bad release looks like (the demo's broken
version). The server then fails that fraction of requests with a 500 and adds that latency. It is part of
the artifact, recorded in the model's registry metadata, and logged at start-up: nothing hides it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from kserve import Model, ModelServer, model_server
from kserve.errors import InferenceError, InvalidInput

FAULT_FILE = "fault-injection.json"
MODEL_FILE = "model.pt"

log = logging.getLogger("devstack.predictor")


@dataclass(frozen=True)
class FaultInjection:
    error_rate: float = 0.0
    latency_seconds: float = 0.0
    # Share of the positives the model would catch that it answers negative instead: as fast and as reliable,
    # but worse (the quality demo's model: only delayed labels can tell).
    miss_rate: float = 0.0

    @classmethod
    def read(cls, model_dir: Path) -> FaultInjection | None:
        path = model_dir / FAULT_FILE
        if not path.exists():
            return None
        doc = json.loads(path.read_text())
        fault = cls(float(doc.get("errorRate", 0.0)), float(doc.get("latencySeconds", 0.0)),
                    float(doc.get("missRate", 0.0)))
        if not 0.0 <= fault.error_rate <= 1.0 or fault.latency_seconds < 0 or not 0.0 <= fault.miss_rate <= 1.0:
            raise ValueError(f"{path}: errorRate must be in [0, 1], missRate in [0, 1] and latencySeconds >= 0, "
                             f"got {doc}")
        return fault

    def to_json(self) -> dict[str, float]:
        out = {"errorRate": self.error_rate, "latencySeconds": self.latency_seconds}
        if self.miss_rate:
            out["missRate"] = self.miss_rate
        return out


def find_model_file(model_dir: Path) -> Path:
    found = sorted(model_dir.rglob(MODEL_FILE))
    if not found:
        raise FileNotFoundError(f"no {MODEL_FILE} under {model_dir}")
    return found[0]


class TabularModel(Model):
    """Classifies rows of named features (V1 `instances` as objects) or positional rows in training order."""

    def __init__(self, name: str, model_dir: Path, seed: int | None = None):
        super().__init__(name)
        self.model_dir = model_dir
        self.fault: FaultInjection | None = None
        self._rng = random.Random(seed)
        self._net: Any = None
        self.features: list[str] = []
        self.threshold = 0.5

    def load(self) -> bool:
        from kfp_pipelines.training.mlp import load

        self._net, meta = load(find_model_file(self.model_dir))
        self.features = list(meta["feature_names"])
        self.threshold = float(meta.get("threshold", 0.5))
        self.fault = FaultInjection.read(self.model_dir)
        if self.fault:
            log.warning("fault-injection model: %s", self.fault.to_json())
        self.ready = True
        return self.ready

    def _matrix(self, instances: Any) -> np.ndarray:
        if not isinstance(instances, list) or not instances:
            raise InvalidInput("instances: expected a non-empty list of rows")
        if all(isinstance(r, dict) for r in instances):
            missing = sorted({f for r in instances for f in self.features if f not in r})
            if missing:
                raise InvalidInput(f"instances: missing features {', '.join(missing)}")
            rows = [[r[f] for f in self.features] for r in instances]
        else:
            rows = instances
            if any(not isinstance(r, list) or len(r) != len(self.features) for r in rows):
                raise InvalidInput(f"instances: each row needs {len(self.features)} values ({', '.join(self.features)})")
        try:
            return np.asarray(rows, dtype=np.float32)
        except (TypeError, ValueError):
            raise InvalidInput("instances: feature values must be numbers") from None

    async def predict(self, payload: dict[str, Any], headers: dict[str, str] | None = None) -> dict[str, Any]:
        from kfp_pipelines.training.mlp import predict_proba

        x = self._matrix(payload.get("instances") if isinstance(payload, dict) else None)
        if self.fault:
            if self.fault.latency_seconds:
                await asyncio.sleep(self.fault.latency_seconds)
            if self._rng.random() < self.fault.error_rate:
                raise InferenceError("fault-injection model: injected failure")
        # The decision at the threshold tuned in training, as a KServe sklearn predictor answers predict():
        # comparable with the training labels, which is what prediction drift is measured against.
        scores = predict_proba(self._net, x)
        predictions = [int(s >= self.threshold) for s in scores]
        if self.fault and self.fault.miss_rate:
            predictions = [0 if p and self._rng.random() < self.fault.miss_rate else p for p in predictions]
        return {"predictions": predictions}


def main() -> None:
    parser = argparse.ArgumentParser(parents=[model_server.parser])
    parser.add_argument("--model_dir", required=True, help="the unpacked model artifact")
    args, _ = parser.parse_known_args()
    model = TabularModel(args.model_name, Path(args.model_dir))
    model.load()
    ModelServer(http_port=args.http_port, enable_grpc=False, workers=1).start([model])


if __name__ == "__main__":
    main()
