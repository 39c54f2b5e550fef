"""Both HTTP surfaces on the trust boundary, fuzzed over real HTTP on loopback: random headers and bodies
(random bytes, and JSON shaped like the real payloads so the parsers are reached) never get a 5xx, never
crash the service, and leave the state within its bounds."""

from __future__ import annotations

import asyncio
import json
import resource
import socket
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from aiohttp import web
from drift_testlib import REQUEST, RESPONSE, kserve_headers
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from kanari.monitor.registry import ModelRegistry
from kanari.monitor.server import DriftMonitor
from kanari.monitor.server import build_app as monitor_app
from kanari.monitor.settings import MonitorSettings
from kanari.retrain.history import FileTriggerStore
from kanari.retrain.launchers import LaunchRequest
from kanari.retrain.receiver import RetrainReceiver
from kanari.retrain.receiver import build_app as receiver_app

from devstack.stack import free_port

pytestmark = pytest.mark.timeout(120)
TOKEN = "fuzz-token"
FUZZ = settings(max_examples=250, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


class Served:
    """An aiohttp app on 127.0.0.1 in its own thread and loop, for the length of a test module."""

    def __init__(self, app: web.Application):
        self.app = app
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.loop = asyncio.new_event_loop()
        self.errors: list[BaseException] = []
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.set_exception_handler(lambda _loop, ctx: self.errors.append(ctx.get("exception") or RuntimeError(ctx["message"])))
        runner = web.AppRunner(self.app, access_log=None, keepalive_timeout=5)
        self.loop.run_until_complete(runner.setup())
        self.loop.run_until_complete(web.TCPSite(runner, "127.0.0.1", self.port).start())
        self._runner = runner
        self._ready.set()
        self.loop.run_forever()
        self.loop.run_until_complete(runner.cleanup())

    def __enter__(self) -> Served:
        self._thread.start()
        assert self._ready.wait(10)
        return self

    def __exit__(self, *exc: object) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)


def post(url: str, path: str, headers: dict[str, str], body: bytes) -> tuple[int, bytes]:
    """One request over a raw socket: header bytes go on the wire as generated (an HTTP client library
    would refuse some of them, and an attacker does not use one)."""
    host, port = url.removeprefix("http://").split(":")
    head = [f"POST {path} HTTP/1.1", "Host: fuzz", f"Content-Length: {len(body)}", "Connection: close"]
    head += [f"{k}: {v}" for k, v in headers.items()]
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    status_line, _, rest = data.partition(b"\r\n")
    return int(status_line.split()[1]), rest.partition(b"\r\n\r\n")[2]


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


json_leaf = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=6)
json_value = st.recursive(
    json_leaf,
    lambda c: st.lists(c, max_size=5) | st.dictionaries(
        st.sampled_from(["instances", "inputs", "outputs", "predictions", "shape", "data", "name", "datatype", "x"]) | st.text(max_size=4),
        c, max_size=5),
    max_leaves=25,
)
shape = st.lists(st.integers(min_value=0, max_value=2**40) | st.sampled_from([0, 1, 2, 30, 2**32]), min_size=0, max_size=4)
tensor = st.fixed_dictionaries({"name": st.text(max_size=4), "shape": shape, "datatype": st.sampled_from(["FP64", "INT64", "BYTES"]),
                                "data": st.lists(json_leaf, max_size=12) | json_value})
payload = st.one_of(
    st.fixed_dictionaries({"instances": st.lists(st.lists(json_leaf, max_size=31) | st.dictionaries(st.text(max_size=8), json_leaf, max_size=4), max_size=6)}),
    st.fixed_dictionaries({"inputs": st.lists(tensor, max_size=3)}),
    st.fixed_dictionaries({"outputs": st.lists(tensor, max_size=2)}),
    st.fixed_dictionaries({"predictions": st.lists(json_leaf | st.lists(json_leaf, max_size=4), max_size=6)}),
    json_value,
)
header_text = st.text(st.characters(min_codepoint=0x09, max_codepoint=0xFF, blacklist_characters="\r\n"), max_size=40)
extra_headers = st.dictionaries(st.sampled_from(["Ce-Annotations", "Ce-Metadata", "Ce-Endpoint", "Ce-Specversion", "Content-Type",
                                                 "Ce-Inferenceservicename", "Ce-Namespace", "Ce-Id", "X-Junk"]) | st.from_regex(r"[A-Za-z][A-Za-z0-9-]{0,20}", fullmatch=True),
                                header_text, max_size=4)


@pytest.fixture(scope="module")
def monitor_service(cancer_baseline_dir: Path) -> Iterator[tuple[Served, DriftMonitor]]:
    from test_drift_monitor import md_object

    models = ModelRegistry()
    models.replace(md_object(m, f"file://{cancer_baseline_dir}", "1", namespace="ml") for m in ("fraud", "churn"))
    monitor = DriftMonitor(MonitorSettings(window_size=100, min_samples=5, max_models=4, max_pending=64,
                                           max_event_bytes=64 * 1024, max_rows_per_event=200, max_baseline_failures=8),
                           models)
    with Served(monitor_app(monitor)) as served:
        yield served, monitor


