"""The demo report reads Prometheus through Kanari's one client (kanari.rollout.prometheus), against the real
binary: range and instant queries, a rejected query named, an unreachable server reported, never data."""

from __future__ import annotations

import asyncio
import math
import time

import pytest
from kanari.rollout.prometheus import (
    PrometheusConfig,
    PrometheusQueryError,
    PrometheusUnavailable,
    run_blocking,
)

from devstack import report
from devstack.stack import free_port, start_prometheus

pytestmark = [pytest.mark.prometheus, pytest.mark.timeout(90)]


@pytest.fixture(scope="module")
def prometheus(tmp_path_factory):
    prom = start_prometheus(tmp_path_factory.mktemp("prom"))
    yield prom.url
    prom.stop()


def test_range_and_instant_queries_through_the_shared_client(prometheus):
    now = time.time()
    series = run_blocking(PrometheusConfig(url=prometheus), lambda prom: prom.query_range(
        'label_replace(vector(0.25), "model", "fraud", "", "")', now - 10, now, 2))
    assert len(series) == 1
    assert series[0].labels == {"model": "fraud"} and len(series[0].points) == 6
    assert all(v == 0.25 for _, v in series[0].points)
    assert report.instant_query(prometheus, "vector(3)") == [({}, 3.0)]
    nan = run_blocking(PrometheusConfig(url=prometheus), lambda prom: prom.query_range("vector(0) / 0", now - 2, now, 1))
    assert all(math.isnan(v) for _, v in nan[0].points), "NaN is passed on for the report to show as a gap"
    assert report.firing_alerts(prometheus, "demo", "fraud", now - 10, now) == []


def test_a_rejected_query_and_an_unreachable_server_are_errors_not_data(prometheus):
    with pytest.raises(PrometheusQueryError, match="parse error"):
        report.instant_query(prometheus, "sum(")
    with pytest.raises(PrometheusUnavailable):
        report.instant_query(f"http://127.0.0.1:{free_port()}", "vector(1)")


async def test_callable_from_async_code_as_the_demo_does(prometheus):
    assert await asyncio.to_thread(report.instant_query, prometheus, "vector(1)") == [({}, 1.0)]
    assert report.instant_query(prometheus, "vector(2)") == [({}, 2.0)]  # inside a running loop
