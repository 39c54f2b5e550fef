"""The operator's handler reads the status the same way reconcile does (ModelDeploymentStatus.lenient).

Regression (review 4): reconcile_once validated the status strictly and fell back to an EMPTY status on any
unreadable field (a field an older operator wrote, another writer's list), while reconcile() read the same
status leniently and went on with the rollout. Everything the handler derives from the status then saw no
rollout at all: no analysis measurement was ever due (the canary sat at its step until progressDeadline rolled
it back), no realised-quality reading was taken inside rollbackWindow (the retro-verdict silently off), no
NeuronCore capacity view (the capacity gate lifted) and no warm-up observation.
"""

from __future__ import annotations

import asyncio
import json
import logging
from datetime import timedelta
from types import SimpleNamespace
from typing import Any

import httpx
import kopf
import pytest
from kanari.controller import handlers
from kanari.rollout.prometheus import PrometheusClient, PrometheusConfig

from tests.controller.test_rollout_invariants import CONFIG, World


class _Kube:
    def __init__(self, isvc: dict[str, Any] | None):
        self.isvc, self.patched = isvc, []

    async def get(self, *_: Any) -> dict[str, Any] | None:
        return self.isvc

    async def apply(self, _kind: Any, desired: dict[str, Any], _current: Any) -> str:
        self.isvc = desired
        return "unchanged"

    async def patch_status(self, _ns: str, _name: str, status: dict[str, Any]) -> dict[str, Any]:
        self.patched.append(status)
        return {"metadata": {}}

    async def delete(self, *_: Any) -> None:
        return None


@pytest.mark.parametrize("garble", [("previewUrl", 5), ("inferenceService", {"ready": "sometimes"})])
def test_an_unreadable_status_field_does_not_stop_the_canarys_analysis(
        garble: tuple[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    w = World("RawDeployment", set())
    w.play([("advance",)] * 3)
    w.edit(version="v2")
    for _ in range(3):  # KServe brings the canary up; no measurement yet
        w.step(("kserve", True))
    assert w.status["currentStep"] == 1 and w.status["canaryWeight"] == 20
    w.now += timedelta(seconds=31)
    queries: list[str] = []

    def answer(request: httpx.Request) -> httpx.Response:
        queries.append(request.url.params.get("query") or request.content.decode())
        return httpx.Response(200, json={"status": "success", "data": {"resultType": "vector", "result": []}})

    prom = PrometheusClient(PrometheusConfig(url="http://prometheus.test:9090", attempts=1),
                            transport=httpx.MockTransport(answer))
    kube = _Kube(w.kserve.isvc)
    rt = SimpleNamespace(
        config=CONFIG, kube=kube, children={}, prometheus=prom, cost_measured={},
        capacity=SimpleNamespace(record=lambda *a: None),
        warmup=SimpleNamespace(observation=lambda *a: None, track=lambda *a: None),
    )
    monkeypatch.setattr(kopf, "event", lambda *a, **k: None)
    monkeypatch.setattr(handlers, "datetime", SimpleNamespace(now=lambda tz=None: w.now))
    body = w.body()
    body["status"] = {**w.status, garble[0]: garble[1]}
    body["metadata"]["resourceVersion"] = "1"
    asyncio.run(handlers.reconcile_once(rt, json.loads(json.dumps(body)), body, logging.getLogger("t")))  # type: ignore[arg-type]
    assert queries, "a measurement was due, but the handler took none"
    run = next(r for r in kube.patched[-1]["analysisRuns"] if r["name"] == "step-1")
    assert run["metrics"][0]["count"] == 1
