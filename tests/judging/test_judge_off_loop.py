"""Review 4: the statistical judge computes a new (looks, alpha)'s sequential boundaries off the event loop.

The first judged measurement with 50 planned looks computes its boundaries by numerical integration (0.5-2 s,
more on a loaded node), and the first one in a process also imports scipy.stats. Done inside the operator's
asyncio loop, every other ModelDeployment's reconcile, the watch streams and kopf's liveness endpoint stood still
meanwhile.
"""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime

import httpx
import pytest
from kanari.api.v1alpha1 import parse_spec
from kanari.judging import sequential
from kanari.judging.analysis import measure_judge, planned_looks
from kanari.rollout.prometheus import PrometheusClient, PrometheusConfig

pytestmark = pytest.mark.timeout(120)
NOW = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)


async def test_a_first_boundary_computation_does_not_stall_the_event_loop() -> None:
    spec = parse_spec({
        "model": {"storageUri": "s3://models/fraud/v2", "format": "sklearn"},
        "serving": {"accelerator": "cpu", "deploymentMode": "RawDeployment"},
        "rollout": {"steps": [{"setWeight": 20}, {"analysis": {}}],
                    "analysis": {"interval": "30s", "count": 47, "metrics": [  # count 47, failureLimit 0, inconclusiveLimit 2: 50 looks
                        {"name": "errors", "judge": {"kind": "errorRate", "maxDegradation": 0.01,
                                                     "alpha": 1e-6}}]}},
    })
    metric = spec.rollout.analysis.metrics[0]  # type: ignore[union-attr]
    assert planned_looks(spec, metric) == sequential.MAX_INTEGRATED_LOOKS  # integrated, not the union bound
    import scipy.optimize
    import scipy.stats  # noqa: F401  (imported before: the stall measured is the computation's alone)

    sequential._boundaries.cache_clear()

    def answer(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json={"status": "success", "data": {"resultType": "vector", "result": []}})

    prom = PrometheusClient(PrometheusConfig(url="http://prometheus.test:9090", attempts=1),
                            transport=httpx.MockTransport(answer))
    variables = {"namespace": "ml-prod", "name": "fraud", "canaryRevision": "b", "stableRevision": "a",
                 "stepStartedAt": "2026-11-30T11:59:00Z"}
    gaps: list[float] = []
    done = asyncio.Event()

    async def ticker() -> None:
        last = time.perf_counter()
        while not done.is_set():
            await asyncio.sleep(0.01)
            now = time.perf_counter()
            gaps.append(now - last)
            last = now

    tick = asyncio.create_task(ticker())
    await asyncio.sleep(0.05)
    started = time.perf_counter()
    result = await measure_judge(spec, metric, variables, prom, NOW, "2026-11-30T12:00:00Z", 100)
    took = time.perf_counter() - started
    done.set()
    await tick
    assert result.verdict == "Inconclusive" and "no canary requests" in result.message
    assert sequential._boundaries.cache_info().misses == 1, "no boundaries computed: the test proves nothing"
    assert max(gaps) < 0.25, f"the event loop stood still for {max(gaps):.2f} s of a {took:.2f} s measurement"
