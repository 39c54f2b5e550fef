"""The drift monitor as a real process over HTTP, fed CloudEvents shaped exactly as KServe's payload
logger sends them, with its baseline in S3 (moto server on loopback)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from drift_testlib import (
    REQUEST,
    RESPONSE,
    Service,
    cancer_frame,
    kserve_headers,
    metric_samples,
    new_id,
    start_service,
    structured_body,
    wait_for,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from kanari.monitor.baseline_store import StaticBaselines
from kanari.monitor.server import DriftMonitor
from kanari.monitor.settings import MonitorSettings

pytestmark = pytest.mark.timeout(120)

NS = "ml-prod"
FEATURES = [c for c in cancer_frame().columns if c != "target"]
MAX_EVENT_BYTES = 200_000


@pytest.fixture(scope="module")
def monitor(
    monitor_env: dict[str, str], cancer_baseline_dir: Path, cancer_baseline_uri: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Service]:
    work = tmp_path_factory.mktemp("monitor")
    config = work / "baselines.yaml"
    config.write_text(json.dumps({"baselines": {"ml-static/legacy": {"uri": f"file://{cancer_baseline_dir}", "version": "3"}}}))
    svc = start_service(
        "kanari.monitor.server",
        ["--window-size", "400", "--min-samples", "200", "--evaluate-interval", "0.2",
         "--max-event-bytes", str(MAX_EVENT_BYTES), "--config", str(config)],
        work,
        env=monitor_env,
    )
    yield svc
    svc.stop()
    assert "Traceback" not in svc.tail(), svc.tail()


@pytest.fixture(scope="module")
def http() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=10) as client:
        yield client


def annotations(uri: str, version: str) -> dict[str, str]:
    return {"kanari.dev/baseline-uri": uri, "kanari.dev/model-version": version, "serving.kserve.io/deploymentMode": "Serverless"}


def post(http: httpx.Client, svc: Service, headers: dict[str, str], payload: Any) -> httpx.Response:
    body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    return http.post(f"{svc.url}/", headers=headers, content=body)


def metrics(http: httpx.Client, svc: Service, name: str, **labels: str) -> list[tuple[dict[str, str], float]]:
    text = http.get(f"{svc.url}/metrics").text
    return [(lab, v) for lab, v in metric_samples(text, name) if all(lab.get(k) == v2 for k, v2 in labels.items())]


def drifted_rows(n: int, seed: int, shift: dict[str, float] | None = None) -> np.ndarray:
    df = cancer_frame()
    rows = df[FEATURES].sample(n, replace=True, random_state=seed).to_numpy(copy=True)
    for name, sigmas in (shift or {}).items():
        j = FEATURES.index(name)
        rows[:, j] += sigmas * df[name].std()
    return rows


def send_v1(
    http: httpx.Client, svc: Service, model: str, rows: np.ndarray, preds: list[Any], ann: dict[str, str],
    endpoint: str = "default", response_first: bool = False, namespace: str = NS,
) -> None:
    for row, pred in zip(rows, preds, strict=True):
        ce_id = new_id()
        req = (kserve_headers(ce_id=ce_id, ce_type=REQUEST, model=model, namespace=namespace, endpoint=endpoint,
                              annotations=ann), {"instances": [row.tolist()]})
        resp = (kserve_headers(ce_id=ce_id, ce_type=RESPONSE, model=model, namespace=namespace, endpoint=endpoint,
                               annotations=ann), {"predictions": [pred]})
        for headers, payload in (resp, req) if response_first else (req, resp):
            r = post(http, svc, headers, payload)
            assert r.status_code == 200, r.text


def test_feature_and_prediction_drift_are_exported(monitor: Service, http: httpx.Client, cancer_baseline_uri: str) -> None:
    ann = annotations(cancer_baseline_uri, "7")
    rows = drifted_rows(300, seed=1, shift={"mean radius": 3.0})
    # KServe's workers may deliver a response before its request: half the pairs arrive that way.
    send_v1(http, monitor, "cancer", rows[:150], [1] * 150, ann)
    send_v1(http, monitor, "cancer", rows[150:], [1] * 150, ann, response_first=True)

    def drift() -> dict[str, float] | None:
        found = metrics(http, monitor, "kanari_feature_drift", model="cancer", method="linf", endpoint="default", revision="7")
        return {lab["feature"]: v for lab, v in found} if len(found) == len(FEATURES) else None

    values = wait_for(drift, "feature drift of model cancer")
    assert max(values, key=values.__getitem__) == "mean radius"
    assert values["mean radius"] > 0.5
    assert np.median(list(values.values())) < 0.12
    assert {lab["method"] for lab, _ in metrics(http, monitor, "kanari_feature_drift", model="cancer", feature="mean radius")} == {
        "linf", "psi", "js", "wasserstein"
    }
    # Predictions are all class 1; in training 37% of labels are 0.
    pred = wait_for(lambda: metrics(http, monitor, "kanari_prediction_drift", model="cancer", method="psi"), "prediction drift")
    assert pred[0][0]["endpoint"] == "default" and pred[0][1] > 0.25
    def samples() -> float | None:
        found = metrics(http, monitor, "kanari_drift_window_samples", namespace=NS, model="cancer", endpoint="default")
        return found[0][1] if found and found[0][1] == 300 else None

    wait_for(samples, "all 300 requests in the window")


def test_below_min_samples_nothing_is_exported(monitor: Service, http: httpx.Client, cancer_baseline_uri: str) -> None:
    send_v1(http, monitor, "cancer-quiet", drifted_rows(50, seed=2, shift={"mean radius": 5.0}), [1] * 50,
            annotations(cancer_baseline_uri, "1"))
    wait_for(lambda: metrics(http, monitor, "kanari_drift_window_samples", model="cancer-quiet"), "window samples")
    assert metrics(http, monitor, "kanari_feature_drift", model="cancer-quiet") == []
    assert metrics(http, monitor, "kanari_prediction_drift", model="cancer-quiet") == []


def send_v2(
    http: httpx.Client, svc: Service, model: str, rows: np.ndarray, preds: list[int], ann: dict[str, str], endpoint: str,
    batch: int = 10,
) -> None:
    for start in range(0, len(rows), batch):
        chunk, pchunk = rows[start : start + batch], preds[start : start + batch]
        ce_id = new_id()
        request = {"inputs": [{"name": "input-0", "shape": list(chunk.shape), "datatype": "FP64", "data": chunk.ravel().tolist()}]}
        response = {"model_name": model, "outputs": [{"name": "output-0", "shape": [len(pchunk)], "datatype": "INT64", "data": pchunk}]}
        for ce_type, payload in ((REQUEST, request), (RESPONSE, response)):
            headers = kserve_headers(ce_id=ce_id, ce_type=ce_type, model=model, namespace=NS, endpoint=endpoint, annotations=ann)
            r = post(http, svc, headers, payload)
            assert r.status_code == 200, r.text


def test_canary_divergence_compares_canary_with_stable_predictions(
    monitor: Service, http: httpx.Client, cancer_baseline_uri: str
) -> None:
    rng = np.random.default_rng(5)
    stable_preds = rng.choice([0, 1], 300, p=[0.37, 0.63]).tolist()
    for model, canary_p in (("fraud", [0.9, 0.1]), ("steady", [0.37, 0.63])):
        send_v2(http, monitor, model, drifted_rows(300, 3), stable_preds, annotations(cancer_baseline_uri, "7"), "default")
        canary_preds = rng.choice([0, 1], 300, p=canary_p).tolist()
        send_v2(http, monitor, model, drifted_rows(300, 4), canary_preds, annotations(cancer_baseline_uri, "8"), "canary")

    def divergence(model: str) -> float | None:
        found = metrics(http, monitor, "kanari_canary_divergence", namespace=NS, model=model, method="psi")
        return found[0][1] if found else None

    assert wait_for(lambda: divergence("fraud"), "canary divergence of fraud") > 0.5
    assert wait_for(lambda: divergence("steady"), "canary divergence of steady") < 0.1
    # stable and canary windows are kept apart, each under its own model version
    revisions = {(lab["endpoint"], lab["revision"]) for lab, _ in metrics(http, monitor, "kanari_feature_drift", model="fraud")}
    assert revisions == {("default", "7"), ("canary", "8")}


def test_structured_mode_named_columns_and_schema_violations(
    monitor: Service, http: httpx.Client, cancer_baseline_uri: str
) -> None:
    ann = annotations(cancer_baseline_uri, "7")
    rows = drifted_rows(5, seed=6)
    instances = [dict(zip(FEATURES, r.tolist(), strict=True)) for r in rows]
    for inst in instances:
        inst.pop("worst area")  # missing column
        inst["customer_id"] = "c-1"  # extra column
    instances[0]["mean texture"] = "high"  # type mismatch
    headers = kserve_headers(ce_id=new_id(), ce_type=REQUEST, model="schema", namespace=NS, annotations=ann)
    body = structured_body(headers, {"instances": instances})
    r = http.post(f"{monitor.url}/", headers={"Content-Type": "application/cloudevents+json"}, content=body)
    assert r.status_code == 200, r.text
    violations = {lab["kind"]: v for lab, v in metrics(http, monitor, "kanari_schema_violations_total", model="schema")}
    assert violations == {"missing_column": 5, "extra_column": 5, "type_mismatch": 1}


def test_static_config_is_the_fallback_for_events_without_annotations(monitor: Service, http: httpx.Client) -> None:
    send_v1(http, monitor, "legacy", drifted_rows(200, seed=7), [1] * 200, {}, namespace="ml-static")
    found = wait_for(lambda: metrics(http, monitor, "kanari_feature_drift", namespace="ml-static", model="legacy"), "drift")
    assert {lab["revision"] for lab, _ in found} == {"3"}  # the version from the config file
    # ml-prod/legacy is not in the config: only ml-static/legacy is
    r = post(http, monitor, kserve_headers(ce_id=new_id(), ce_type=REQUEST, model="legacy", namespace=NS), {"instances": []})
    assert r.status_code == 404 and r.json()["outcome"] == "unknown_model"


def test_bad_events_get_4xx_and_a_counter_never_a_crash(
    monitor: Service, http: httpx.Client, cancer_baseline_uri: str
) -> None:
    ann = annotations(cancer_baseline_uri, "7")
    good = kserve_headers(ce_id=new_id(), ce_type=REQUEST, model="cancer", namespace=NS, annotations=ann)
    cases = [
        (good, b"{not json", 400, "malformed"),
        ({k: v for k, v in good.items() if k != "Ce-Id"}, b'{"instances": [[1]]}', 400, "malformed"),
        ({**good, "Ce-Type": "com.example.other"}, b'{"instances": [[1]]}', 400, "malformed"),
        (good, b'{"rows": [[1, 2]]}', 400, "malformed"),
        (good, json.dumps({"inputs": [{"name": "x", "shape": [2, 3], "datatype": "FP64", "data": [1, 2]}]}).encode(), 400, "malformed"),
        ({**good, "Ce-Annotations": "{broken"}, b'{"instances": [[1]]}', 400, "malformed"),
        (good, b'{"instances": [' + b"[1.0]," * 60_000 + b"[1.0]]}", 413, "oversized"),
        (kserve_headers(ce_id="x", ce_type=REQUEST, model="nobody", namespace=NS), b'{"instances": [[1]]}', 404, "unknown_model"),
        (kserve_headers(ce_id="y", ce_type=REQUEST, model="gone", namespace=NS,
                        annotations=annotations(cancer_baseline_uri + "-missing", "9")), b'{"instances": [[1]]}', 503,
         "baseline_unavailable"),
    ]
    before = {lab["outcome"]: v for lab, v in metrics(http, monitor, "kanari_drift_events_total")}
    for headers, body, status, outcome in cases:
        r = http.post(f"{monitor.url}/", headers=headers, content=body)
        assert r.status_code == status, (outcome, r.text)
        assert r.json()["outcome"] == outcome
        assert r.json().get("error")
    after = {lab["outcome"]: v for lab, v in metrics(http, monitor, "kanari_drift_events_total")}
    assert after["malformed"] - before.get("malformed", 0) == 6
    assert after["oversized"] - before.get("oversized", 0) == 1
    assert after["unknown_model"] - before.get("unknown_model", 0) == 1
    assert "s3://kanari-baselines/breast-cancer/v7/baseline-missing" in r.json()["error"]
    assert http.get(f"{monitor.url}/healthz").status_code == 200


# ------------------------------------------------------------------------------ in-process, bounds
def make_monitor(baseline_dir: Path, **overrides: Any) -> DriftMonitor:
    settings_ = MonitorSettings(**{"window_size": 100, "min_samples": 10, **overrides})
    return DriftMonitor(settings_, static=StaticBaselines.from_file(_static_config(baseline_dir)))


def _static_config(baseline_dir: Path) -> Path:
    path = baseline_dir.parent / "static-bounds.yaml"
    path.write_text(f"baselines:\n  ns/m: file://{baseline_dir}\n" + "".join(f"  ns/m{i}: file://{baseline_dir}\n" for i in range(20)))
    return path


def test_memory_is_bounded_whatever_the_load(cancer_baseline_dir: Path) -> None:
    monitor = make_monitor(cancer_baseline_dir, max_models=3, max_pending=50)
    row = json.dumps({"instances": [drifted_rows(1, 9)[0].tolist()]}).encode()

    async def flood() -> None:
        for i in range(600):
            headers = kserve_headers(ce_id=f"req-{i}", ce_type=REQUEST, model=f"m{i % 10}", namespace="ns")
            status, body = await monitor.handle(headers, row)
            assert status == 200, body
        monitor.evaluate()

    asyncio.run(flood())
    assert len(monitor.windows) == 3  # least recently used models dropped
    assert len(monitor.pending) <= 50  # requests whose responses never come
    # unpaired requests still reached their windows when pushed out of the pending map
    assert sum(w.window.samples for w in monitor.windows.values()) > 0
    exported = {lab["model"] for lab, _ in metric_samples(_text(monitor), "kanari_feature_drift")}
    assert exported <= {w.key.model for w in monitor.windows.values()}


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    body=st.one_of(st.binary(max_size=300), st.recursive(
        st.none() | st.booleans() | st.floats() | st.text(max_size=5) | st.integers(),
        lambda c: st.lists(c, max_size=4) | st.dictionaries(st.sampled_from(["instances", "inputs", "shape", "data", "x"]), c, max_size=4),
        max_leaves=12,
    ).map(lambda v: json.dumps(v).encode())),
    ce_type=st.sampled_from([REQUEST, RESPONSE, "x"]),
)
def test_fuzzed_events_never_crash(cancer_baseline_dir: Path, body: bytes, ce_type: str) -> None:
    monitor = make_monitor(cancer_baseline_dir)
    headers = kserve_headers(ce_id="f", ce_type=ce_type, model="m", namespace="ns")
    status, answer = asyncio.run(monitor.handle(headers, body))
    assert status == 200 or 400 <= status < 500, answer
    monitor.evaluate()


def _text(monitor: DriftMonitor) -> str:
    from prometheus_client import generate_latest

    return generate_latest(monitor.registry).decode()


def test_percent_encoded_extension_values_are_read() -> None:
    # The CloudEvents HTTP binding lets senders percent-encode header values; some sdk-go releases do.
    from kanari.monitor.payload import parse_event

    headers = kserve_headers(ce_id="p", ce_type=RESPONSE, model="m", namespace="ns")
    headers["Ce-Annotations"] = "%7B%22kanari.dev%2Fbaseline-uri%22%3A%22s3%3A%2F%2Fb%2Fbase%22%7D"
    event = parse_event(headers, b'{"predictions": [1]}')
    assert event.annotations == {"kanari.dev/baseline-uri": "s3://b/base"}
    assert (event.kind, event.endpoint, event.component) == ("response", "default", "predictor")


def test_cli_runs_the_services_and_rejects_bad_settings(capsys: pytest.CaptureFixture[str]) -> None:
    from kanari.cli.main import main

    assert main(["drift", "monitor", "--window-size", "0"]) == 2
    assert "window_size: must be at least 1" in capsys.readouterr().err
    assert main(["drift", "receiver", "--config", "/nonexistent.yaml"]) == 2
    assert "/nonexistent.yaml: unreadable" in capsys.readouterr().err
