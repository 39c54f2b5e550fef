"""`kanari promote|abort|pause|resume|retry|status` (and `kubectl kanari`) against an API emulator."""

from __future__ import annotations

import json
import os
import re
import subprocess
import threading
import time
import uuid
from pathlib import Path

import pytest
from kanari.api.v1alpha1 import (
    ACTION_ANNOTATION,
    AnalysisRun,
    Measurement,
    MetricRun,
    ModelDeploymentStatus,
    parse_spec,
)
from kanari.cli.main import main
from kanari.rollout.engine import RolloutObservation, decide
from rollout_testlib import T0, make_spec, ref

from tests.operator.harness import Cluster, Kube

pytestmark = pytest.mark.timeout(60)
ROOT = Path(__file__).resolve().parents[2]
NS = "ml"
SPEC = {"model": {"storageUri": "s3://models/fraud/v2", "format": "sklearn"}, "serving": {"accelerator": "cpu"},
        "rollout": {"steps": [{"setWeight": 20}, {"pause": {}}, {"setWeight": 60}, {"analysis": {}}],
                    "analysis": {"count": 3, "metrics": [{"name": "success-rate", "template": "request-success-rate",
                                              "thresholdRange": {"min": 0.99}}]}}}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    with Cluster(tmp_path_factory.mktemp("apiserver")) as c:
        yield c


@pytest.fixture
def kube(cluster, monkeypatch):
    monkeypatch.setenv("KUBECONFIG", str(cluster.kubeconfig))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    k = Kube(cluster, NS)
    k.name = f"fraud-{uuid.uuid4().hex[:8]}"
    k.create_md(k.name, SPEC)
    return k


def paused_rollout_status() -> ModelDeploymentStatus:
    """A rollout of v2 over v1, paused at its indefinite pause step, with one analysis on record."""
    spec = parse_spec(SPEC)
    d = decide(spec, ModelDeploymentStatus(phase="Succeeded", stableModel=ref(make_spec("v1"))),
               RolloutObservation(now=T0, desired=ref(spec), stable_ready=True, canary_ready=True), 1)
    status = d.status.model_copy(deep=True)
    status.analysisRuns = [AnalysisRun(name="step-3", revision=spec.rollout_revision(), step=3, phase="Running",
                                       startedAt="2026-03-01T12:00:00Z", metrics=[MetricRun(
        name="success-rate", count=2, successful=1, inconclusive=1, phase="Running", measurements=[
            Measurement(phase="Inconclusive", value=None, threshold=">= 0.99", sampleCount=12,
                        message="success-rate: 12 samples in the window, fewer than minSampleCount 100"),
            Measurement(phase="Successful", value=0.9987, stableValue=0.9991, threshold=">= 0.99", sampleCount=1532,
                        finishedAt="2026-03-01T12:00:30Z")])])]
    return ModelDeploymentStatus.model_validate(status.model_dump(mode="json"))


@pytest.mark.parametrize(("argv", "action"), [
    (["promote"], "promote"), (["promote", "--full"], "promote-full"), (["abort"], "abort"),
    (["pause"], "pause"), (["resume"], "resume"), (["retry"], "retry"),
])
def test_actions_set_the_annotation_with_a_fresh_nonce(kube, capsys, argv, action):
    assert main([*argv, kube.name, "-n", NS]) == 0
    first = kube.md(kube.name)["metadata"]["annotations"][ACTION_ANNOTATION]
    assert re.fullmatch(rf"{action}/[0-9a-f]{{8}}", first)
    assert main([*argv, kube.name, "-n", NS]) == 0
    second = kube.md(kube.name)["metadata"]["annotations"][ACTION_ANNOTATION]
    assert second != first, "the same action twice must be two distinct requests"
    assert f"{action} requested for modeldeployment {NS}/{kube.name}" in capsys.readouterr().out
    assert kube.md(kube.name)["spec"] == SPEC, "actions never touch the spec"


