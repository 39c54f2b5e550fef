"""The Prometheus client against a local HTTP server: auth headers, SigV4, retries, errors, config."""

from __future__ import annotations

import asyncio
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from kanari.rollout.prometheus import (
    ConfigError,
    PrometheusClient,
    PrometheusConfig,
    PrometheusQueryError,
    PrometheusUnavailable,
)

pytestmark = pytest.mark.timeout(30)
VECTOR = {"status": "success", "data": {"resultType": "vector",
                                        "result": [{"metric": {"a": "b"}, "value": [1, "0.5"]}]}}


class Server:
    """Answers each POST with the next (status, body) from `answers` and records what it got."""

    def __init__(self, answers):
        self.answers = list(answers)
        self.seen: list[tuple[str, dict[str, str], bytes]] = []
        outer = self

        class H(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                outer.seen.append((self.path, dict(self.headers.items()), body))
                status, payload = outer.answers.pop(0) if len(outer.answers) > 1 else outer.answers[0]
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *a):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()


@pytest.fixture
def server(request):
    s = Server(getattr(request, "param", [(200, VECTOR)]))
    yield s
    s.close()


def query(config, promql="up"):
    async def go():
        async with PrometheusClient(config) as c:
            return await c.query(promql), c
    return asyncio.run(go())


def test_sigv4_signature_is_botocores(server, monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDEXAMPLE")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY")
    monkeypatch.delenv("AWS_SESSION_TOKEN", raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")
    samples, _ = query(PrometheusConfig(url=server.url + "/workspaces/ws-1", sigv4_region="eu-west-1"))
    assert samples[0].value == 0.5 and samples[0].labels == {"a": "b"}
    path, headers, body = server.seen[0]
    assert path == "/workspaces/ws-1/api/v1/query"
    auth = headers["Authorization"]
    assert auth.startswith("AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/")
    assert "/eu-west-1/aps/aws4_request" in auth
    # Recompute the signature with botocore from what the server received (same signed headers and date).
    signed = auth.split("SignedHeaders=")[1].split(",")[0].split(";")
    assert {"host", "x-amz-date"} <= set(signed)
    received = {k.lower(): v for k, v in headers.items()}
    expected = AWSRequest(method="POST", url=server.url + path, data=body,
                          headers={k: received[k] for k in signed if k != "host"})
    expected.context["timestamp"] = received["x-amz-date"]
    signer = SigV4Auth(Credentials("AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY"), "aps", "eu-west-1")
    string_to_sign = signer.string_to_sign(expected, signer.canonical_request(expected))
    assert auth.endswith("Signature=" + signer.signature(string_to_sign, expected))


def test_bearer_token_file_and_extra_headers(server, tmp_path):
    token = tmp_path / "token"
    token.write_text("s3cret\n")
    env = {"KANARI_PROMETHEUS_URL": server.url, "KANARI_PROMETHEUS_HEADERS": "X-Scope-OrgID=team-a, X-Extra=1",
           "KANARI_PROMETHEUS_BEARER_TOKEN_FILE": str(token)}
    query(PrometheusConfig.from_env(env))
    _, headers, body = server.seen[0]
    assert headers["Authorization"] == "Bearer s3cret"
    assert headers["X-Scope-OrgID"] == "team-a" and headers["X-Extra"] == "1"
    assert body == b"query=up"


@pytest.mark.parametrize("server", [[(503, {}), (502, {}), (200, VECTOR)]], indirect=True)
def test_5xx_is_retried_then_answers(server):
    samples, client = query(PrometheusConfig(url=server.url, backoff=0.01))
    assert samples[0].value == 0.5 and client.requests == 3 and client.queries == 1


@pytest.mark.parametrize("server", [[(503, {"error": "overloaded"})]], indirect=True)
def test_persistent_5xx_raises_unavailable(server):
    with pytest.raises(PrometheusUnavailable, match="503.*after 3 attempts"):
        query(PrometheusConfig(url=server.url, backoff=0.01, attempts=3))


def test_connection_refused_raises_unavailable():
    from devstack.stack import free_port
    with pytest.raises(PrometheusUnavailable, match="ConnectError"):
        query(PrometheusConfig(url=f"http://127.0.0.1:{free_port()}", backoff=0.01, attempts=2))


@pytest.mark.parametrize(
    "server", [[(400, {"status": "error", "errorType": "bad_data", "error": "parse error at char 5"})]], indirect=True
)
def test_bad_query_raises_with_prometheus_message_without_retry(server):
    with pytest.raises(PrometheusQueryError, match="bad_data: parse error at char 5"):
        query(PrometheusConfig(url=server.url, backoff=0.01))
    assert len(server.seen) == 1


@pytest.mark.parametrize(("env", "field"), [
    ({}, "KANARI_PROMETHEUS_URL"),
    ({"KANARI_PROMETHEUS_URL": "prometheus:9090"}, "KANARI_PROMETHEUS_URL"),
    ({"KANARI_PROMETHEUS_URL": "http://p", "KANARI_PROMETHEUS_HEADERS": "novalue"}, "KANARI_PROMETHEUS_HEADERS"),
    ({"KANARI_PROMETHEUS_URL": "http://p", "KANARI_PROMETHEUS_BEARER_TOKEN_FILE": "/no/such"},
     "KANARI_PROMETHEUS_BEARER_TOKEN_FILE"),
])
def test_bad_settings_name_the_variable(env, field):
    with pytest.raises(ConfigError, match=field):
        PrometheusConfig.from_env(env)
