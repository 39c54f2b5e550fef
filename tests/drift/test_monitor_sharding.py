"""Monitor replicas share the load by model: each model's window lives in exactly one replica, whichever
replica an event lands on, and an event takes at most one hop. Properties of the hash, two real monitor
processes on loopback, and the chart's StatefulSet rendering."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st
from kanari.monitor.sharding import (
    FORWARDED_HEADER,
    ShardSettings,
    jump_hash,
    ordinal_from_hostname,
    owner,
    peer_urls,
    routing_key,
)

from devstack.stack import free_port
from tests.drift.drift_testlib import (
    REQUEST,
    RESPONSE,
    Service,
    cancer_frame,
    kserve_headers,
    metric_samples,
    new_id,
    structured_body,
    wait_for,
)

pytestmark = pytest.mark.timeout(180)
names = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), min_size=1, max_size=40)


@given(ns=names, model=names, replicas=st.integers(1, 64))
def test_every_model_has_exactly_one_owner_in_range(ns: str, model: str, replicas: int) -> None:
    o = owner(ns, model, replicas)
    assert 0 <= o < replicas
    assert owner(ns, model, replicas) == o


@given(key=st.integers(0, 2**64 - 1), replicas=st.integers(1, 200))
def test_adding_a_replica_moves_keys_only_to_it(key: int, replicas: int) -> None:
    before, after = jump_hash(key, replicas), jump_hash(key, replicas + 1)
    assert after in (before, replicas)


def test_the_hash_is_the_same_in_every_process() -> None:
    models = [("ml-prod", f"model-{i}") for i in range(50)]
    code = "import json,sys; from kanari.monitor.sharding import owner; print(json.dumps([owner(n, m, 7) for n, m in json.load(sys.stdin)]))"
    out = subprocess.run(
        [sys.executable, "-c", code], input=json.dumps(models), capture_output=True, text=True, check=True,
        env={**os.environ, "PYTHONHASHSEED": "12345"},
    )
    assert json.loads(out.stdout) == [owner(n, m, 7) for n, m in models]


def test_load_is_shared() -> None:
    counts = [0, 0]
    for i in range(4000):
        counts[owner(f"ns-{i % 13}", f"model-{i}", 2)] += 1
    assert min(counts) > 1800


def test_routing_reads_binary_and_structured_events_and_forwards_once() -> None:
    headers = kserve_headers(ce_id="1", ce_type=REQUEST, model="m", namespace="n")
    assert routing_key(headers, b"{}") == ("n", "m")
    assert routing_key({k.lower(): v for k, v in headers.items()}, b"{}") == ("n", "m")
    structured = {"Content-Type": "application/cloudevents+json; charset=utf-8"}
    assert routing_key(structured, structured_body(headers, {"instances": []})) == ("n", "m")
    assert routing_key(structured, b"not json") is None
    assert routing_key({}, b"{}") is None
    from kanari.monitor.sharding import Shards
    from prometheus_client import CollectorRegistry, Counter

    registry = CollectorRegistry()
    shards = Shards(ShardSettings(("http://a/", "http://b/"), 0), registry, Counter("e", "e", ["outcome"], registry=registry))
    model = next(f"m{i}" for i in range(100) if owner("n", f"m{i}", 2) == 1)
    h = kserve_headers(ce_id="1", ce_type=REQUEST, model=model, namespace="n")
    assert shards.route_to(h, b"{}") == 1
    assert shards.route_to({**h, FORWARDED_HEADER: "1"}, b"{}") is None  # never a second hop


def test_bad_shard_settings_are_named() -> None:
    with pytest.raises(ValueError, match="replica ordinal: 2"):
        ShardSettings(("http://a/", "http://b/"), 2)
    with pytest.raises(ValueError, match=r"peers\[1\]"):
        ShardSettings(("http://a/", "ftp://b/"), 0)
    with pytest.raises(ValueError, match="hostname 'monitor'"):
        ordinal_from_hostname("monitor")
    assert ordinal_from_hostname("kanari-drift-monitor-3") == 3


# ------------------------------------------------------------------------------------- two processes
API_TOKEN = "shard-test-token"


def start_replicas(work: Path, config: Path, n: int = 2) -> list[Service]:
    ports = [free_port() for _ in range(n)]
    peers = ",".join(f"http://127.0.0.1:{p}/" for p in ports)
    services = []
    for i, port in enumerate(ports):
        log = work / f"replica-{i}.log"
        proc = subprocess.Popen(
            [sys.executable, "-m", "kanari.monitor.server", "--port", str(port), "--host", "127.0.0.1", "--config", str(config),
             "--evaluate-interval", "0.2", "--min-samples", "5", "--peers", peers, "--replica-ordinal", str(i)],
            stdout=log.open("wb"), stderr=subprocess.STDOUT, env={**os.environ, "KANARI_MONITOR_API_TOKEN": API_TOKEN},
        )
        services.append(Service(proc, f"http://127.0.0.1:{port}", log))
    for svc in services:
        wait_for(lambda s=svc: _healthy(s), f"{svc.url} ready", timeout=30)
    return services


def _healthy(svc: Service) -> bool:
    if svc.proc.poll() is not None:
        raise RuntimeError(svc.tail())
    try:
        return httpx.get(f"{svc.url}/healthz", timeout=1).status_code == 200
    except httpx.TransportError:
        return False


@pytest.fixture(scope="module")
def replicas(cancer_baseline_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[Service]]:
    work = tmp_path_factory.mktemp("shards")
    config = work / "baselines.yaml"
    models = {f"ml-prod/model-{i}": f"file://{cancer_baseline_dir}" for i in range(8)}
    config.write_text(json.dumps({"baselines": models}))
    services = start_replicas(work, config)
    yield services
    for svc in services:
        svc.stop()
        assert "Traceback" not in svc.tail(), svc.tail()


def test_events_for_one_model_always_reach_the_same_replica(replicas: list[Service]) -> None:
    rows = cancer_frame().drop(columns=["target"]).to_numpy()
    sent: dict[str, int] = {}
    forwarded = 0
    with httpx.Client(timeout=10) as http:
        for i in range(160):
            model = f"model-{i % 8}"
            ce_id = new_id()
            for k, (ce_type, payload) in enumerate(((REQUEST, {"instances": [rows[i].tolist()]}), (RESPONSE, {"predictions": [i % 2]}))):
                entry = replicas[(i + k) % 2]  # the two halves of a pair often land on different replicas
                r = http.post(f"{entry.url}/", headers=kserve_headers(ce_id=ce_id, ce_type=ce_type, model=model, namespace="ml-prod"),
                              content=json.dumps(payload).encode())
                assert r.status_code == 200, r.text
                expected_owner = owner("ml-prod", model, 2)
                assert r.json().get("replica", replicas.index(entry)) == expected_owner
                forwarded += entry is not replicas[expected_owner]
            sent[model] = sent.get(model, 0) + 1

        def windows() -> dict[str, tuple[int, float]] | None:
            found: dict[str, tuple[int, float]] = {}
            for ordinal, svc in enumerate(replicas):
                for labels, value in metric_samples(http.get(f"{svc.url}/metrics").text, "kanari_drift_window_samples"):
                    assert labels["model"] not in found, f"{labels['model']} has windows in two replicas"
                    found[labels["model"]] = (ordinal, value)
            return found if len(found) == 8 and all(v == sent[m] for m, (_, v) in found.items()) else None

        found = wait_for(windows, "every model's window in its owner")
        assert {m: o for m, (o, _) in found.items()} == {m: owner("ml-prod", m, 2) for m in sent}
        assert len({o for o, _ in found.values()}) == 2  # both replicas own some models
        hops = sum(
            v for svc in replicas
            for labels, v in metric_samples(http.get(f"{svc.url}/metrics").text, "kanari_drift_forwarded_events_total")
            if labels["outcome"] == "ok"
        )
        assert hops == forwarded > 0


def test_recent_requests_are_read_from_the_owner_whichever_replica_is_asked(replicas: list[Service]) -> None:
    """The ring lives with the model's window, in its owner; the other replica asks the owner once, with the
    caller's token (a wrong token is refused by the owner just the same)."""
    auth = {"Authorization": f"Bearer {API_TOKEN}"}
    with httpx.Client(timeout=10) as http:
        for i in range(8):
            model = f"model-{i}"
            answers = [http.get(f"{svc.url}/v1/recent-requests/ml-prod/{model}?limit=3", headers=auth) for svc in replicas]
            assert [a.status_code for a in answers] == [200, 200], [a.text for a in answers]
            assert answers[0].json() == answers[1].json()
            assert len(answers[0].json()["requests"]) == 3
            wrong = [http.get(f"{svc.url}/v1/recent-requests/ml-prod/{model}", headers={"Authorization": "Bearer x"})
                     for svc in replicas]
            assert [w.status_code for w in wrong] == [401, 401]


