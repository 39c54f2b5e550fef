"""train.py under SageMaker's training-container contract: channels, hyperparameters (SM_HPS or
hyperparameters.json), model/metrics outputs, /opt/ml/output/failure, checkpoint resume."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import average_precision_score

from kfp_pipelines import data
from kfp_pipelines.training import mlp

TRAIN_PY = Path(data.__file__).parent / "training" / "train.py"


def container(root: Path, channels: tuple[str, ...] = ("train", "validation")) -> dict[str, str]:
    parts = data.split(data.builtin_breast_cancer(), data.BUILTIN_TARGET, seed=7)
    env = {k: v for k, v in os.environ.items() if not k.startswith("SM_")}
    for name in channels:
        d = root / "input" / "data" / name
        d.mkdir(parents=True)
        getattr(parts, name).to_csv(d / f"{name}.csv", index=False)
        env[f"SM_CHANNEL_{name.upper()}"] = str(d)
    (root / "input" / "config").mkdir(parents=True, exist_ok=True)
    env.update(SM_MODEL_DIR=str(root / "model"), SM_OUTPUT_DATA_DIR=str(root / "output" / "data"),
               SM_OUTPUT_DIR=str(root / "output"), SM_INPUT_CONFIG_DIR=str(root / "input" / "config"))
    return env


def run(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(TRAIN_PY)], env=env, cwd=TRAIN_PY.parent, capture_output=True,
                          text=True, timeout=120)


@pytest.mark.timeout(120)
def test_trains_writes_the_contract_outputs_and_resumes_from_checkpoints(tmp_path: Path) -> None:
    env = container(tmp_path)
    (tmp_path / "checkpoints").mkdir()  # SageMaker creates it when the job has a CheckpointConfig
    hps = tmp_path / "input" / "config" / "hyperparameters.json"
    # As SageMaker writes it: every value a JSON-encoded string, framework keys included.
    hps.write_text(json.dumps(
        {"epochs": "4", "learning_rate": "0.005", "target": '"label"', "sagemaker_program": '"train.py"'}))
    proc = run(env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.count("validation_pr_auc=") == 4
    metrics = json.loads((tmp_path / "output" / "data" / "metrics.json").read_text())
    assert metrics["epochs"] == 4 and metrics["device"] == "cpu"
    assert metrics["validation"]["pr_auc"] > 0.8
    model, info = mlp.load(tmp_path / "model" / "model.pt")
    assert info["target"] == "label" and len(info["feature_names"]) == 30
    assert 0.0 < info["threshold"] < 1.0
    assert model(torch.zeros(2, 30)).shape == (2,)
    assert torch.load(tmp_path / "checkpoints" / "checkpoint.pt", weights_only=True)["epoch"] == 4

    # A spot interruption restarts the job: it continues from the last checkpoint.
    hps.write_text(json.dumps({"epochs": "5", "learning_rate": "0.005"}))
    proc = run(env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "resuming from checkpoint at epoch 4" in proc.stdout
    assert proc.stdout.count("validation_pr_auc=") == 1

    # Restarted once more after its last epoch: nothing left to train, and the decision threshold still
    # comes from the model it ships (it was 0.000 when the scores were only computed inside the loop).
    proc = run(env)
    assert proc.returncode == 0 and "resuming from checkpoint at epoch 5" in proc.stdout
    assert proc.stdout.count("validation_pr_auc=") == 0
    metrics = json.loads((tmp_path / "output" / "data" / "metrics.json").read_text())
    assert metrics["epochs_trained"] == 0 and 0.0 < metrics["validation"]["threshold"] < 1.0
    assert metrics["validation"]["pr_auc"] > 0.8


@pytest.mark.timeout(120)
def test_a_checkpoint_from_another_training_is_not_resumed(tmp_path: Path) -> None:
    """Regression: a checkpoint left under the prefix by a run on other data made this one 'finish'
    after 0 epochs with the old weights."""
    env = container(tmp_path)
    (tmp_path / "checkpoints").mkdir()
    env["SM_HPS"] = json.dumps({"epochs": 3})
    assert run(env).returncode == 0
    # New data arrives (different rows): the old checkpoint is not this training's.
    train_csv = tmp_path / "input" / "data" / "train" / "train.csv"
    rows = train_csv.read_text().splitlines()
    train_csv.write_text("\n".join(rows[: len(rows) * 3 // 4]) + "\n")
    proc = run(env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "ignoring a checkpoint written by a different training" in proc.stdout
    assert "resuming" not in proc.stdout and proc.stdout.count("validation_pr_auc=") == 3


@pytest.mark.timeout(120)
def test_failures_land_in_the_failure_file(tmp_path: Path) -> None:
    env = container(tmp_path / "a")
    env["SM_HPS"] = json.dumps({"epochs": 2, "momentum": 0.9})
    proc = run(env)
    assert proc.returncode == 1
    assert (tmp_path / "a" / "output" / "failure").read_text() == (
        "ValueError: hyperparameters: unknown momentum (known: epochs, batch_size, learning_rate, hidden, dropout, "
        "weight_decay, seed, target)"
    )
    env = container(tmp_path / "b", channels=("train",))
    env["SM_HPS"] = json.dumps({"epochs": 1})
    proc = run(env)
    assert proc.returncode == 1
    assert "channel 'validation' is missing" in (tmp_path / "b" / "output" / "failure").read_text()


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.integers(0, 8)), min_size=2, max_size=40))
def test_average_precision_matches_scikit_learn(rows: list[tuple[bool, int]]) -> None:
    y = np.array([int(r[0]) for r in rows])
    scores = np.array([r[1] / 8 for r in rows])
    if y.sum() == 0:
        return
    assert mlp.average_precision(y, scores) == pytest.approx(average_precision_score(y, scores))
