"""Kanari's reference training script: a small MLP for an imbalanced binary tabular problem.

One script for AWS Trainium and for CPU. It follows the SageMaker training-container contract, so the
same file runs in the PyTorch Neuron DLC (pytorch-training-neuronx) on ml.trn1/ml.trn2 and in Kanari's
local training backend:
  inputs   channel directories SM_CHANNEL_TRAIN / SM_CHANNEL_VALIDATION (CSV with a header row)
  params   SM_HPS, or <SM_INPUT_CONFIG_DIR>/hyperparameters.json (values JSON-encoded strings)
  outputs  SM_MODEL_DIR/model.pt, SM_OUTPUT_DATA_DIR/metrics.json, SM_OUTPUT_DIR/failure on error
  resume   <parent of SM_MODEL_DIR>/checkpoints (SageMaker's CheckpointConfig local path), when present
On Trainium the device is the XLA device from torch-neuronx/torch_xla; with
`sagemaker_torch_distributed_enabled` the container starts one process per NeuronCore through torchrun
and gradients are all-reduced by xm.optimizer_step. Class imbalance is handled by oversampling the
positive class of the *training* channel only: the split happened before, in the pipeline.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import sys
import time
import traceback
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
from mlp import MODEL_FILE, TabularMLP, average_precision, best_f1_threshold, save, threshold_scores

try:  # Trainium: torch-neuronx brings torch_xla
    import torch_xla.core.xla_model as xm
except ImportError:
    xm = None


@dataclass
class Hyperparameters:
    epochs: int = 30
    batch_size: int = 64
    learning_rate: float = 1e-3
    hidden: int = 32
    dropout: float = 0.1
    weight_decay: float = 1e-4
    seed: int = 7
    target: str = "label"

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> Hyperparameters:
        known = {f.name: f.type for f in fields(cls)}
        # sagemaker_* keys are the framework container's own (program, submit directory, distribution).
        user = {k: v for k, v in raw.items() if not k.startswith("sagemaker_")}
        unknown = sorted(set(user) - set(known))
        if unknown:
            raise ValueError(f"hyperparameters: unknown {', '.join(unknown)} (known: {', '.join(known)})")
        hp = cls()
        for key, value in user.items():
            default = getattr(hp, key)
            try:
                setattr(hp, key, type(default)(value))
            except (TypeError, ValueError):
                raise ValueError(f"hyperparameters.{key}: {value!r} is not a {type(default).__name__}") from None
        if hp.epochs < 1 or hp.batch_size < 1 or hp.hidden < 1 or hp.learning_rate <= 0:
            raise ValueError("hyperparameters: epochs, batch_size, hidden must be >= 1 and learning_rate > 0")
        return hp


def _decode(value: Any) -> Any:
    if not isinstance(value, str):
        return value
    try:
        return json.loads(value)
    except json.JSONDecodeError:
        return value


def load_hyperparameters() -> Hyperparameters:
    if os.environ.get("SM_HPS"):
        raw = json.loads(os.environ["SM_HPS"])
    else:
        path = Path(os.environ.get("SM_INPUT_CONFIG_DIR", "/opt/ml/input/config")) / "hyperparameters.json"
        raw = json.loads(path.read_text()) if path.exists() else {}
    return Hyperparameters.from_dict({k: _decode(v) for k, v in raw.items()})


def channel_dir(name: str) -> Path:
    env = f"SM_CHANNEL_{name.upper()}"
    path = Path(os.environ.get(env, f"/opt/ml/input/data/{name}"))
    if not path.is_dir():
        raise ValueError(f"channel {name!r} is missing: {env} / {path} is not a directory")
    return path


def read_channel(name: str, target: str) -> tuple[np.ndarray, np.ndarray, list[str]]:
    files = sorted(p for p in channel_dir(name).rglob("*.csv") if p.is_file())
    if not files:
        raise ValueError(f"channel {name!r} has no .csv files")
    header: list[str] | None = None
    rows: list[list[str]] = []
    for path in files:
        with path.open(newline="") as fh:
            reader = csv.reader(fh)
            file_header = next(reader)
            if header is None:
                header = file_header
            elif file_header != header:
                raise ValueError(f"channel {name!r}: {path.name} has different columns than the first file")
            rows.extend(reader)
    assert header is not None
    if target not in header:
        raise ValueError(f"channel {name!r}: no target column {target!r} (columns: {', '.join(header)})")
    data = np.asarray(rows, dtype=np.float32)
    t = header.index(target)
    features = [h for i, h in enumerate(header) if i != t]
    return np.delete(data, t, axis=1), data[:, t], features


def oversample(y: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Row indices with the positive class resampled (with replacement) up to the negative count."""
    pos, neg = np.flatnonzero(y == 1), np.flatnonzero(y == 0)
    if len(pos) == 0 or len(neg) == 0:
        raise ValueError("the train channel needs both classes")
    extra = rng.choice(pos, size=max(len(neg) - len(pos), 0), replace=True)
    return np.concatenate([neg, pos, extra])


def fingerprint(hp: Hyperparameters, *arrays: np.ndarray) -> str:
    """What makes two trainings the same one: data and settings. Not `epochs`, which only says where to stop."""
    settings = {k: v for k, v in asdict(hp).items() if k != "epochs"}
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode())
    for a in arrays:
        digest.update(np.ascontiguousarray(a).tobytes())
    return digest.hexdigest()


def write_failure(message: str) -> None:
    out = Path(os.environ.get("SM_OUTPUT_DIR", "/opt/ml/output"))
    try:
        out.mkdir(parents=True, exist_ok=True)
        (out / "failure").write_text(message[:1024])
    except OSError:
        pass


