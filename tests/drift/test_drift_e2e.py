"""The whole loop on loopback: KServe-shaped events into the drift monitor, a real Prometheus scraping it
and evaluating the generated rule, a real Alertmanager delivering the alert to the retraining receiver,
which starts the training command once."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from drift_testlib import (
    REQUEST,
    RESPONSE,
    Service,
    cancer_frame,
    kserve_headers,
    new_id,
    start_service,
    wait_for,
    write_rule_file,
)
from kanari.api.v1alpha1 import parse_model_deployment
from kanari.scrape import DEFAULT_MONITOR_JOB

from devstack.stack import ScrapeTarget, running, start_alertmanager, start_prometheus

pytestmark = [pytest.mark.prometheus, pytest.mark.timeout(120)]

NS, MODEL = "ml-prod", "fraud-scorer"
TOKEN = "e2e-token-9f8e7d"


@pytest.fixture
def services(tmp_path: Path, monitor_env: dict[str, str], cancer_baseline_uri: str) -> Iterator[tuple[Service, Service, Path]]:
    # The monitor's own config names the one model it takes events for (no operator in this test).
    (tmp_path / "baselines.yaml").write_text(json.dumps({"baselines": {f"{NS}/{MODEL}": {"uri": cancer_baseline_uri, "version": "7"}}}))
    monitor = start_service(
        "kanari.monitor.server", ["--window-size", "300", "--min-samples", "200", "--evaluate-interval", "0.2",
                                  "--config", str(tmp_path / "baselines.yaml")],
        tmp_path / "monitor", env=monitor_env,
    )
    marker = tmp_path / "retrain-runs.txt"
    script = "import sys; open(sys.argv[1], 'a').write(sys.argv[2] + '\\n')"
    (tmp_path / "token").write_text(TOKEN)
    (tmp_path / "receiver.yaml").write_text(json.dumps({
        "launcher": {"command": {"argv": [sys.executable, "-c", script, str(marker), "{namespace}/{model}:{alertname}"],
                                 "logDir": str(tmp_path / "logs")}},
        "store": {"file": str(tmp_path / "triggers.json")},
        # The policy is the receiver's (or the ModelDeployment's), never the alert's annotations.
        "models": {f"{NS}/{MODEL}": {"pipeline": "fraud-training", "cooldown": "1h", "maxPerDay": 2}},
    }))
    receiver = start_service(
        "kanari.retrain.receiver", ["--config", str(tmp_path / "receiver.yaml"), "--token-file", str(tmp_path / "token")],
        tmp_path / "receiver",
    )
    try:
        yield monitor, receiver, marker
    finally:
        monitor.stop()
        receiver.stop()
    assert TOKEN not in receiver.tail()


def test_drift_alert_starts_one_retraining_run(
    tmp_path: Path, services: tuple[Service, Service, Path], cancer_baseline_uri: str
) -> None:
    monitor, receiver, marker = services
    md = parse_model_deployment({
        "apiVersion": "kanari.dev/v1alpha1", "kind": "ModelDeployment",
        "metadata": {"name": MODEL, "namespace": NS},
        "spec": {
            "model": {"storageUri": "s3://models/fraud/7", "format": "sklearn"},
            "serving": {"accelerator": "cpu"},
            "monitoring": {
                "drift": {"method": "linf", "warn": 0.15, "critical": 0.3, "for": "2s"},
                "retrain": {"pipeline": "fraud-training", "cooldown": "1h", "maxPerDay": 2},
            },
        },
    })
    rules = write_rule_file([md], tmp_path / "rules" / "kanari-drift.yml")
    am_config: dict[str, Any] = {
        "route": {
            "receiver": "blackhole", "group_by": ["alertname", "namespace", "model", "feature"],
            "group_wait": "1s", "group_interval": "1s", "repeat_interval": "2s",
            "routes": [{"receiver": "kanari-retrain", "matchers": ['kanari_retrain="true"']}],
        },
        "receivers": [
            {"name": "blackhole"},
            {"name": "kanari-retrain", "webhook_configs": [{
                "url": f"{receiver.url}/alerts", "send_resolved": True,
                "http_config": {"authorization": {"type": "Bearer", "credentials_file": str(tmp_path / "token")}},
            }]},
        ],
    }
    am = start_alertmanager(tmp_path / "am", am_config)
    prom = start_prometheus(
        tmp_path / "prom", [ScrapeTarget(DEFAULT_MONITOR_JOB, [monitor.url.removeprefix("http://")])], [rules], am.url,
    )
    with running(am, prom):
        df = cancer_frame()
        features = [c for c in df.columns if c != "target"]
        rows = df[features].sample(300, replace=True, random_state=11).to_numpy(copy=True)
        rows[:, features.index("mean radius")] += 3 * df["mean radius"].std()
        preds = df["target"].sample(300, replace=True, random_state=12).tolist()
        ann = {"kanari.dev/baseline-uri": cancer_baseline_uri, "kanari.dev/model-version": "7"}
        with httpx.Client(timeout=10) as http:
            for row, pred in zip(rows, preds, strict=True):
                ce_id = new_id()
                for ce_type, payload in ((REQUEST, {"instances": [row.tolist()]}), (RESPONSE, {"predictions": [pred]})):
                    headers = kserve_headers(ce_id=ce_id, ce_type=ce_type, model=MODEL, namespace=NS, annotations=ann)
                    assert http.post(monitor.url, headers=headers, content=json.dumps(payload)).status_code == 200

        lines = wait_for(lambda: marker.exists() and marker.read_text().splitlines(), "a retraining run", timeout=60)
        assert lines == [f"{NS}/{MODEL}:KanariFeatureDriftCritical"]

        def firing() -> list[dict[str, Any]]:
            alerts = httpx.get(f"{prom.url}/api/v1/alerts").json()["data"]["alerts"]
            return [a for a in alerts if a["state"] == "firing" and a["labels"]["alertname"] == "KanariFeatureDriftCritical"]

        alert = wait_for(firing, "the firing alert in Prometheus")[0]
        assert alert["labels"]["feature"] == "mean radius"
        assert alert["labels"]["kanari_retrain"] == "true"
        history = json.loads((tmp_path / "triggers.json").read_text())["models"][f"{NS}/{MODEL}"]
        assert [(h["alert"], h["outcome"]) for h in history] == [("KanariFeatureDriftCritical", "Started")]
        # Alertmanager re-sends the firing alert (repeat_interval 2s): recognised, not started twice.
        metrics = wait_for(
            lambda: 'kanari_retrain_decisions_total{reason="duplicate"}' in (t := httpx.get(f"{receiver.url}/metrics").text) and t,
            "a repeated notification", timeout=30,
        )
        assert 'kanari_retrain_decisions_total{reason="trigger"} 1.0' in metrics
    assert marker.read_text().splitlines() == [f"{NS}/{MODEL}:KanariFeatureDriftCritical"]
