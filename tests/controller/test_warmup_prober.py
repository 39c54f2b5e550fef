"""The warm-up prober against real HTTP predictors on 127.0.0.1: one slow to warm then ready, and hostile ones
(5xx, garbage, JSON without a prediction, hanging past the timeout). Hostile answers are retried, reported
with their reason and never counted; the gate fed by the prober rolls back once the budget is spent."""

from __future__ import annotations

import asyncio
import json
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from aiohttp import web
from hypothesis import given, settings
from hypothesis import strategies as st
from kanari.api.v1alpha1 import ModelDeploymentStatus, ModelRef, WarmupSpec, WarmupStatus, parse_spec
from kanari.controller import warmup as prober_mod
from kanari.controller.warmup import NoSamples, RecentRequests, WarmupProber, parse_samples_jsonl, targets
from kanari.rollout.warmup import gate

pytestmark = pytest.mark.timeout(60)
NS, NAME, REV = "ml", "fraud", "rev-canary"
BODY = {"instances": [[1.0, 2.0]]}
SEEN = web.AppKey("seen", list)


def predictor_app(behaviour: str, warm_after: float = 0.0) -> web.Application:
    started = time.monotonic()
    seen: list[dict[str, Any]] = []

    async def predict(request: web.Request) -> web.StreamResponse:
        assert request.match_info["model"] == NAME
        seen.append(await request.json())
        if behaviour == "slow-then-ready" and time.monotonic() - started < warm_after:
            return web.Response(status=503, text="model loading")
        if behaviour == "5xx":
            return web.Response(status=500, text="boom")
        if behaviour == "garbage":
            return web.Response(status=200, text="<html>not a prediction")
        if behaviour == "no-prediction":
            return web.json_response({"error": None, "predictions": []})
        if behaviour == "redirect":  # to a pod that would answer: never followed
            return web.Response(status=307, headers={"Location": f"http://127.0.0.1:{request.url.port}/ok"})
        if behaviour == "hang":
            await asyncio.sleep(5)
        return web.json_response({"predictions": [1]})

    app = web.Application()
    app.router.add_post("/v1/models/{model}:predict", predict)
    app[SEEN] = seen
    return app


async def serve(app: web.Application) -> tuple[web.AppRunner, int]:
    runner = web.AppRunner(app, shutdown_timeout=0.5)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    return runner, port


def pod(name: str, port: int | None, scheduled: datetime) -> dict[str, Any]:
    status: dict[str, Any] = {"phase": "Running" if port else "Pending", "conditions": [
        {"type": "PodScheduled", "status": "True", "lastTransitionTime": scheduled.strftime("%Y-%m-%dT%H:%M:%SZ")}]}
    if port:
        status["podIP"] = "127.0.0.1"
    return {"metadata": {"name": name, "namespace": NS, "labels": {"kanari.dev/revision": REV}},
            "spec": {"containers": [{"name": "kserve-container",
                                     "ports": [{"containerPort": port or 8080, "protocol": "TCP"}]}]},
            "status": status}


def spec_with(**warmup: Any) -> Any:
    return parse_spec({"model": {"storageUri": "s3://m/fraud/v2", "format": "sklearn"},
                       "serving": {"accelerator": "cpu", "deploymentMode": "RawDeployment"},
                       "rollout": {"warmup": {"samples": [BODY], **warmup}}})


def warming_status(spec: Any) -> ModelDeploymentStatus:
    return ModelDeploymentStatus(
        stableModel=ModelRef(revision="rev-stable"), canaryModel=ModelRef(revision=REV),
        warmup=WarmupStatus(revision=REV, startedAt="2026-03-01T12:00:00Z",
                            budgetSeconds=spec.rollout.warmup.budgetSeconds))