def test_an_unreachable_owner_is_reported_not_accepted(replicas: list[Service], tmp_path: Path, cancer_baseline_dir: Path) -> None:
    # A second "replica" that no process serves: its models' events cannot be delivered.
    config = tmp_path / "baselines.yaml"
    config.write_text(json.dumps({"baselines": {f"ml-prod/m{i}": f"file://{cancer_baseline_dir}" for i in range(100)}}))
    dead = free_port()
    peers = [f"{replicas[0].url}/", f"http://127.0.0.1:{dead}/"]
    log = tmp_path / "solo.log"
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "kanari.monitor.server", "--port", str(port), "--host", "127.0.0.1", "--peers", ",".join(peers),
         "--replica-ordinal", "0", "--config", str(config)],
        stdout=log.open("wb"), stderr=subprocess.STDOUT,
    )
    svc = Service(proc, f"http://127.0.0.1:{port}", log)
    try:
        wait_for(lambda: _healthy(svc), "solo replica ready", timeout=30)
        model = next(f"m{i}" for i in range(100) if owner("ml-prod", f"m{i}", 2) == 1)
        r = httpx.post(f"{svc.url}/", headers=kserve_headers(ce_id="x", ce_type=REQUEST, model=model, namespace="ml-prod"),
                       content=b'{"instances": [[1.0]]}', timeout=20)
        assert r.status_code == 503 and r.json()["outcome"] == "owner_unreachable"
        dropped = metric_samples(httpx.get(f"{svc.url}/metrics").text, "kanari_drift_events_total")
        assert ({"outcome": "owner_unreachable"}, 1.0) in dropped
    finally:
        svc.stop()