def test_promote_annotation_is_consumed_by_the_engine(kube):
    status = paused_rollout_status()
    assert [p.reason for p in status.pauseConditions] == ["PauseStep"] and status.canaryWeight == 20
    assert main(["promote", kube.name, "-n", NS]) == 0
    value = kube.md(kube.name)["metadata"]["annotations"][ACTION_ANNOTATION]
    spec = parse_spec(SPEC)
    d = decide(spec, status, RolloutObservation(now=T0, desired=ref(spec), stable_ready=True, canary_ready=True,
                                         action=value), 1)
    assert d.canary_weight == 60 and d.status.rollout.lastAction == value


def test_unknown_object_is_a_clear_error(kube, capsys):
    assert main(["abort", "nope", "-n", NS]) == 4
    assert "modeldeployment nope not found in namespace ml" in capsys.readouterr().err
    assert main(["status", "nope", "-n", NS]) == 4


def test_status_shows_the_rollout_at_a_glance(kube, capsys):
    kube.merge_patch(("kanari.dev", "v1alpha1", "modeldeployments"), kube.name,
                     {"status": paused_rollout_status().model_dump(mode="json")}, status=True)
    assert main(["status", kube.name, "-n", NS]) == 0
    out = capsys.readouterr().out
    assert "Phase:       Paused" in out
    assert "Step: 1/4" in out and "stable 80%  canary 20%" in out
    assert "Stable:      v1" in out and "Canary:      v2" in out
    # The analysis runs, the way `kubectl argo rollouts get` shows AnalysisRuns.
    assert re.search(r"α step-3\s+AnalysisRun\s+◌ Running\s+\S+\s+✔ 1  \? 1", out), out
    assert re.search(r"└── success-rate\s+Metric\s+◌ Running\s+✔ 1  \? 1  latest 0\.9987 \(stable 0\.9991\)"
                     r"  >= 0\.99  1532 samples", out), out
    assert re.search(r"Paused:\s+PauseStep since", out)
    assert re.search(r"Paused\s+True\s+PauseStep", out)
    assert main(["status", kube.name, "-n", NS, "-o", "json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["status"]["canaryWeight"] == 20 and doc["metadata"]["name"] == kube.name


def test_status_watch_follows_until_the_rollout_settles(kube, capsys):
    md = ("kanari.dev", "v1alpha1", "modeldeployments")
    status = paused_rollout_status()
    kube.merge_patch(md, kube.name, {"status": status.model_dump(mode="json")}, status=True)

    def finish():
        time.sleep(0.5)
        kube.merge_patch(md, kube.name, {"status": {"canaryWeight": 60, "currentStep": 3}}, status=True)
        time.sleep(1.5)  # the CLI polls once a second
        kube.merge_patch(md, kube.name, {"status": {"phase": "RolledBack", "canaryModel": None,
                                                    "canaryWeight": 0}}, status=True)

    t = threading.Thread(target=finish)
    t.start()
    code = main(["status", kube.name, "-n", NS, "--watch"])
    t.join()
    out = capsys.readouterr().out
    assert code == 1, "a watch that ends RolledBack exits non-zero"
    assert out.count("Phase:") >= 3 and "canary 60%" in out and "Phase:       RolledBack" in out


def test_works_as_a_kubectl_plugin(kube, cluster):
    env = {**os.environ, "KUBECONFIG": str(cluster.kubeconfig),
           "PATH": f"{ROOT / '.venv' / 'bin'}:{ROOT / '.tools' / 'bin'}:{os.environ['PATH']}"}
    env.pop("KUBERNETES_SERVICE_HOST", None)
    run = subprocess.run(["kubectl", "kanari", "pause", kube.name, "-n", NS], env=env, capture_output=True,
                         text=True, timeout=30)
    assert run.returncode == 0, run.stderr
    assert kube.md(kube.name)["metadata"]["annotations"][ACTION_ANNOTATION].startswith("pause/")
