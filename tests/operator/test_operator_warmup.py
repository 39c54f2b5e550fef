"""The warm-up gate driven by the real operator against the API emulator (Serverless): the canary's tag route
answers 503 while its model loads (devstack.warming_predictor); the canary stays at 0% until it has answered
the warm-up requests, then takes its step's weight; the cold start is in status and exported. A canary that
never warms within budgetSeconds is rolled back naming the figure."""

from __future__ import annotations

import asyncio
import threading
import time
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from devstack.warming_predictor import WarmingPredictor
from tests.operator.harness import condition

V1 = "s3://models/fraud/v1/model.tar.gz"
V2 = "s3://models/fraud/v2/model.tar.gz"
SAMPLE = {"instances": [[0.1, 0.2, 0.3]]}


class Background:
    """The stand-in predictor on its own event loop thread (the operator is another process)."""

    def __init__(self, predictor: WarmingPredictor):
        self.predictor = predictor
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    def __enter__(self) -> str:
        self.thread.start()
        return asyncio.run_coroutine_threadsafe(self.predictor.start(), self.loop).result(10)

    def __exit__(self, *exc: Any) -> None:
        asyncio.run_coroutine_threadsafe(self.predictor.stop(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


@pytest.fixture()
def slow_model(env: Any) -> Iterator[tuple[WarmingPredictor, str]]:
    predictor = WarmingPredictor(model=env.name, load_seconds=4.0)
    with Background(predictor) as url:
        yield predictor, url


def deploy(env: Any, warmup: dict[str, Any]) -> str:
    kube, kserve, name = env.kube, env.kserve, env.name
    spec = {"model": {"storageUri": V1, "format": "sklearn"}, "serving": {"accelerator": "cpu"},
            "rollout": {"steps": [{"setWeight": 50}, {"pause": {}}], "warmup": warmup}}
    uid = kube.create_md(name, spec)["metadata"]["uid"]
    kube.wait_isvc(name, lambda i: True, "the InferenceService")
    kserve.reconcile(name)
    kube.wait_md(name, lambda m: m.get("status", {}).get("phase") == "Succeeded", "V1 deployed")
    kube.patch_md(name, {"spec": {"model": {"storageUri": V2}}})
    kube.wait_isvc(name, lambda i: i["spec"]["predictor"]["model"]["storageUri"] == V2
                   and i["spec"]["predictor"].get("canaryTrafficPercent") == 0, "the V2 revision at 0%")
    return str(uid)


def canary_pod(env: Any, revision: str, scheduled: datetime) -> None:
    """The canary revision's pod as the scheduler left it (KServe copies the predictor labels onto it)."""
    env.kube.core.create_namespaced_pod(env.kube.namespace, {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": f"{env.name}-predictor-00002-0", "labels": {"kanari.dev/revision": revision}},
        "spec": {"containers": [{"name": "kserve-container", "image": "kserve/sklearnserver"}]},
        "status": {"phase": "Running", "conditions": [
            {"type": "PodScheduled", "status": "True", "lastTransitionTime": scheduled.strftime("%Y-%m-%dT%H:%M:%SZ")}]},
    })


@pytest.mark.timeout(60)
def test_the_canary_takes_no_traffic_until_its_pods_answer_the_warm_up(env: Any, slow_model: Any) -> None:
    kube, kserve, name = env.kube, env.kserve, env.name
    predictor, url = slow_model
    uid = deploy(env, {"requests": 2, "timeoutSeconds": 2, "budgetSeconds": 60, "samples": [SAMPLE]})
    revision = kube.md(name)["status"]["canaryModel"]["revision"]
    scheduled = datetime.now(UTC).replace(microsecond=0) - timedelta(seconds=10)
    canary_pod(env, revision, scheduled)
    kserve.reconcile(name, latest_url=url)

    md = kube.wait_md(name, lambda m: (condition(m, "Paused") or {}).get("reason") == "WarmingUp", "WarmingUp")
    assert md["status"]["canaryWeight"] == 0 and md["status"]["phase"] == "Paused"
    # While the model loads the predictor answers 503: asked, never counted, and the canary gets nothing.
    while not predictor.loaded:
        isvc = kube.isvc(name)
        assert isvc["spec"]["predictor"]["canaryTrafficPercent"] == 0
        assert kube.md(name)["status"]["canaryWeight"] == 0
        time.sleep(0.3)
    assert predictor.requests and predictor.requests[0] == SAMPLE
    md = kube.md(name)
    assert md["status"]["warmup"]["answered"] == 0 and "HTTP 503" in md["status"]["message"], md["status"]

    kube.wait_isvc(name, lambda i: i["spec"]["predictor"]["canaryTrafficPercent"] == 50, "50% once warm")
    # The InferenceService is written before the status patch of the same reconcile: wait for the latter.
    md = kube.wait_md(name, lambda m: (m["status"].get("warmup") or {}).get("succeededAt"), "the warm-up recorded")
    w = md["status"]["warmup"]
    assert w["succeededAt"] and w["answered"] >= 2 and predictor.answered >= 2 and w["source"].startswith("spec.")
    assert w["servingRevision"] == "fraud-predictor-00002" or w["servingRevision"].endswith("-00002")
    assert 13 <= w["coldStartSeconds"] <= 40, w  # scheduled 10 s before the test, the model loads in 4 s
    reasons = kube.wait_reasons(uid, "WarmingUp", "WarmedUp")
    assert "RolledBack" not in reasons
    port = env.operator.env["KANARI_METRICS_PORT"]
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    line = next(x for x in text.splitlines()
                if x.startswith("kanari_cold_start_seconds{") and f'model="{name}"' in x)
    assert f'revision="{w["servingRevision"]}"' in line and float(line.split()[-1]) == pytest.approx(w["coldStartSeconds"])


@pytest.mark.timeout(60)
def test_a_canary_that_never_warms_is_rolled_back_naming_the_budget(env: Any) -> None:
    kube, kserve, name = env.kube, env.kserve, env.name
    never = WarmingPredictor(model=name, load_seconds=1e9)
    with Background(never) as url:
        uid = deploy(env, {"requests": 1, "timeoutSeconds": 1, "budgetSeconds": 10, "samples": [SAMPLE]})
        kserve.reconcile(name, latest_url=url)
        md = kube.wait_md(name, lambda m: m["status"]["phase"] == "RolledBack", "the rollback", timeout=30)
    assert never.requests, "the canary was asked"
    assert "budgetSeconds 10" in md["status"]["message"] and "HTTP 503" in md["status"]["message"]
    assert md["status"]["warmup"]["failedAt"] and md["status"]["warmup"]["answered"] == 0
    assert kube.isvc(name)["spec"]["predictor"]["model"]["storageUri"] == V1
    kube.wait_reasons(uid, "WarmupFailed")


@pytest.mark.timeout(90)
def test_kill_9_mid_warm_up_keeps_the_budget_and_the_canary_at_zero(env: Any) -> None:
    kube, kserve, name = env.kube, env.kserve, env.name
    predictor = WarmingPredictor(model=name, load_seconds=9.0)
    with Background(predictor) as url:
        uid = deploy(env, {"requests": 2, "timeoutSeconds": 2, "budgetSeconds": 120, "samples": [SAMPLE]})
        kserve.reconcile(name, latest_url=url)
        md = kube.wait_md(name, lambda m: (m["status"].get("warmup") or {}).get("failed", 0) > 0, "a failed answer")
        started = md["status"]["warmup"]["startedAt"]

        env.operator.kill9()
        env.operator.start()
        while not predictor.loaded:  # the new process asks again; the canary still gets nothing
            assert kube.isvc(name)["spec"]["predictor"]["canaryTrafficPercent"] == 0
            time.sleep(0.3)
        kube.wait_isvc(name, lambda i: i["spec"]["predictor"]["canaryTrafficPercent"] == 50, "50% once warm",
                       timeout=30)
    w = kube.wait_md(name, lambda m: (m["status"].get("warmup") or {}).get("succeededAt"), "the warm-up recorded")[
        "status"]["warmup"]
    assert w["startedAt"] == started and w["succeededAt"], w  # the budget ran from the canary's creation
    reasons = kube.wait_reasons(uid, "WarmingUp", "WarmedUp")
    assert reasons.count("WarmingUp") == 1 and reasons.count("WarmedUp") == 1, reasons