async def run_prober(behaviours: dict[str, str], spec: Any, seconds: float, warm_after: float = 0.0) -> Any:
    runners, pods = [], []
    scheduled = datetime.now(UTC).replace(microsecond=0) - timedelta(seconds=5)
    apps = {}
    for name, b in behaviours.items():
        app = predictor_app(b, warm_after)
        runner, port = await serve(app)
        runners.append(runner)
        apps[name] = app
        pods.append(pod(name, port, scheduled))
    woken: list[str] = []

    async def list_pods(namespace: str, revision: str) -> list[dict[str, Any]]:
        assert (namespace, revision) == (NS, REV)
        return pods

    prober = WarmupProber(list_pods, lambda ns, n: None, woken.append)
    try:
        prober.track(NS, NAME, "uid-1", spec, warming_status(spec), None)
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            obs = prober.observation(NS, NAME, REV)
            if obs and obs.pods and all(p.answered >= spec.rollout.warmup.requests for p in obs.pods):
                break
            await asyncio.sleep(0.1)
        return prober.observation(NS, NAME, REV), woken, apps, scheduled
    finally:
        await prober.close()
        for r in runners:
            await r.cleanup()


def test_a_pod_slow_to_warm_is_retried_until_it_answers_and_the_cold_start_is_measured() -> None:
    spec = spec_with(requests=2, timeoutSeconds=2)
    obs, woken, apps, scheduled = asyncio.run(run_prober({"p-slow": "slow-then-ready", "p-ok": "ok"}, spec, 20,
                                                         warm_after=1.5))
    assert obs is not None and woken and set(woken) == {"uid-1"}
    by = {p.name: p for p in obs.pods}
    assert by["p-slow"].answered == 2 and by["p-slow"].failed >= 1 and by["p-ok"].answered == 2
    assert obs.source == "spec.rollout.warmup.samples" and apps["p-ok"][SEEN][0] == BODY
    result = gate(spec.rollout.warmup, REV, warming_status(spec).warmup, obs, datetime.now(UTC))
    assert result.state == "warm" and result.status.coldStartSeconds is not None
    # Scheduled 5 s before the prober started; the slow pod answered after ~1.5 s more.
    assert 5.5 <= result.status.coldStartSeconds <= 15, result.status.coldStartSeconds


@pytest.mark.parametrize(("behaviour", "reason"), [
    ("5xx", "HTTP 500"),
    ("garbage", "not JSON"),
    ("no-prediction", "no `predictions`"),
    ("hang", "no answer within timeoutSeconds 1"),
    ("redirect", "HTTP 307"),
])
def test_hostile_answers_are_retried_reported_and_never_counted(behaviour: str, reason: str) -> None:
    spec = spec_with(requests=1, timeoutSeconds=1)
    obs, _, apps, _ = asyncio.run(run_prober({"p-ok": "ok", "p-bad": behaviour}, spec, 3.5))
    by = {p.name: p for p in obs.pods}
    assert by["p-ok"].answered == 1
    assert by["p-bad"].answered == 0 and by["p-bad"].failed >= 2, by["p-bad"]  # retried
    assert reason in by["p-bad"].last_error
    assert len(apps["p-bad"][SEEN]) >= 2
    # The gate: not warm while the bad pod fails, and a rollback naming the figure once the budget is spent.
    st = warming_status(spec).warmup
    start = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
    assert gate(spec.rollout.warmup, REV, st, obs, start + timedelta(seconds=60)).state == "warming"
    failed = gate(spec.rollout.warmup, REV, st, obs, start + timedelta(seconds=1800))
    assert failed.state == "failed" and "budgetSeconds 1800" in failed.message and reason in failed.message


def test_model_name_in_the_path_is_the_spec_s_when_given() -> None:
    spec = spec_with(requests=1, timeoutSeconds=2, modelName="summarizer_v2")

    async def go() -> Any:
        app = web.Application()
        seen: list[str] = []

        async def predict(request: web.Request) -> web.Response:
            seen.append(request.match_info["model"])
            return web.json_response({"predictions": [1]})

        app.router.add_post("/v1/models/{model}:predict", predict)
        runner, port = await serve(app)

        async def list_pods(namespace: str, revision: str) -> list[dict[str, Any]]:
            return [pod("p0", port, datetime.now(UTC))]

        prober = WarmupProber(list_pods, lambda ns, n: None, lambda uid: None)
        prober.track(NS, NAME, "uid-1", spec, warming_status(spec), None)
        try:
            for _ in range(50):
                obs = prober.observation(NS, NAME, REV)
                if obs and obs.pods and obs.pods[0].answered:
                    return seen
                await asyncio.sleep(0.1)
            return seen
        finally:
            await prober.close()
            await runner.cleanup()

    assert asyncio.run(go()) == ["summarizer_v2"]