@FUZZ
@given(body=st.binary(max_size=400) | payload.map(lambda v: json.dumps(v).encode()),
       ce_type=st.sampled_from([REQUEST, RESPONSE, "x", ""]), model=st.sampled_from(["fraud", "churn", "junk", ""]),
       endpoint=st.sampled_from(["default", "canary", "other"]), extra=extra_headers,
       structured=st.booleans())
def test_monitor_never_answers_5xx(monitor_service: tuple[Served, DriftMonitor], body: bytes, ce_type: str, model: str,
                                   endpoint: str, extra: dict[str, str], structured: bool) -> None:
    served, monitor = monitor_service
    headers = {**kserve_headers(ce_id="fz", ce_type=ce_type, model=model, namespace="ml", endpoint=endpoint), **extra}
    if structured:
        headers["Content-Type"] = "application/cloudevents+json"
    status, answer = post(served.url, "/", headers, body)
    assert status < 500, answer
    if status != 400 or answer.startswith(b"{"):  # aiohttp's own 400 (unparseable HTTP) is plain text
        assert json.loads(answer)["outcome"]
    asyncio.run_coroutine_threadsafe(_evaluate(monitor), served.loop).result(10)
    assert not served.errors, served.errors


async def _evaluate(monitor: DriftMonitor) -> None:
    monitor.evaluate()


def test_monitor_state_stays_within_its_bounds_after_the_fuzzing(monitor_service: tuple[Served, DriftMonitor]) -> None:
    served, monitor = monitor_service
    before = _rss_mb()
    for i in range(2000):  # and a flood of distinct hostile names on top
        headers = kserve_headers(ce_id=f"h{i}", ce_type=REQUEST, model=f"junk-{i}", namespace=f"ns-{i}",
                                 annotations={"kanari.dev/baseline-uri": f"s3://b/{i}"})
        assert post(served.url, "/", headers, b'{"instances": [[1]]}')[0] == 404
    s = monitor.settings
    assert len(monitor.windows) <= s.max_models and len(monitor.pending) <= s.max_pending
    assert monitor.cache.failures <= s.max_baseline_failures and len(monitor.cache) <= s.max_baselines
    assert {k.model for k in monitor.windows} <= {"fraud", "churn"}
    assert _rss_mb() - before < 50


class _Launcher:
    def __init__(self) -> None:
        self.runs = 0

    def launch(self, request: LaunchRequest) -> str:
        self.runs += 1
        return f"run-{self.runs}"


@pytest.fixture(scope="module")
def receiver_service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Served, RetrainReceiver]]:
    from kanari.api.v1alpha1 import RetrainSpec

    store = FileTriggerStore(tmp_path_factory.mktemp("fuzz-receiver") / "triggers.json")
    models = {"ml/fraud": RetrainSpec(pipeline="p", cooldown="0s", maxPerDay=100)}
    receiver = RetrainReceiver(TOKEN, store, _Launcher(), models, max_runs_per_hour=10**6,
                               clock=lambda: datetime(2026, 11, 27, 12, tzinfo=UTC))
    with Served(receiver_app(receiver, max_body=64 * 1024)) as served:
        yield served, receiver


label_value = st.sampled_from(["ml", "fraud", "true", "x\x00y", "", "Fraud"]) | st.text(max_size=10)
am_alert = st.fixed_dictionaries(
    {"status": st.sampled_from(["firing", "resolved", ""]) | st.integers(),
     "labels": st.dictionaries(st.sampled_from(["alertname", "namespace", "model", "kanari_retrain", "severity"]) | st.text(max_size=5),
                               label_value, max_size=6),
     "annotations": st.dictionaries(st.sampled_from(["retrain_pipeline", "retrain_cooldown", "summary"]), label_value, max_size=3),
     "startsAt": st.sampled_from(["2026-11-27T11:00:00Z", "2026-11-27T11:00:00.123456789Z", "yesterday", ""]),
     "fingerprint": st.text(max_size=8)},
)
webhook = st.fixed_dictionaries({"version": st.sampled_from(["4", 4, "3"]), "alerts": st.lists(am_alert, max_size=5)}) | json_value


@FUZZ
@given(body=st.binary(max_size=300) | webhook.map(lambda v: json.dumps(v).encode()),
       auth=st.sampled_from([f"Bearer {TOKEN}", f"bearer {TOKEN}", "Bearer nope", "", f"Basic {TOKEN}"]) | header_text,
       extra=st.dictionaries(st.from_regex(r"X-[A-Za-z0-9-]{1,12}", fullmatch=True), header_text, max_size=3))
def test_receiver_never_answers_5xx(receiver_service: tuple[Served, RetrainReceiver], body: bytes, auth: str,
                                    extra: dict[str, str]) -> None:
    served, _ = receiver_service
    status, answer = post(served.url, "/alerts", {"Authorization": auth, **extra}, body)
    assert status < 500, answer
    if answer.startswith(b"{"):
        doc = json.loads(answer)
        assert "error" in doc or "results" in doc
    assert not served.errors, served.errors
