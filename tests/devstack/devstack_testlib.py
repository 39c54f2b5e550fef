"""Shared helpers for the local-stack tests: a trained-model artifact as the pipeline would produce it."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import torch

from kfp_pipelines.training.mlp import TabularMLP, save

FEATURES = ["mean radius", "mean texture", "mean area"]


def model_tar_gz(dest: Path, fault: dict[str, float] | None = None, threshold: float = 0.5) -> Path:
    """A model.tar.gz holding model.pt (kfp_pipelines.training.mlp's format), optionally a fault file."""
    torch.manual_seed(0)
    net = TabularMLP(len(FEATURES), 8, torch.zeros(len(FEATURES)), torch.ones(len(FEATURES)))
    work = dest.parent / f".{dest.name}.d"
    work.mkdir(parents=True, exist_ok=True)
    save(work / "model.pt", net, feature_names=FEATURES, target="label", threshold=threshold, hidden=8)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        tf.add(work / "model.pt", arcname="model.pt")
        if fault is not None:
            data = json.dumps(fault).encode()
            info = tarfile.TarInfo("fault-injection.json")
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    dest.write_bytes(buf.getvalue())
    return dest


def unpack(archive: Path, dest: Path) -> Path:
    dest.mkdir(parents=True, exist_ok=True)
    with tarfile.open(archive, "r:gz") as tf:
        tf.extractall(dest, filter="data")
    return dest
