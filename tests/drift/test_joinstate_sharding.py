"""Review 4: a replica keeps (and exports) the ground truth of the models it owns only.

With --state-dir a replica reloads every join store it ever saved. After a scale change (which restarts the
replicas with new --peers) a model that moved to another replica came back on the old one from disk and its
realised-quality gauges went on being exported from there, frozen, beside the new owner's. The retro-verdict and
the KanariRealisedQualityDrop alert read max() over replicas: the frozen pre-move figure (say 0.90) hid the
owner's real drop (0.60) for as long as the revision was served.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from drift_testlib import RESPONSE, kserve_headers, metric_samples
from kanari.monitor.joinstate import JoinState
from kanari.monitor.registry import ModelRegistry
from kanari.monitor.server import DriftMonitor
from kanari.monitor.settings import MonitorSettings
from prometheus_client import generate_latest

pytestmark = pytest.mark.timeout(60)
NS = "ml-prod"


def _md(baseline_dir: Path) -> dict[str, Any]:
    ref = {"revision": "rev-7", "version": "7", "storageUri": "s3://models/fraud/7/"}
    return {"apiVersion": "kanari.dev/v1alpha1", "kind": "ModelDeployment",
            "metadata": {"name": "fraud", "namespace": NS},
            "spec": {"model": {"storageUri": ref["storageUri"], "format": "sklearn"},
                     "serving": {"deploymentMode": "RawDeployment"},
                     "monitoring": {"baselineUri": f"file://{baseline_dir}", "groundTruth": {"task": "binary"}}},
            "status": {"stableModel": ref}}


def _monitor(state_dir: Path, baseline_dir: Path) -> DriftMonitor:
    models = ModelRegistry()
    models.replace([_md(baseline_dir)])
    return DriftMonitor(MonitorSettings(window_size=500, min_samples=20), models, labels_token="t",
                        state=JoinState(state_dir))


def _exported(monitor: DriftMonitor) -> list[dict[str, str]]:
    return [lab for lab, _ in metric_samples(generate_latest(monitor.registry).decode(),
                                             "kanari_realised_quality_denominator") if lab.get("model") == "fraud"]


async def test_a_model_that_moved_to_another_replica_is_not_exported_from_the_old_ones_disk(
        tmp_path: Path, cancer_baseline_dir: Path) -> None:
    monitor = _monitor(tmp_path, cancer_baseline_dir)
    for k in range(4):
        headers = kserve_headers(ce_id=f"p{k}", ce_type=RESPONSE, model="fraud", namespace=NS)
        status, _ = await monitor.handle(headers, json.dumps({"predictions": [0.9]}).encode())
        assert status == 200
    config = monitor.models.lookup(NS, "fraud").ground_truth  # type: ignore[union-attr]
    monitor.truth.labels(NS, "fraud", config, [(f"p{k}", 1.0) for k in range(4)])
    monitor.evaluate()
    assert _exported(monitor), "the owner exports its realised quality"
    monitor.truth.state.close()  # type: ignore[union-attr]

    # Scaled out: the replica restarts with new peers, under which another replica owns the model.
    restarted = _monitor(tmp_path, cancer_baseline_dir)
    restarted.owns = lambda namespace, model: False
    restarted.evaluate()
    assert _exported(restarted) == [], "a model this replica no longer owns is exported from its disk"
    assert (NS, "fraud") not in restarted.truth.stores
    assert (NS, "fraud") not in JoinState(tmp_path).load(10, lambda: 0.0)
