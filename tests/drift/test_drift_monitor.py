"""The drift monitor as a real process over HTTP, fed CloudEvents shaped exactly as KServe's payload
logger sends them, with its baseline in S3 (moto server on loopback) and the models it may take events
for read from ModelDeployments on an API server (kmock's emulator)."""

from __future__ import annotations

import asyncio
import json
import select
import socket
import subprocess
import sys
import time
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
from kanari.monitor.registry import ModelRegistry, from_static_file
from kanari.monitor.server import DriftMonitor
from kanari.monitor.settings import MonitorSettings

from tests.support.slowloris import held_open_seconds

pytestmark = pytest.mark.timeout(120)

NS = "ml-prod"
FEATURES = [c for c in cancer_frame().columns if c != "target"]
MAX_EVENT_BYTES = 2_000_000
# Monitored models of the process tests: name -> (stable version, canary version or None)
MODELS = {"cancer": ("7", None), "cancer-quiet": ("1", None), "fraud": ("7", "8"), "steady": ("7", "8"),
          "schema": ("7", None), "big": ("7", None)}


def md_object(name: str, baseline_uri: str, stable: str, canary: str | None = None, namespace: str = NS,
              enabled: bool = True, mode: str = "RawDeployment") -> dict[str, Any]:
    """A ModelDeployment as the API server returns it once the controller has rolled it out."""
    def ref(version: str) -> dict[str, str]:
        return {"revision": f"rev-{version}", "version": version, "storageUri": f"s3://models/{name}/{version}/"}

    status: dict[str, Any] = {"stableModel": ref(stable)}
    if canary:
        status["canaryModel"] = ref(canary)
    return {
        "apiVersion": "kanari.dev/v1alpha1", "kind": "ModelDeployment",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"model": {"storageUri": f"s3://models/{name}/{canary or stable}/", "format": "sklearn"},
                 "serving": {"deploymentMode": mode},
                 "monitoring": {"enabled": enabled, "baselineUri": baseline_uri, "drift": {"windowSize": 400}}},
        "status": status,
    }


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    from tests.operator import harness

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(harness, "CRD_FILES", tuple(p for p in harness.CRD_FILES if p.name.startswith("kanari.dev")))
        with harness.Cluster(tmp_path_factory.mktemp("apiserver")) as c:
            yield c


def create_md(cluster: Any, obj: dict[str, Any]) -> None:
    """Create the ModelDeployment, then write its status as the controller would (status subresource)."""
    from kanari.api import v1alpha1 as api

    from tests.operator.harness import Kube

    kube = Kube(cluster, obj["metadata"]["namespace"])
    kube.create_md(obj["metadata"]["name"], obj["spec"])
    kube.custom.patch_namespaced_custom_object_status(
        api.GROUP, api.VERSION, obj["metadata"]["namespace"], api.PLURAL, obj["metadata"]["name"],
        {"status": obj["status"]},
    )


@pytest.fixture(scope="module")
def monitor(
    monitor_env: dict[str, str], cancer_baseline_uri: str, cluster: Any, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Service]:
    work = tmp_path_factory.mktemp("monitor")
    for name, (stable, canary) in MODELS.items():
        create_md(cluster, md_object(name, cancer_baseline_uri, stable, canary))
    # monitoring switched off: no events taken, whatever they say
    create_md(cluster, md_object("unmonitored", cancer_baseline_uri, "7", enabled=False))
    create_md(cluster, md_object("gone", cancer_baseline_uri + "-missing", "9"))
    svc = start_service(
        "kanari.monitor.server",
        ["--kubernetes", "--min-samples", "200", "--evaluate-interval", "0.2", "--header-timeout", "1",
         "--body-timeout", "3", "--max-event-bytes", str(MAX_EVENT_BYTES)],
        work,
        env={**monitor_env, "KUBECONFIG": str(cluster.kubeconfig)},
    )
    wait_for(lambda: httpx.get(f"{svc.url}/healthz").json()["models"] == len(MODELS) + 1, "the ModelDeployments listed")
    yield svc
    svc.stop()
    assert "Traceback" not in svc.tail(), svc.tail()