def test_a_pod_without_an_address_is_waited_for_not_counted() -> None:
    found, serving = targets("RawDeployment", REV, [pod("p0", None, datetime.now(UTC))], None)
    assert serving == REV and found[0].url is None and "no pod IP yet (Pending)" in found[0].waiting


def test_serverless_reaches_the_canary_through_its_tag_route_only_once_kserve_has_it() -> None:
    isvc = {"metadata": {"generation": 3, "annotations": {"kanari.dev/revision": REV}},
            "status": {"observedGeneration": 3, "components": {"predictor": {
                "latestCreatedRevision": "fraud-predictor-00002",
                "traffic": [{"revisionName": "fraud-predictor-00001", "percent": 100, "tag": "prev"},
                            {"revisionName": "fraud-predictor-00002", "percent": 0, "tag": "latest",
                             "url": "http://latest-fraud-predictor.ml.example.com"}]}}}}
    found, serving = targets("Serverless", REV, [], isvc)
    assert serving == "fraud-predictor-00002" and found[0].url == "http://latest-fraud-predictor.ml.example.com"
    stale = {**isvc, "metadata": {"generation": 4, "annotations": {"kanari.dev/revision": REV}}}
    assert targets("Serverless", REV, [], stale)[0][0].url is None  # KServe has not seen the template yet
    other = {**isvc, "metadata": {"generation": 3, "annotations": {"kanari.dev/revision": "rev-other"}}}
    assert targets("Serverless", REV, [], other)[0][0].url is None


def test_samples_jsonl_keeps_only_request_bodies_and_is_bounded() -> None:
    lines = [json.dumps({"instances": [[i]]}) for i in range(30)]
    text = "\n".join(["not json", json.dumps({"other": 1}), json.dumps([1, 2]), *lines])
    got = parse_samples_jsonl(text)
    assert len(got) == prober_mod.MAX_SAMPLES and got[0] == {"instances": [[0]]}


def test_no_samples_anywhere_is_reported_never_warm(tmp_path: Any) -> None:
    spec = parse_spec({"model": {"storageUri": "s3://m/fraud/v2", "format": "sklearn"},
                       "serving": {"accelerator": "cpu", "deploymentMode": "RawDeployment"},
                       "rollout": {"warmup": {}}}).rollout.warmup
    assert isinstance(spec, WarmupSpec)

    async def go() -> str:
        prober = WarmupProber(lambda ns, rev: asyncio.sleep(0, []), lambda ns, n: None, lambda uid: None)
        try:
            with pytest.raises(NoSamples) as err:
                await prober.samples(NS, NAME, spec, f"file://{tmp_path}")
            return str(err.value)
        finally:
            await prober.close()

    msg = asyncio.run(go())
    assert "no warm-up inputs" in msg and "samples.jsonl not readable" in msg
    (tmp_path / "samples.jsonl").write_text(json.dumps(BODY) + "\n")

    async def found() -> Any:
        prober = WarmupProber(lambda ns, rev: asyncio.sleep(0, []), lambda ns, n: None, lambda uid: None)
        try:
            return await prober.samples(NS, NAME, spec, f"file://{tmp_path}")
        finally:
            await prober.close()

    assert asyncio.run(found()) == ([BODY], "baseline samples.jsonl")


@pytest.mark.parametrize(("answer", "status", "expect"), [
    ({"requests": [BODY, {"not": "a request"}, "x"]}, 200, [BODY]),
    ({"requests": "nope"}, 200, "no `requests` list"),
    (None, 200, "not JSON"),
    ({"requests": []}, 403, "HTTP 403"),
])
def test_the_monitors_recent_requests_are_untrusted(answer: Any, status: int, expect: Any) -> None:
    async def go() -> Any:
        seen: dict[str, Any] = {}

        async def recent(request: web.Request) -> web.Response:
            seen["path"], seen["limit"] = request.path, request.query.get("limit")
            seen["auth"] = request.headers.get("Authorization")
            if answer is None:
                return web.Response(text="garbage", status=status)
            return web.json_response(answer, status=status)

        app = web.Application()
        app.router.add_get("/v1/recent-requests/{ns}/{name}", recent)
        runner, port = await serve(app)
        import aiohttp

        try:
            async with aiohttp.ClientSession() as session:
                client = RecentRequests(f"http://127.0.0.1:{port}/events")
                try:
                    return await client.fetch(session, NS, NAME, 5), seen
                except NoSamples as exc:
                    return str(exc), seen
        finally:
            await runner.cleanup()

    got, seen = asyncio.run(go())
    assert seen["path"] == f"/v1/recent-requests/{NS}/{NAME}" and seen["limit"] == "5"
    if isinstance(expect, list):
        assert got == expect
    else:
        assert expect in got