def train() -> dict[str, Any]:
    hp = load_hyperparameters()
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    if world > 1:
        if xm is not None:
            import torch_xla.distributed.xla_backend  # noqa: F401  (registers the "xla" backend)

            torch.distributed.init_process_group("xla")
        else:
            torch.distributed.init_process_group("gloo")
    device = xm.xla_device() if xm is not None else torch.device("cpu")
    torch.manual_seed(hp.seed)
    rng = np.random.default_rng(hp.seed)

    x_train, y_train, features = read_channel("train", hp.target)
    x_val, y_val, val_features = read_channel("validation", hp.target)
    if val_features != features:
        raise ValueError("the validation channel's columns differ from the train channel's")
    mean = torch.as_tensor(x_train.mean(axis=0))
    std = torch.as_tensor(x_train.std(axis=0)).clamp_min(1e-6)

    model = TabularMLP(len(features), hp.hidden, mean, std, hp.dropout).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=hp.learning_rate, weight_decay=hp.weight_decay)
    wrapped: torch.nn.Module = model
    if world > 1 and xm is None:
        wrapped = torch.nn.parallel.DistributedDataParallel(model)
    loss_fn = torch.nn.BCEWithLogitsLoss()

    model_dir = Path(os.environ.get("SM_MODEL_DIR", "/opt/ml/model"))
    checkpoint_dir = model_dir.parent / "checkpoints"
    checkpoint = checkpoint_dir / "checkpoint.pt"
    # A checkpoint is resumed only when it was written by this very training (same data and settings):
    # SageMaker restores whatever sits under the job's checkpoint prefix, and a stale one would make
    # this run "finish" after 0 epochs with another run's weights.
    identity = fingerprint(hp, x_train, y_train, x_val, y_val)
    start_epoch = 1
    if checkpoint.exists():
        state = torch.load(checkpoint, map_location="cpu", weights_only=True)
        if state.get("fingerprint") != identity:
            print("ignoring a checkpoint written by a different training (data or hyperparameters differ)",
                  flush=True)
        else:
            model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            start_epoch = int(state["epoch"]) + 1
            print(f"resuming from checkpoint at epoch {state['epoch']}", flush=True)

    xt = torch.as_tensor(x_train)
    yt = torch.as_tensor(y_train)
    x_val_t = torch.as_tensor(x_val)
    t0 = time.monotonic()
    for epoch in range(start_epoch, hp.epochs + 1):
        wrapped.train()
        idx = oversample(y_train, rng)
        rng.shuffle(idx)
        idx = idx[rank::world]
        total, batches = 0.0, 0
        for start in range(0, len(idx), hp.batch_size):
            b = torch.as_tensor(idx[start : start + hp.batch_size])
            optimizer.zero_grad()
            loss = loss_fn(wrapped(xt[b].to(device)), yt[b].to(device))
            loss.backward()
            if xm is not None:
                xm.optimizer_step(optimizer)
                xm.mark_step()
            else:
                optimizer.step()
            total += float(loss.detach().cpu())
            batches += 1
        model.eval()
        with torch.no_grad():
            val_scores = torch.sigmoid(model(x_val_t.to(device))).cpu().numpy()
        if rank == 0:
            ap = average_precision(y_val, val_scores)
            # Matched by the job's MetricDefinitions, so SageMaker charts them.
            print(f"epoch={epoch} train_loss={total / max(batches, 1):.6f} validation_pr_auc={ap:.6f}", flush=True)
            if checkpoint_dir.is_dir():
                torch.save(
                    {"epoch": epoch, "model": {k: v.cpu() for k, v in model.state_dict().items()},
                     "optimizer": optimizer.state_dict(), "fingerprint": identity},
                    checkpoint,
                )

    # Scored after the loop, not inside it: a job resumed at its last epoch trains nothing, and its
    # decision threshold must still come from the model it ships.
    model.eval()
    with torch.no_grad():
        val_scores = torch.sigmoid(model(x_val_t.to(device))).cpu().numpy()
    threshold = best_f1_threshold(y_val, val_scores)
    metrics = {
        "validation": {"pr_auc": average_precision(y_val, val_scores), "threshold": threshold,
                       **threshold_scores(y_val, val_scores, threshold)},
        "train_rows": len(y_train),
        "train_positive_rate": float(y_train.mean()),
        "epochs": hp.epochs,
        "epochs_trained": max(hp.epochs - start_epoch + 1, 0),
        "device": str(device),
        "world_size": world,
        "seconds": round(time.monotonic() - t0, 3),
        "hyperparameters": asdict(hp),
    }
    if rank == 0:
        model_dir.mkdir(parents=True, exist_ok=True)
        save(model_dir / MODEL_FILE, model, feature_names=features, target=hp.target, threshold=threshold,
             hidden=hp.hidden)
        out = Path(os.environ.get("SM_OUTPUT_DATA_DIR", "/opt/ml/output/data"))
        out.mkdir(parents=True, exist_ok=True)
        (out / "metrics.json").write_text(json.dumps(metrics, indent=2, sort_keys=True))
    return metrics


def main() -> int:
    try:
        metrics = train()
    except Exception as exc:
        traceback.print_exc()
        write_failure(f"{type(exc).__name__}: {exc}")
        return 1
    print(f"done: validation pr_auc={metrics['validation']['pr_auc']:.4f} "
          f"threshold={metrics['validation']['threshold']:.3f} on {metrics['device']}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