@pytest.fixture(scope="module")
def http() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=10) as client:
        yield client


def annotations(uri: str, version: str) -> dict[str, str]:
    # what KServe forwards; the baseline URI in it is ignored (the ModelDeployment says which baseline)
    return {"kanari.dev/baseline-uri": uri, "kanari.dev/model-version": version, "kanari.dev/revision": f"rev-{version}"}


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
        (good, b'{"instances": [' + b"[1.0]," * 60_000 + b"[1.0]]}", 413, "oversized"),  # rows per event
        (good, b'{"instances": [' + b"[1.0]," * 400_000 + b"[1.0]]}", 413, "oversized"),
        (kserve_headers(ce_id="x", ce_type=REQUEST, model="nobody", namespace=NS), b'{"instances": [[1]]}', 404, "unknown_model"),
        (kserve_headers(ce_id="y", ce_type=REQUEST, model="gone", namespace=NS), b'{"instances": [[1]]}', 503,
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
    assert after["oversized"] - before.get("oversized", 0) == 2
    assert after["unknown_model"] - before.get("unknown_model", 0) == 1
    # the caller learns the baseline is unavailable, not where the monitor looked
    assert "kanari-baselines" not in r.text and "missing" not in r.text and "s3://" not in r.text
    assert "kanari-baselines/breast-cancer/v7/baseline-missing" in monitor.tail()
    assert http.get(f"{monitor.url}/healthz").status_code == 200


# ------------------------------------------------------------------------------ in-process, bounds
def make_monitor(baseline_dir: Path, names: int = 20, **overrides: Any) -> DriftMonitor:
    settings_ = MonitorSettings(**{"window_size": 100, "min_samples": 10, **overrides})
    return DriftMonitor(settings_, from_static_file(_static_config(baseline_dir, names)))


def _static_config(baseline_dir: Path, names: int) -> Path:
    path = baseline_dir.parent / f"static-bounds-{names}.yaml"
    path.write_text(f"baselines:\n  ns/m: file://{baseline_dir}\n" + "".join(f"  ns/m{i}: file://{baseline_dir}\n" for i in range(names)))
    return path


def test_static_config_binds_models_for_installs_without_the_operator(cancer_baseline_dir: Path) -> None:
    config = cancer_baseline_dir.parent / "legacy.yaml"
    config.write_text(json.dumps({"baselines": {"ml-static/legacy": {"uri": f"file://{cancer_baseline_dir}", "version": "3"}}}))
    monitor = DriftMonitor(MonitorSettings(min_samples=10, max_pending=1), from_static_file(config))
    row = json.dumps({"instances": [drifted_rows(1, 9)[0].tolist()]}).encode()

    async def feed() -> list[int]:
        out = []
        for i, ns in enumerate(["ml-static"] * 20 + [NS]):
            status, _ = await monitor.handle(kserve_headers(ce_id=f"s{i}", ce_type=REQUEST, model="legacy", namespace=ns), row)
            out.append(status)
        monitor.evaluate()
        return out

    statuses = asyncio.run(feed())
    assert statuses == [200] * 20 + [404]  # ml-prod/legacy is not in the config: only ml-static/legacy is
    assert {lab["revision"] for lab, _ in metric_samples(_text(monitor), "kanari_feature_drift")} == {"3"}


def test_waiting_halves_with_long_strings_count_their_size(cancer_baseline_dir: Path) -> None:
    """Regression: a waiting response half was counted at 16 bytes per prediction whatever the prediction, so
    events of one 3 MB string each were held by the thousand (max_pending) while max_pending_bytes saw 16 bytes."""
    bound = 1024 * 1024
    monitor = make_monitor(cancer_baseline_dir, max_pending_bytes=bound)
    body = json.dumps({"predictions": ["x" * 200_000]}).encode()

    async def feed() -> None:
        for i in range(30):
            status, _ = await monitor.handle(kserve_headers(ce_id=f"long{i}", ce_type=RESPONSE, model="m", namespace="ns"),
                                             body)
            assert status == 200
            held = sum(len(v) for p in monitor.pending.values() for v in p.response or [] if isinstance(v, str))
            assert held <= bound and monitor.pending_bytes <= bound

    asyncio.run(feed())


def test_made_up_endpoints_open_no_windows_and_evict_no_model(cancer_baseline_dir: Path) -> None:
    """Regression: the window key took ce-endpoint as sent, so events for one monitored model under 100 made-up
    endpoint names opened 100 windows and evicted every other model's window (the LRU attack, by another name)."""
    monitor = make_monitor(cancer_baseline_dir, max_models=3)
    row = json.dumps({"instances": [drifted_rows(1, 9)[0].tolist()]}).encode()

    async def feed() -> None:
        await monitor.handle(kserve_headers(ce_id="real", ce_type=REQUEST, model="m1", namespace="ns"), row)
        for i in range(100):
            headers = kserve_headers(ce_id=f"e{i}", ce_type=REQUEST, model="m", namespace="ns", endpoint=f"junk-{i}")
            await monitor.handle(headers, row)
        monitor.evaluate()

    asyncio.run(feed())
    assert {(k.model, k.endpoint) for k in monitor.windows} == {("m1", "default"), ("m", "default")}


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


# ------------------------------------------------------------------------------ trust boundary (issue 11)
def _host_port(svc: Service) -> tuple[str, int]:
    host, port = svc.url.removeprefix("http://").split(":")
    return host, int(port)


def _raw_request(svc: Service, head: bytes, parts: list[bytes], pause: float = 0.3, timeout: float = 10) -> bytes:
    """Send a request in several writes with pauses between them (as a slow network delivers it)."""
    with socket.create_connection(_host_port(svc), timeout=timeout) as sock:
        sock.sendall(head)
        for part in parts:
            time.sleep(pause)
            sock.sendall(part)
        return _read_response(sock)


def _read_response(sock: socket.socket) -> bytes:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            return data
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")), 0)
    while len(rest) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        rest += chunk
    return head + b"\r\n\r\n" + rest


def _head(headers: dict[str, str], length: int | None) -> bytes:
    lines = ["POST / HTTP/1.1", "Host: monitor", *(f"{k}: {v}" for k, v in headers.items())]
    lines.append(f"Content-Length: {length}" if length is not None else "Transfer-Encoding: chunked")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def test_whole_bodies_are_read_however_they_arrive(monitor: Service, http: httpx.Client, cancer_baseline_uri: str) -> None:
    ann = annotations(cancer_baseline_uri, "7")
    # A 1 MB event (4,400 rows): read in full, not cut at whatever was buffered.
    rows = drifted_rows(4400, seed=11)
    body = json.dumps({"instances": rows.tolist()}).encode()
    assert len(body) > 1_000_000
    r = post(http, monitor, kserve_headers(ce_id=new_id(), ce_type=REQUEST, model="big", namespace=NS, annotations=ann), body)
    assert r.status_code == 200, r.text
    # A 1.6 KB event arriving in two writes.
    small = json.dumps({"instances": drifted_rows(3, seed=12).tolist()}).encode()
    headers = kserve_headers(ce_id=new_id(), ce_type=REQUEST, model="big", namespace=NS, annotations=ann)
    answer = _raw_request(monitor, _head(headers, len(small)), [small[:700], small[700:]])
    assert answer.startswith(b"HTTP/1.1 200"), answer
    # 50 MB chunked (no Content-Length to refuse it by): 413 once the limit is passed, not 400.
    headers = kserve_headers(ce_id=new_id(), ce_type=REQUEST, model="big", namespace=NS)
    with socket.create_connection(_host_port(monitor), timeout=10) as sock:
        sock.sendall(_head(headers, None))
        chunk = b"%x\r\n%s\r\n" % (65536, b"[" * 0 + b"1" * 65536)
        sent = 0
        while sent < 50 * 1024 * 1024 and not select.select([sock], [], [], 0)[0]:
            try:
                sock.sendall(chunk)
            except (BrokenPipeError, ConnectionResetError):
                break
            sent += 65536
        answer = _read_response(sock)
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    assert sent < 4 * MAX_EVENT_BYTES  # refused as the limit was passed, not after reading 50 MB


def test_slow_clients_are_cut_off(monitor: Service, http: httpx.Client) -> None:
    # slowloris: headers a few bytes at a time never complete; the header timeout (1 s here) closes it
    held = held_open_seconds(*_host_port(monitor), "/")
    assert held is not None and held < 5, "a slowloris connection was held open"
    # a body that stops arriving: 408 after the body timeout (3 s here), counted
    headers = kserve_headers(ce_id=new_id(), ce_type=REQUEST, model="big", namespace=NS)
    with socket.create_connection(_host_port(monitor), timeout=10) as sock:
        sock.sendall(_head(headers, 1000) + b'{"instances": ')
        answer = _read_response(sock)
    assert answer.startswith(b"HTTP/1.1 408"), answer
    assert metrics(http, monitor, "kanari_drift_events_total", outcome="timeout")


HOSTILE = {
    "zero-width rows": json.dumps({"inputs": [{"name": "x", "shape": [20_000_000, 0], "datatype": "FP64", "data": []}]}),
    "overflowing shape": json.dumps({"inputs": [{"name": "x", "shape": [2**32, 2**32], "datatype": "FP64", "data": []}]}),
    "huge width": json.dumps({"inputs": [{"name": "x", "shape": [1, 2**62, 4], "datatype": "FP64", "data": [1]}]}),
    "10**400": '{"instances": [[' + "1" + "0" * 400 + "]]}",
    "1e400 in a prediction vector": '{"predictions": [[1, 1e400]]}',
    "100k deep": '{"instances": ' + "[" * 100_000 + "]" * 100_000 + "}",
}


@pytest.mark.parametrize("name", list(HOSTILE))
def test_hostile_payloads_get_4xx_fast_and_are_counted(monitor: Service, http: httpx.Client, name: str) -> None:
    before = sum(v for lab, v in metrics(http, monitor, "kanari_drift_events_total") if lab["outcome"] != "accepted")
    ce_type = RESPONSE if "prediction" in name else REQUEST
    started = time.monotonic()
    r = post(http, monitor, kserve_headers(ce_id=new_id(), ce_type=ce_type, model="cancer", namespace=NS), HOSTILE[name].encode())
    assert 400 <= r.status_code < 500 or (r.status_code == 200 and "1e400" in name), r.text
    assert time.monotonic() - started < 2  # checked against the data before anything is expanded
    assert http.get(f"{monitor.url}/healthz", timeout=2).status_code == 200
    after = sum(v for lab, v in metrics(http, monitor, "kanari_drift_events_total") if lab["outcome"] != "accepted")
    assert after - before == (0 if r.status_code == 200 else 1)


def test_invalid_json_in_structured_mode_is_a_counted_400(monitor: Service, http: httpx.Client) -> None:
    for body in (b"{not json", b'{"specversion": "1.0", "data": ' + b"[" * 5000 + b"]" * 5000 + b"}",
                 b'{"specversion": "1.0", "id": 1' + b"0" * 500 + b"}"):
        r = http.post(f"{monitor.url}/", headers={"Content-Type": "application/cloudevents+json"}, content=body)
        assert r.status_code == 400 and r.json()["outcome"] == "malformed", r.text


def test_events_are_taken_only_for_monitored_model_deployments(
    monitor: Service, http: httpx.Client, cluster: Any, cancer_baseline_uri: str
) -> None:
    row = {"instances": [drifted_rows(1, 13)[0].tolist()]}
    # not a ModelDeployment / monitoring off / another namespace's model of the same name: refused
    for ns, model in ((NS, "nobody"), (NS, "unmonitored"), ("other-team", "cancer")):
        r = post(http, monitor, kserve_headers(ce_id=new_id(), ce_type=REQUEST, model=model, namespace=ns,
                                               annotations={"kanari.dev/baseline-uri": "file:///etc"}), row)
        assert r.status_code == 404, r.text
        assert "/etc" not in r.text
    # the caller's baseline URI is ignored: the ModelDeployment's is used, so no path leaks and nothing resets
    r = post(http, monitor, kserve_headers(ce_id=new_id(), ce_type=REQUEST, model="cancer", namespace=NS,
                                           annotations={"kanari.dev/baseline-uri": "file:///etc"}), row)
    assert r.status_code == 200 and "/etc" not in r.text
    # the list is watched: a ModelDeployment created now is taken, deleted is refused again
    create_md(cluster, md_object("late", cancer_baseline_uri, "7"))
    wait_for(lambda: post(http, monitor, kserve_headers(ce_id=new_id(), ce_type=REQUEST, model="late", namespace=NS),
                          row).status_code == 200, "events for a new ModelDeployment accepted")
    from kanari.api import v1alpha1 as api

    from tests.operator.harness import Kube

    Kube(cluster, NS).custom.delete_namespaced_custom_object(api.GROUP, api.VERSION, NS, api.PLURAL, "late")
    wait_for(lambda: post(http, monitor, kserve_headers(ce_id=new_id(), ce_type=REQUEST, model="late", namespace=NS),
                          row).status_code == 404, "events for a deleted ModelDeployment refused")
    limits = {lab["kind"]: v for lab, v in metrics(http, monitor, "kanari_drift_limit")}
    assert limits["windows"] == 100 and limits["baseline_failures"] > 0 and limits["rows_per_event"] == 10_000


def _registry(baseline_dir: Path, names: list[str], namespace: str = "ns") -> ModelRegistry:
    registry = ModelRegistry()
    registry.replace(md_object(n, f"file://{baseline_dir}", "1", namespace=namespace) for n in names)
    return registry


def test_junk_names_cannot_evict_real_models_or_grow_state(cancer_baseline_dir: Path) -> None:
    real = ["real-a", "real-b", "real-c"]
    monitor = DriftMonitor(MonitorSettings(window_size=100, min_samples=10, max_models=3), _registry(cancer_baseline_dir, real))
    row = json.dumps({"instances": [drifted_rows(1, 9)[0].tolist() + ["extra"]]}).encode()

    async def flood() -> None:
        for i, name in enumerate(real):
            assert (await monitor.handle(kserve_headers(ce_id=f"r{i}", ce_type=REQUEST, model=name, namespace="ns"), row))[0] == 200
        for i in range(2000):
            headers = kserve_headers(ce_id=f"j{i}", ce_type=REQUEST, model=f"junk-{i}", namespace=f"ns-{i % 7}",
                                     annotations={"kanari.dev/baseline-uri": f"file:///tmp/junk-{i}"})
            assert (await monitor.handle(headers, row))[0] == 404
        monitor.evaluate()

    asyncio.run(flood())
    assert sorted(k.model for k in monitor.windows) == real
    assert monitor.cache.failures == 0 and len(monitor.cache) == 1  # junk never reached the baseline store
    violations = metric_samples(_text(monitor), "kanari_schema_violations_total")
    assert {lab["model"] for lab, _ in violations} == set(real)
    # a model whose ModelDeployment goes away loses its window and its series
    monitor.models.put("ns", "real-a", None)
    monitor.evaluate()
    assert {lab["model"] for lab, _ in metric_samples(_text(monitor), "kanari_schema_violations_total")} == {"real-b", "real-c"}
    state = {lab["kind"]: v for lab, v in metric_samples(_text(monitor), "kanari_drift_state")}
    assert state["windows"] == 2 and state["models"] == 2


def test_a_different_spelling_of_the_baseline_does_not_reset_a_window(cancer_baseline_dir: Path) -> None:
    monitor = DriftMonitor(MonitorSettings(window_size=100, min_samples=10, max_pending=1),
                           _registry(cancer_baseline_dir, ["m"]))
    row = json.dumps({"instances": [drifted_rows(1, 9)[0].tolist()]}).encode()

    async def feed() -> None:
        for i in range(30):
            spelling = f"file://{cancer_baseline_dir}" + ("/" * (i % 3)) + ("/statistics.json" if i % 2 else "")
            headers = kserve_headers(ce_id=f"e{i}", ce_type=REQUEST, model="m", namespace="ns",
                                     annotations={"kanari.dev/baseline-uri": spelling, "kanari.dev/model-version": str(i)})
            assert (await monitor.handle(headers, row))[0] == 200

    asyncio.run(feed())
    (state,) = monitor.windows.values()
    assert state.window.samples == 29 and state.key.revision == "1"  # the version the ModelDeployment declares


def test_the_baseline_failure_cache_is_bounded() -> None:
    from kanari.monitor.baseline_store import BaselineCache, BaselineRef, BaselineUnavailable

    def broken(uri: str) -> Any:
        raise BaselineUnavailable(f"{uri}: not found")

    cache = BaselineCache(loader=broken, max_failures=10)
    for i in range(1000):
        with pytest.raises(BaselineUnavailable):
            cache.get(BaselineRef(f"s3://b/{i}", ""))
    assert cache.failures == 10


def test_scipy_is_imported_at_start_not_in_the_first_evaluation() -> None:
    # A lazy import inside the first evaluation stalled the event loop (and /healthz) for about a second.
    code = "import sys, kanari.monitor.server; print('scipy.stats' in sys.modules and 'scipy.spatial.distance' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.strip() == "True"


def test_a_monitor_started_before_the_api_server_picks_up_model_deployments_later(
    monitor_env: dict[str, str], cancer_baseline_uri: str, cluster: Any, tmp_path: Path
) -> None:
    # The devstack starts the monitor before the cluster: the kubeconfig does not exist yet.
    kubeconfig = tmp_path / "later" / "kubeconfig"
    svc = start_service("kanari.monitor.server", ["--kubernetes", "--watch-namespace", "ml-late"], tmp_path / "svc",
                        env={**monitor_env, "KUBECONFIG": str(kubeconfig)})
    try:
        row = {"instances": [drifted_rows(1, 14)[0].tolist()]}
        headers = kserve_headers(ce_id=new_id(), ce_type=REQUEST, model="early", namespace="ml-late")
        assert httpx.post(svc.url, headers=headers, content=json.dumps(row)).status_code == 404
        assert httpx.get(f"{svc.url}/healthz").json()["modelsSynced"] is False
        create_md(cluster, md_object("early", cancer_baseline_uri, "7", namespace="ml-late"))
        create_md(cluster, md_object("elsewhere", cancer_baseline_uri, "7"))
        kubeconfig.parent.mkdir()
        kubeconfig.write_text(Path(cluster.kubeconfig).read_text())
        wait_for(lambda: httpx.post(svc.url, headers={**headers, "Ce-Id": new_id()}, content=json.dumps(row)).status_code == 200,
                 "events accepted once the API server is reachable", timeout=40)
        # only the watched namespace: ml-prod's models are not taken by this monitor
        other = kserve_headers(ce_id=new_id(), ce_type=REQUEST, model="elsewhere", namespace=NS)
        assert httpx.post(svc.url, headers=other, content=json.dumps(row)).status_code == 404
    finally:
        svc.stop()
    assert "Traceback" not in svc.tail()