def test_baseline_samples_are_read_from_s3_and_a_missing_file_is_named_without_internals(monkeypatch: Any) -> None:
    import boto3

    from tests.support.moto import moto_server

    with moto_server() as endpoint:
        for k, v in {"AWS_ENDPOINT_URL": endpoint, "AWS_REGION": "us-east-1", "AWS_ACCESS_KEY_ID": "testing",
                     "AWS_SECRET_ACCESS_KEY": "testing"}.items():
            monkeypatch.setenv(k, v)
        s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
        s3.create_bucket(Bucket="ml-artifacts-secret-name")
        lines = [json.dumps({"instances": [[i, i + 1]]}) for i in range(3)]
        s3.put_object(Bucket="ml-artifacts-secret-name", Key="fraud/7/baseline/samples.jsonl",
                      Body=("\n".join(["{broken", *lines]) + "\n").encode())
        got = prober_mod.read_baseline_samples("s3://ml-artifacts-secret-name/fraud/7/baseline/")
        assert got == [json.loads(x) for x in lines]
        with pytest.raises(NoSamples) as err:
            prober_mod.read_baseline_samples("s3://ml-artifacts-secret-name/fraud/8/baseline")
        assert "NoSuchKey" in str(err.value) and "secret-name" not in str(err.value)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.sampled_from(["instances", "inputs", "x"]), inner,
                                                                max_size=3),
    max_leaves=8,
)


@settings(max_examples=200, deadline=None)
@given(lines=st.lists(st.one_of(json_values.map(json.dumps), st.text(max_size=20)), max_size=40))
def test_any_samples_file_yields_only_bounded_request_bodies(lines: list[str]) -> None:
    got = parse_samples_jsonl("\n".join(lines))
    assert len(got) <= prober_mod.MAX_SAMPLES
    for body in got:
        assert isinstance(body, dict) and (isinstance(body.get("instances"), list) or isinstance(body.get("inputs"), list))


def test_a_failing_pod_list_is_reported_keeps_what_was_seen_and_is_retried() -> None:
    from kubernetes.client.exceptions import ApiException

    spec = spec_with(requests=3, timeoutSeconds=2)

    async def go() -> tuple[list[Any], Any]:
        app = predictor_app("slow-then-ready", warm_after=0.3)  # the first round fails: the pod is seen, unwarm
        runner, port = await serve(app)
        calls = {"n": 0}

        async def flaky(namespace: str, revision: str) -> list[dict[str, Any]]:
            calls["n"] += 1
            if calls["n"] == 2:
                raise ApiException(status=500, reason="Internal Server Error")
            return [pod("p0", port, datetime.now(UTC))]

        reports: list[Any] = []
        prober = WarmupProber(flaky, lambda ns, n: None, lambda uid: reports.append(prober.observation(NS, NAME, REV)))
        # The second round's listing fails, between one that saw the pod and one that warms it.
        prober.track(NS, NAME, "uid-1", spec, warming_status(spec), None)
        try:
            for _ in range(100):
                obs = prober.observation(NS, NAME, REV)
                if obs and obs.pods and obs.pods[0].answered >= 3:
                    break
                await asyncio.sleep(0.1)
            return reports, prober.observation(NS, NAME, REV)
        finally:
            await prober.close()
            await runner.cleanup()

    reports, final = asyncio.run(go())
    failed = [r for r in reports if r.error and "listing the canary's pods failed: 500" in r.error]
    assert failed and all(r.pods for r in failed), reports  # the pods seen before are still in the report
    assert final.pods[0].answered == 3 and final.error is None
