"""Delayed ground truth run by the drift monitor: predictions from KServe's payload-logger events, labels over
the authenticated endpoint and the S3 label drop (moto), realised quality and CBPE gauges on /metrics."""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from aiohttp.test_utils import TestClient, TestServer
from drift_testlib import RESPONSE, kserve_headers, metric_samples
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from kanari.judging.cbpe import fit_calibration
from kanari.monitor.labeldrop import LabelDrop, parse_file
from kanari.monitor.registry import ModelRegistry
from kanari.monitor.server import DriftMonitor, build_app
from kanari.monitor.settings import MonitorSettings
from prometheus_client import generate_latest

pytestmark = pytest.mark.timeout(120)

NS = "ml-prod"
TOKEN = "label-s3cret"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def md(name: str, baseline_dir: Path, *, ground_truth: dict[str, Any] | None,
       calibration: tuple[str, str] | None = None, version: str = "7") -> dict[str, Any]:
    ref = {"revision": f"rev-{version}", "version": version, "storageUri": f"s3://models/{name}/{version}/"}
    if calibration:  # (URI, SHA-256) as the controller copies them from the registry into status
        ref["calibrationUri"], ref["calibrationSha256"] = calibration
    monitoring: dict[str, Any] = {"baselineUri": f"file://{baseline_dir}"}
    if ground_truth is not None:
        monitoring["groundTruth"] = ground_truth
    return {"apiVersion": "kanari.dev/v1alpha1", "kind": "ModelDeployment",
            "metadata": {"name": name, "namespace": NS},
            "spec": {"model": {"storageUri": ref["storageUri"], "format": "sklearn"},
                     "serving": {"deploymentMode": "RawDeployment"}, "monitoring": monitoring},
            "status": {"stableModel": ref}}


def monitor_for(*objects: dict[str, Any], token: str = TOKEN, **overrides: Any) -> DriftMonitor:
    registry = ModelRegistry()
    registry.replace(objects)
    return DriftMonitor(MonitorSettings(**{"window_size": 500, "min_samples": 20, **overrides}), registry,
                        labels_token=token)


def gauges(monitor: DriftMonitor, name: str, model: str = "fraud") -> dict[str, float]:
    return {lab.get("metric", lab.get("revision", "")): v
            for lab, v in metric_samples(generate_latest(monitor.registry).decode(), name) if lab["model"] == model}


async def respond(monitor: DriftMonitor, model: str, ce_id: str, scores: list[Any]) -> None:
    headers = kserve_headers(ce_id=ce_id, ce_type=RESPONSE, model=model, namespace=NS)
    status, body = await monitor.handle(headers, json.dumps({"predictions": scores}).encode())
    assert status == 200, body


@pytest.fixture
async def client(cancer_baseline_dir: Path) -> AsyncIterator[tuple[TestClient, DriftMonitor]]:
    monitor = monitor_for(md("fraud", cancer_baseline_dir, ground_truth={"task": "binary", "threshold": 0.5}),
                          md("unlabelled", cancer_baseline_dir, ground_truth=None))
    c = TestClient(TestServer(build_app(monitor), host="127.0.0.1"))
    await c.start_server()
    yield c, monitor
    await c.close()


