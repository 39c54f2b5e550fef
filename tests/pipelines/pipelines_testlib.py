"""Helpers for the pipeline tests: strict CRD validation, an emulated Kubernetes API with the ACK and
Kanari CRDs, and a deliberately useless dataset (labels shuffled) for the regression case."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any, TypeVar

import jsonschema
import numpy as np
import yaml

from tests.support.schemas import crd_schemas

ROOT = Path(__file__).resolve().parents[2]
UPSTREAM_CRDS = ROOT.parent / "shared" / "upstream" / "crds"
TRAININGJOB_CRD = UPSTREAM_CRDS / "sagemaker.services.k8s.aws_trainingjobs.yaml"
MODELDEPLOYMENT_CRD = ROOT / "manifests" / "crds" / "kanari.dev_modeldeployments.yaml"
TRAININGJOB = ("sagemaker.services.k8s.aws", "v1alpha1", "trainingjobs")
T = TypeVar("T")


def strict_validator(crd_path: Path) -> jsonschema.Draft4Validator:
    """The CRD's schema as kubectl's strict field validation applies it (tests.support.schemas)."""
    crd = next(d for d in yaml.safe_load_all(crd_path.read_text()) if d and d.get("kind") == "CustomResourceDefinition")
    key = (f"{crd['spec']['group']}/{crd['spec']['versions'][0]['name']}", crd["spec"]["names"]["kind"])
    return jsonschema.Draft4Validator(crd_schemas()[key])


def shuffled_labels_csv(frame: Any, target: str, seed: int = 1) -> bytes:
    """The same features with the labels permuted: a model trained on it has no skill."""
    out = frame.copy()
    out[target] = np.random.default_rng(seed).permutation(out[target].to_numpy())
    buf = io.StringIO()
    out.to_csv(buf, index=False)
    return buf.getvalue().encode()



def trained_model_tarball(frame: Any, target: str, epochs: int = 60, invert: bool = False, seed: int = 0) -> bytes:
    """model.tar.gz as train.py writes it, trained here in a second (invert: on flipped labels, a model
    that ranks the classes backwards)."""
    import tempfile

    import torch

    from kfp_pipelines import aws
    from kfp_pipelines.training import mlp

    torch.manual_seed(seed)
    features = [c for c in frame.columns if c != target]
    x = torch.as_tensor(frame[features].to_numpy(dtype=np.float32))
    y = torch.as_tensor(frame[target].to_numpy(dtype=np.float32))
    if invert:
        y = 1 - y
    model = mlp.TabularMLP(len(features), 16, x.mean(0), x.std(0).clamp_min(1e-6))
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    for _ in range(epochs):
        opt.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(model(x), y)
        loss.backward()
        opt.step()
    model.eval()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "model"
        root.mkdir()
        mlp.save(root / mlp.MODEL_FILE, model, feature_names=features, target=target, threshold=0.5, hidden=16)
        return aws.tar_gz(root)