# ------------------------------------------------------------------------------------------------ chart
def test_chart_runs_two_sharded_replicas_as_a_statefulset() -> None:
    from tests.delivery.delivery_schemas import render_chart, validate

    objs = render_chart("--set", "driftMonitor.replicas=2")
    for obj in objs:
        validate(obj)
    sts = next(o for o in objs if o["kind"] == "StatefulSet" and o["metadata"]["name"] == "kanari-drift-monitor")
    assert not [o for o in objs if o["kind"] == "Deployment" and o["metadata"]["name"] == "kanari-drift-monitor"]
    headless = next(o for o in objs if o["kind"] == "Service" and o["metadata"]["name"] == sts["spec"]["serviceName"])
    assert headless["spec"]["clusterIP"] == "None"
    assert headless["spec"]["selector"].items() <= sts["spec"]["template"]["metadata"]["labels"].items()
    assert sts["spec"]["replicas"] == 2
    command = sts["spec"]["template"]["spec"]["containers"][0]["command"]
    peers = command[command.index("--peers") + 1].split(",")
    assert peers == list(peer_urls("kanari-drift-monitor", headless["metadata"]["name"], "kanari-system", 8080, 2))
    # The payload loggers' Service still reaches every replica; peers may reach each other.
    assert any(o["kind"] == "Service" and o["metadata"]["name"] == "kanari-drift-monitor" for o in objs)
    policy = next(o for o in objs if o["kind"] == "NetworkPolicy" and o["metadata"]["name"] == "kanari-drift-monitor")
    selector = sts["spec"]["selector"]["matchLabels"]
    assert any(p.get("podSelector", {}).get("matchLabels") == selector for rule in policy["spec"]["ingress"] for p in rule["from"])
    assert any(p.get("podSelector", {}).get("matchLabels") == selector for rule in policy["spec"]["egress"] for p in rule.get("to", []))
    tls = render_chart("--set", "driftMonitor.replicas=2", "--set", "tls.enabled=true", "--set", "tls.certManager.issuerRef.name=ca")
    tls_sts = next(o for o in tls if o["kind"] == "StatefulSet")
    tls_cmd = tls_sts["spec"]["template"]["spec"]["containers"][0]["command"]
    assert all(p.startswith("https://") for p in tls_cmd[tls_cmd.index("--peers") + 1].split(","))
    assert tls_cmd[tls_cmd.index("--peer-ca-file") + 1] == "/var/run/kanari/tls/ca.crt"
    cert = next(o for o in tls if o["kind"] == "Certificate")
    assert "*.kanari-drift-monitor-peers.kanari-system.svc" in cert["spec"]["dnsNames"]
    single = render_chart("--set", "driftMonitor.replicas=1")
    assert any(o["kind"] == "Deployment" and o["metadata"]["name"] == "kanari-drift-monitor" for o in single)
    assert not [o for o in single if o["kind"] == "StatefulSet"]