async def test_labels_join_logged_predictions_into_realised_quality(client: tuple[TestClient, DriftMonitor]) -> None:
    c, monitor = client
    # Ten one-row responses (id = ce-id) and one batch of four ([p0, p1] rows: the positive class's score).
    for k in range(10):
        await respond(monitor, "fraud", f"i{k}", [0.9 if k % 2 else 0.1])
    await respond(monitor, "fraud", "batch", [[0.2, 0.8], [0.7, 0.3], [0.1, 0.9], [0.6, 0.4]])
    labels = [{"id": f"i{k}", "label": 1 if k < 6 else 0} for k in range(10)]
    labels += [{"id": "batch/0", "label": 1}, {"id": "batch/1", "label": 1}]
    url = f"/v1/labels/{NS}/fraud"

    assert (await c.post(url, json={"labels": labels})).status == 401
    assert (await c.post(url, json={"labels": labels}, headers={"Authorization": "Bearer nope"})).status == 401
    bad = await c.post(url, json={"labels": [*labels, {"id": "x", "label": 7}]}, headers=AUTH)
    assert bad.status == 400 and "labels[12].label" in (await bad.json())["error"]
    assert gauges(monitor, "kanari_realised_quality") == {}, "a refused batch is not half-applied"
    assert (await c.post(f"/v1/labels/{NS}/unlabelled", json={"labels": labels}, headers=AUTH)).status == 404
    assert (await c.post(url, data=b"{not json", headers=AUTH)).status == 400
    big = await c.post(url, data=b"x" * (monitor.settings.max_label_bytes + 10), headers=AUTH)
    assert big.status == 413

    r = await c.post(url, json={"labels": labels}, headers=AUTH)
    assert (await r.json()) == {"accepted": 12, "joined": 12}
    again = await c.post(url, json={"labels": labels}, headers=AUTH)  # a retried batch
    assert (await again.json())["joined"] == 0
    monitor.evaluate()
    text = await (await c.get("/metrics")).text()
    quality = {lab["metric"]: v for lab, v in metric_samples(text, "kanari_realised_quality") if lab["revision"] == "7"}
    denominators = {lab["metric"]: v for lab, v in metric_samples(text, "kanari_realised_quality_denominator")}
    # Predicted positive: odd ids and batch/0; positives: ids 0-5, batch/0, batch/1
    # -> tp {1,3,5,batch/0} = 4, fn {0,2,4,batch/1} = 4, fp {7,9} = 2
    assert quality["recall"] == pytest.approx(0.5) and quality["precision"] == pytest.approx(4 / 6)
    assert denominators["recall"] == 8 and denominators["precision"] == 6
    assert {lab["reason"]: v for lab, v in metric_samples(text, "kanari_groundtruth_dropped_total")}["duplicate"] == 12


async def test_the_label_endpoint_is_off_without_a_token(cancer_baseline_dir: Path) -> None:
    monitor = monitor_for(md("fraud", cancer_baseline_dir, ground_truth={}), token="")
    c = TestClient(TestServer(build_app(monitor), host="127.0.0.1"))
    await c.start_server()
    try:
        r = await c.post(f"/v1/labels/{NS}/fraud", json={"labels": []}, headers={"Authorization": "Bearer "})
        assert r.status in (404, 405)
    finally:
        await c.close()


async def test_cbpe_is_unavailable_without_calibration_and_estimated_with_it(
    cancer_baseline_dir: Path, tmp_path: Path
) -> None:
    import numpy as np

    rng = np.random.default_rng(3)
    raw = rng.uniform(0, 1, 2000)
    truth = (rng.uniform(0, 1, 2000) < raw**2).astype(int)  # raw scores over-confident: P(y=1|s) = s^2
    body = json.dumps(fit_calibration(raw[:1000], truth[:1000]).to_dict()).encode()
    (tmp_path / "calibration.json").write_bytes(body)
    registered = (f"file://{tmp_path}/calibration.json", hashlib.sha256(body).hexdigest())
    monitor = monitor_for(
        md("fraud", cancer_baseline_dir, ground_truth={"task": "binary"}, calibration=registered),
        md("raw", cancer_baseline_dir, ground_truth={"task": "binary"}))
    for i, s in enumerate(raw[1000:1500]):
        await respond(monitor, "fraud", f"f{i}", [float(s)])
        await respond(monitor, "raw", f"r{i}", [float(s)])
    monitor.evaluate()
    assert gauges(monitor, "kanari_estimated_quality", "raw") == {}, "no calibration: no number"
    assert gauges(monitor, "kanari_estimated_quality_available", "raw") == {"7": 0.0}
    estimated = gauges(monitor, "kanari_estimated_quality")
    assert gauges(monitor, "kanari_estimated_quality_available") == {"7": 1.0}
    held = raw[1000:1500] >= 0.5
    realised_precision = truth[1000:1500][held].mean()
    assert estimated["precision"] == pytest.approx(realised_precision, abs=0.06)
    # A calibrated model that answers classes (0/1) has no scores: unavailable, not a number.
    classes = monitor_for(md("classes", cancer_baseline_dir, ground_truth={"task": "binary"},
                             calibration=registered))
    for i in range(50):
        await respond(classes, "classes", f"k{i}", [i % 2])
    classes.evaluate()
    assert gauges(classes, "kanari_estimated_quality", "classes") == {}
    assert gauges(classes, "kanari_estimated_quality_available", "classes") == {"7": 0.0}
    # Losing the ground-truth setting drops the model's series (bounded by the monitored models).
    monitor.models.replace([md("raw", cancer_baseline_dir, ground_truth={"task": "binary"})])
    monitor.evaluate()
    assert gauges(monitor, "kanari_estimated_quality") == {}


