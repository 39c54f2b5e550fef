"""Kanari's reference Neuron compile script: trace the trained model with torch-neuronx for a Neuron target.

Runs as a SageMaker training job on the PyTorch Neuron DLC (pytorch-training-neuronx, which ships torch-neuronx and
the neuronx-cc compiler) under the training-container contract:
  inputs   SM_CHANNEL_MODEL: the training job's output prefix, holding its model.tar.gz (model.pt, the format of
           kfp_pipelines.training.mlp)
  params   SM_HPS: neuron_target (inf2 or trn1: neuronx-cc --target), batch_size
  outputs  SM_MODEL_DIR: model_neuron.pt (the traced TorchScript module holding the compiled NEFF), model.pt
           (feature names and threshold), neuron-build.json; SM_OUTPUT_DATA_DIR/metrics.json (the same record);
           SM_OUTPUT_DIR/failure on error
The record says what the artifact was built for: compiler version, target, tensor-parallel degree (1: a trace
runs on one NeuronCore), batch size and input shapes, read back by the pipeline into the model registry.
Without torch-neuronx the job fails: a model is never called compiled that was not.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tarfile
import traceback
from pathlib import Path
from typing import Any

import torch
from mlp import MODEL_FILE, load

COMPILED_FILE = "model_neuron.pt"
BUILD_FILE = "neuron-build.json"
TARGETS = ("inf2", "trn1")
INPUT_NAME = "features"


def hyperparameters() -> dict[str, Any]:
    raw = json.loads(os.environ.get("SM_HPS") or "{}")
    unknown = sorted(set(raw) - {"neuron_target", "batch_size"})
    if unknown:
        raise ValueError(f"hyperparameters: unknown {', '.join(unknown)} (known: neuron_target, batch_size)")
    target = raw.get("neuron_target")
    if target not in TARGETS:
        raise ValueError(f"hyperparameters: neuron_target {target!r} is not one of {', '.join(TARGETS)}")
    batch = raw.get("batch_size", 1)
    if not isinstance(batch, int) or batch < 1:
        raise ValueError(f"hyperparameters: batch_size {batch!r} is not a positive integer")
    return {"neuron_target": target, "batch_size": batch}


def unpack_model(channel: Path, dest: Path) -> Path:
    archive = channel / "model.tar.gz"
    if not archive.is_file():
        raise ValueError(f"channel model: no model.tar.gz (found {', '.join(sorted(p.name for p in channel.iterdir()))})")
    with tarfile.open(archive, "r:gz") as tf:
        tf.extractall(dest, filter="data")
    if not (dest / MODEL_FILE).is_file():
        raise ValueError(f"channel model: model.tar.gz holds no {MODEL_FILE}")
    return dest / MODEL_FILE


def compile_model(model_file: Path, out: Path, target: str, batch: int) -> dict[str, Any]:
    import neuronxcc  # the compiler torch-neuronx drives; its version is part of the record
    import torch_neuronx

    model, meta = load(model_file)
    example = torch.zeros(batch, int(meta["n_features"]))
    traced = torch_neuronx.trace(model, example, compiler_args=["--target", target])
    torch.jit.save(traced, str(out / COMPILED_FILE))
    shutil.copy(model_file, out / MODEL_FILE)
    return {
        "compiled": True,
        "compiler_version": str(neuronxcc.__version__),
        "torch_neuronx_version": str(torch_neuronx.__version__),
        "target": target,
        "tp_degree": 1,
        "batch_size": batch,
        "input_shapes": f"{INPUT_NAME}={batch}x{int(meta['n_features'])}",
    }


def main() -> int:
    model_dir = Path(os.environ["SM_MODEL_DIR"])
    output_dir = Path(os.environ.get("SM_OUTPUT_DIR", model_dir.parent / "output"))
    data_dir = Path(os.environ.get("SM_OUTPUT_DATA_DIR", output_dir / "data"))
    try:
        hps = hyperparameters()
        work = model_dir.parent / "trained"
        model_file = unpack_model(Path(os.environ["SM_CHANNEL_MODEL"]), work)
        record = compile_model(model_file, model_dir, hps["neuron_target"], hps["batch_size"])
        (model_dir / BUILD_FILE).write_text(json.dumps(record, indent=2, sort_keys=True))
        data_dir.mkdir(parents=True, exist_ok=True)
        (data_dir / "metrics.json").write_text(json.dumps(record, sort_keys=True))
        print(f"compiled for {record['target']} with neuronx-cc {record['compiler_version']}: "
              f"{record['input_shapes']}", flush=True)
        return 0
    except Exception as exc:
        traceback.print_exc()
        output_dir.mkdir(parents=True, exist_ok=True)
        (output_dir / "failure").write_text(f"{type(exc).__name__}: {exc}")
        return 1


if __name__ == "__main__":
    sys.exit(main())