def _tls_files(where: Path) -> tuple[Path, Path, Path]:
    """A CA and a server certificate for 127.0.0.1, as cert-manager would issue them (cryptography)."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.UTC)
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kanari-test-ca")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(1).not_valid_before(now).not_valid_after(now + datetime.timedelta(hours=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True).sign(ca_key, hashes.SHA256()))
    cert = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "monitor")]))
            .issuer_name(ca_name).public_key(key.public_key()).serial_number(2).not_valid_before(now)
            .not_valid_after(now + datetime.timedelta(hours=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
            .sign(ca_key, hashes.SHA256()))
    paths = where / "ca.crt", where / "tls.crt", where / "tls.key"
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    return paths


def test_the_hop_between_replicas_is_verified_https_when_tls_is_on(tmp_path: Path, cancer_baseline_dir: Path) -> None:
    ca, crt, key = _tls_files(tmp_path)
    config = tmp_path / "baselines.yaml"
    config.write_text(json.dumps({"baselines": {f"ml-prod/m{i}": f"file://{cancer_baseline_dir}" for i in range(50)}}))
    ports = [free_port(), free_port()]
    peers = ",".join(f"https://127.0.0.1:{p}/" for p in ports)
    services = []
    for i, port in enumerate(ports):
        log = tmp_path / f"tls-{i}.log"
        proc = subprocess.Popen(
            [sys.executable, "-m", "kanari.monitor.server", "--port", str(port), "--host", "127.0.0.1", "--config", str(config),
             "--peers", peers, "--replica-ordinal", str(i), "--peer-ca-file", str(ca), "--tls-cert-file", str(crt),
             "--tls-key-file", str(key), "--evaluate-interval", "0.2", "--min-samples", "1"],
            stdout=log.open("wb"), stderr=subprocess.STDOUT,
        )
        services.append(Service(proc, f"https://127.0.0.1:{port}", log))
    try:
        with httpx.Client(verify=str(ca), timeout=10) as http:
            for svc in services:
                wait_for(lambda s=svc: s.proc.poll() is None and _get_ok(http, f"{s.url}/healthz"), "https replica", timeout=30)
            model = next(f"m{i}" for i in range(50) if owner("ml-prod", f"m{i}", 2) == 1)
            r = http.post(f"{services[0].url}/", headers=kserve_headers(ce_id="t1", ce_type=REQUEST, model=model, namespace="ml-prod"),
                          content=json.dumps({"instances": [cancer_frame().drop(columns=["target"]).iloc[0].tolist()]}).encode())
            assert r.status_code == 200 and r.json()["replica"] == 1, r.text
    finally:
        for svc in services:
            svc.stop()


def _get_ok(http: httpx.Client, url: str) -> bool:
    try:
        return http.get(url).status_code == 200
    except httpx.TransportError:
        return False