@pytest.mark.parametrize("digest", ["changed", "missing"])
async def test_a_calibration_whose_bytes_are_not_the_registered_ones_is_refused(
    cancer_baseline_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture, digest: str
) -> None:
    """Issue 16: the monitor read the calibration by URI alone. A file changed after registration (or a status
    without the digest) is refused through the one reader: no estimate, the reason logged and counted."""
    import numpy as np

    rng = np.random.default_rng(5)
    raw = rng.uniform(0, 1, 400)
    registered = json.dumps(fit_calibration(raw, (rng.uniform(0, 1, 400) < raw).astype(int)).to_dict()).encode()
    path = tmp_path / "calibration.json"
    # Someone rewrote the file after registration: still a valid calibration, not the one registered.
    path.write_text(json.dumps({"method": "isotonic", "x": [0.0, 1.0], "y": [0.0, 1.0]}))
    sha = hashlib.sha256(registered).hexdigest() if digest == "changed" else ""
    monitor = monitor_for(md("fraud", cancer_baseline_dir, ground_truth={"task": "binary"},
                             calibration=(f"file://{path}", sha)))
    for i, s in enumerate(raw[:100]):
        await respond(monitor, "fraud", f"f{i}", [float(s)])
    monitor.evaluate()
    assert gauges(monitor, "kanari_estimated_quality") == {}, "a refused calibration gives no estimate"
    assert gauges(monitor, "kanari_estimated_quality_available") == {"7": 0.0}
    refused = metric_samples(generate_latest(monitor.registry).decode(), "kanari_calibration_refused_total")
    assert {lab["reason"]: v for lab, v in refused} == {"refused": 1.0}, "fetched once, then retried later"
    why = "does not match kanari:calibration-sha256" if digest == "changed" else "kanari:calibration-sha256: missing"
    assert any("ml-prod/fraud refused" in r.getMessage() and why in r.getMessage() for r in caplog.records)
    # The registered bytes back in place: accepted once the retry interval has passed.
    path.write_bytes(registered)
    if digest == "changed":
        monitor.truth.calibration_failed = {k: v - 3600 for k, v in monitor.truth.calibration_failed.items()}
        await respond(monitor, "fraud", "again", [0.5])
        monitor.evaluate()
        assert gauges(monitor, "kanari_estimated_quality_available") == {"7": 1.0}


# ---------------------------------------------------------------------------------------- S3 drop
def _s3(endpoint: str) -> Any:
    return boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                        aws_access_key_id="testing", aws_secret_access_key="testing")


def test_label_files_are_parsed_or_refused_with_file_row_and_field() -> None:
    assert parse_file("p/a.jsonl", b'{"id": "a", "label": 1}\n\n{"id": "b", "label": 0}\n', "binary") == [
        ("a", 1.0), ("b", 0.0)]
    assert parse_file("p/a.csv", b"id,label,extra\na,1,x\nb,0,y\n", "binary") == [("a", 1.0), ("b", 0.0)]
    with pytest.raises(ValueError, match=r"p/a\.csv row 3\.label: 'yes' is not a number"):
        parse_file("p/a.csv", b"id,label\na,1\nb,yes\n", "binary")
    with pytest.raises(ValueError, match=r"p/a\.jsonl row 2\.label: 2 is not 0 or 1"):
        parse_file("p/a.jsonl", b'{"id": "a", "label": 1}\n{"id": "b", "label": 2}\n', "binary")
    with pytest.raises(ValueError, match=r"p/a\.jsonl row 1\.id"):
        parse_file("p/a.jsonl", b'{"label": 1}\n', "binary")
    with pytest.raises(ValueError, match=r"row 1: header lacks label"):
        parse_file("p/a.csv", b"id,score\na,1\n", "binary")


@pytest.fixture(scope="module")
def drop_bucket(s3_endpoint: str) -> str:
    _s3(s3_endpoint).create_bucket(Bucket="kanari-labels")
    return "kanari-labels"


async def test_s3_label_drop_joins_once_and_refuses_bad_files(
    s3_endpoint: str, drop_bucket: str, cancer_baseline_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    s3 = _s3(s3_endpoint)
    monitor = monitor_for(md("fraud", cancer_baseline_dir, ground_truth={"task": "binary"}))
    for k in range(6):
        await respond(monitor, "fraud", f"s{k}", [0.9 if k < 3 else 0.2])
    prefix = "drop1/"
    s3.put_object(Bucket=drop_bucket, Key=f"{prefix}{NS}/fraud/day1.jsonl",
                  Body="".join(json.dumps({"id": f"s{k}", "label": 1}) + "\n" for k in range(4)).encode())
    s3.put_object(Bucket=drop_bucket, Key=f"{prefix}{NS}/fraud/day2.csv", Body=b"id,label\ns4,1\ns5,oops\n")
    s3.put_object(Bucket=drop_bucket, Key=f"{prefix}{NS}/other/day1.jsonl", Body=b'{"id": "z", "label": 1}\n')
    s3.put_object(Bucket=drop_bucket, Key=f"{prefix}{NS}/fraud/README.txt", Body=b"not labels")
    drop = LabelDrop(f"s3://{drop_bucket}/{prefix}", monitor._labelled, 1 << 20, lambda: _s3(s3_endpoint))

    files = drop.poll()
    monitor.apply_label_files(files)
    assert sorted(f.key.rsplit("/", 1)[1] for f in files) == ["day1.jsonl", "day2.csv"], "other: not a labelled model"
    refused = next(f for f in files if f.error)
    assert refused.error == f"{prefix}{NS}/fraud/day2.csv row 3.label: 'oops' is not a number"
    monitor.evaluate()
    assert gauges(monitor, "kanari_realised_quality_denominator")["recall"] == 4
    assert gauges(monitor, "kanari_realised_quality")["recall"] == pytest.approx(3 / 4)

    assert drop.poll() == [], "a file already read at this ETag is not read again"
    # A fresh poller (a restarted monitor) reads everything again: the join store counts nothing twice.
    again = LabelDrop(f"s3://{drop_bucket}/{prefix}", monitor._labelled, 1 << 20, lambda: _s3(s3_endpoint))
    monitor.apply_label_files(again.poll())
    # The corrected file (a new ETag) is read.
    s3.put_object(Bucket=drop_bucket, Key=f"{prefix}{NS}/fraud/day2.csv", Body=b"id,label\ns4,1\ns5,0\n")
    monitor.apply_label_files(drop.poll())
    monitor.evaluate()
    assert gauges(monitor, "kanari_realised_quality_denominator")["recall"] == 5
    assert gauges(monitor, "kanari_realised_quality_denominator")["precision"] == 3

    # An unreachable drop raises (the server loop counts it and retries), never reads as empty.
    broken = LabelDrop(f"s3://no-such-bucket-{drop_bucket}/", monitor._labelled, 1 << 20, lambda: _s3(s3_endpoint))
    with pytest.raises(Exception, match="NoSuchBucket"):
        broken.poll()


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.tuples(st.integers(0, 4), st.lists(st.integers(0, 29), max_size=8), st.booleans()),
                min_size=1, max_size=8))
def test_any_sequence_of_writes_and_polls_counts_each_label_once(
    s3_endpoint: str, drop_bucket: str, cancer_baseline_dir: Path, ops: list[tuple[int, list[int], bool]]
) -> None:
    """Files written, overwritten and read again in any order: each id that has a prediction is joined
    exactly once, whatever the number of reads."""
    import uuid

    s3 = _s3(s3_endpoint)
    prefix = f"prop-{uuid.uuid4().hex[:8]}/"
    monitor = monitor_for(md("fraud", cancer_baseline_dir, ground_truth={"task": "binary"}))

    async def run() -> set[int]:
        for k in range(30):
            await respond(monitor, "fraud", f"p{k}", [0.9])
        drop = LabelDrop(f"s3://{drop_bucket}/{prefix}", monitor._labelled, 1 << 20, lambda: _s3(s3_endpoint))
        labelled: set[int] = set()
        for file_no, ids, restart in ops:
            body = "".join(json.dumps({"id": f"p{k}", "label": 1}) + "\n" for k in ids)
            s3.put_object(Bucket=drop_bucket, Key=f"{prefix}{NS}/fraud/f{file_no}.jsonl", Body=body.encode())
            labelled |= set(ids)
            if restart:
                drop = LabelDrop(f"s3://{drop_bucket}/{prefix}", monitor._labelled, 1 << 20, lambda: _s3(s3_endpoint))
            monitor.apply_label_files(drop.poll())
        return labelled

    labelled = asyncio.run(run())
    store = monitor.truth.stores[(NS, "fraud")][1]
    joined = store.quality["7"].joined if "7" in store.quality else 0
    assert joined == len(labelled)


def test_kanari_labels_push_sends_a_file_in_batches_and_refuses_a_bad_one(
    cancer_baseline_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The CLI against the monitor's real app on loopback: checked whole, then posted with the token."""
    import threading

    from aiohttp import web
    from kanari.cli import labels as labels_cli
    from kanari.cli.main import main

    from devstack.stack import free_port

    monitor = monitor_for(md("fraud", cancer_baseline_dir, ground_truth={"task": "binary"}))
    monkeypatch.setattr(labels_cli, "BATCH", 7)
    port = free_port()
    loop = asyncio.new_event_loop()
    runner = web.AppRunner(build_app(monitor))

    async def start() -> None:
        for k in range(20):
            await respond(monitor, "fraud", f"c{k}", [0.8])
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()

    loop.run_until_complete(start())
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        token = tmp_path / "token"
        token.write_text(TOKEN + "\n")
        good = tmp_path / "day1.jsonl"
        good.write_text("".join(json.dumps({"id": f"c{k}", "label": k % 2}) + "\n" for k in range(20)))
        argv = ["labels", "push", str(good), "fraud", "-n", NS, "--monitor", f"http://127.0.0.1:{port}",
                "--token-file", str(token)]
        assert main(argv) == 0
        assert "20 labels sent to ml-prod/fraud; 20 joined" in capsys.readouterr().out
        assert main(argv) == 0  # sent again: nothing counted twice
        assert monitor.truth.stores[(NS, "fraud")][1].quality["7"].joined == 20
        bad = tmp_path / "day2.csv"
        bad.write_text("id,label\nc1,1\nc2,maybe\n")
        assert main([*argv[:2], str(bad), *argv[3:]]) != 0
        assert "day2.csv row 3.label: 'maybe' is not a number" in capsys.readouterr().err
        token.write_text("wrong")
        assert main(argv) != 0
        assert "HTTP 401" in capsys.readouterr().err
    finally:
        asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)


async def test_labels_posted_to_any_replica_reach_the_model_s_owner(cancer_baseline_dir: Path) -> None:
    """Sharded monitors: a label batch lands on any replica and is forwarded once, token and all, to the replica
    holding the model's predictions."""
    from aiohttp import web
    from kanari.monitor.sharding import Shards, ShardSettings, owner
    from prometheus_client import Counter

    from devstack.stack import free_port

    name = next(f"fraud-{i}" for i in range(100) if owner(NS, f"fraud-{i}", 2) == 1)
    ports = [free_port(), free_port()]
    peers = tuple(f"http://127.0.0.1:{p}/" for p in ports)
    monitors, runners = [], []
    for ordinal, port in enumerate(ports):
        m = monitor_for(md(name, cancer_baseline_dir, ground_truth={"task": "binary"}))
        shards = Shards(ShardSettings(peers, ordinal), m.registry, Counter("e", "e", ["outcome"], registry=m.registry))
        runner = web.AppRunner(build_app(m, shards=shards))
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        monitors.append(m)
        runners.append(runner)
    try:
        for k in range(4):
            await respond(monitors[1], name, f"o{k}", [0.9])
        import aiohttp

        async with aiohttp.ClientSession() as session:
            body = {"labels": [{"id": f"o{k}", "label": 1} for k in range(4)]}
            url = f"{peers[0]}v1/labels/{NS}/{name}"
            async with session.post(url, json=body, headers=AUTH) as resp:
                assert resp.status == 200 and (await resp.json())["joined"] == 4
            async with session.post(url, json=body, headers={"Authorization": "Bearer wrong"}) as resp:
                assert resp.status == 401
        assert (NS, name) not in monitors[0].truth.stores, "the non-owner keeps nothing"
        assert monitors[1].truth.stores[(NS, name)][1].quality["7"].joined == 4
    finally:
        for runner in runners:
            await runner.cleanup()


async def test_revisions_no_longer_served_leave_no_state_behind(cancer_baseline_dir: Path) -> None:
    """Many versions over a model's life: the figures, score rings and series of versions no longer served go."""
    monitor = monitor_for(md("fraud", cancer_baseline_dir, ground_truth={"task": "binary"}, version="7"))
    for version in ("7", "8", "9"):
        monitor.models.replace([md("fraud", cancer_baseline_dir, ground_truth={"task": "binary"}, version=version)])
        for k in range(30):
            await respond(monitor, "fraud", f"v{version}-{k}", [0.7])
        monitor.handle_labels(NS, "fraud", json.dumps({"labels": [{"id": f"v{version}-{k}", "label": 1}
                                                                  for k in range(30)]}).encode())
        monitor.evaluate()
        assert set(gauges(monitor, "kanari_groundtruth_joined")) == {version}
        assert {k[2] for k in monitor.truth.scores} == {version}
        assert set(monitor.truth.stores[(NS, "fraud")][1].quality) == {version}
    quality = metric_samples(generate_latest(monitor.registry).decode(), "kanari_realised_quality")
    assert {lab["revision"] for lab, _ in quality} == {"9"}
