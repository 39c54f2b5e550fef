"""The CLI as a kubectl user expects it: global flags anywhere (also through `kubectl kanari`), `list`,
`status` with the InferenceService's revisions, and one line plus a documented exit code for every everyday
failure, run as the user runs it (a subprocess), never a traceback without -v."""

from __future__ import annotations

import http.server
import json
import os
import re
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from devstack.stack import free_port
from tests.operator.harness import Cluster, KServe, Kube, write_kubeconfig

pytestmark = pytest.mark.timeout(120)
ROOT = Path(__file__).resolve().parents[2]
NS = "ml"
OTHER_NS = "ml-other"
SPEC = {"model": {"storageUri": "s3://models/fraud/v2", "format": "sklearn"}, "serving": {"accelerator": "cpu"},
        "rollout": {"steps": [{"setWeight": 20}, {"pause": {}}]}}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    with Cluster(tmp_path_factory.mktemp("apiserver")) as c:
        yield c


@pytest.fixture(scope="module")
def kubeconfig(cluster: Cluster, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two contexts: the current one points at a dead port, `emulator` at the cluster with namespace ml."""
    path = tmp_path_factory.mktemp("kube") / "config"
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "dead",
        "clusters": [{"name": "emulator", "cluster": {"server": cluster.url}},
                     {"name": "dead", "cluster": {"server": f"http://127.0.0.1:{free_port()}"}}],
        "users": [{"name": "u", "user": {"token": "t"}}],
        "contexts": [{"name": "emulator", "context": {"cluster": "emulator", "user": "u", "namespace": NS}},
                     {"name": "dead", "context": {"cluster": "dead", "user": "u"}}],
    }))
    return path


@pytest.fixture(scope="module")
def objects(cluster: Cluster) -> dict[str, str]:
    """One ModelDeployment in each of two namespaces, the first mid-rollout with its InferenceService."""
    names = {NS: f"fraud-{uuid.uuid4().hex[:6]}", OTHER_NS: f"churn-{uuid.uuid4().hex[:6]}"}
    for ns, name in names.items():
        Kube(cluster, ns).create_md(name, SPEC)
    kube = Kube(cluster, NS)
    name = names[NS]
    kube.merge_patch(("kanari.dev", "v1alpha1", "modeldeployments"), name, {"status": {
        "phase": "Progressing", "currentStep": 1, "canaryWeight": 20,
        "stableModel": {"revision": "r1", "version": "v1", "storageUri": "s3://models/fraud/v1"},
        "canaryModel": {"revision": "r2", "version": "v2", "storageUri": "s3://models/fraud/v2"},
    }}, status=True)
    isvc = {"apiVersion": "serving.kserve.io/v1beta1", "kind": "InferenceService",
            "metadata": {"name": name, "namespace": NS},
            "spec": {"predictor": {"model": {"modelFormat": {"name": "sklearn"}, "storageUri": "s3://m/v1"}}}}
    kube.custom.create_namespaced_custom_object("serving.kserve.io", "v1beta1", NS, "inferenceservices", isvc)
    kserve = KServe(kube)
    kserve.reconcile(name)  # revision 1 rolled out
    kube.merge_patch(("serving.kserve.io", "v1beta1", "inferenceservices"), name, {"spec": {"predictor": {
        "canaryTrafficPercent": 20, "model": {"storageUri": "s3://m/v2"}}}})
    kserve.reconcile(name)  # revision 2 takes 20%
    return names


def kanari(*argv: str, env: dict[str, str] | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("KUBE", "AWS_"))}
    base.update(env or {})
    return subprocess.run([sys.executable, "-m", "kanari.cli.main", *argv], capture_output=True, text=True,
                          timeout=timeout, env=base, cwd=ROOT)


def one_line_error(proc: subprocess.CompletedProcess[str]) -> str:
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert lines[0].startswith("kanari: error: "), lines
    return lines[0]


def test_context_kubeconfig_and_namespace_flags_after_and_before_the_command(kubeconfig, objects):
    name = objects[NS]
    # --context picks the emulator (the current context is dead) and its namespace is the default.
    proc = kanari("status", name, "--kubeconfig", str(kubeconfig), "--context", "emulator")
    assert proc.returncode == 0, proc.stderr
    assert f"Name:        {name}  (namespace {NS})" in proc.stdout
    # The same flags before the command, and -n overriding the context's namespace.
    proc = kanari("--kubeconfig", str(kubeconfig), "--context", "emulator", "-n", OTHER_NS, "status", objects[OTHER_NS])
    assert proc.returncode == 0, proc.stderr
    # KUBECONFIG is what --kubeconfig defaults to.
    proc = kanari("list", "--context", "emulator", "-o", "name", env={"KUBECONFIG": str(kubeconfig)})
    assert proc.stdout.split() == [f"modeldeployment.kanari.dev/{name}"], proc.stderr


def test_kubectl_plugin_passes_global_flags_through(kubeconfig, objects):
    env = {**os.environ, "PATH": f"{ROOT / '.venv' / 'bin'}:{ROOT / '.tools' / 'bin'}:{os.environ['PATH']}"}
    for key in [k for k in env if k.startswith("KUBE")]:
        env.pop(key)
    run = subprocess.run(["kubectl", "kanari", "status", objects[NS], "--kubeconfig", str(kubeconfig),
                          "--context", "emulator", "-n", NS], env=env, capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    assert "Traffic:     stable 80%  canary 20%" in run.stdout


def test_list_shows_phase_weights_step_and_age_in_one_or_all_namespaces(kubeconfig, objects):
    flags = ("--kubeconfig", str(kubeconfig), "--context", "emulator")
    proc = kanari("list", *flags)
    assert proc.returncode == 0, proc.stderr
    header, *rows = proc.stdout.strip().splitlines()
    assert header.split() == ["NAME", "PHASE", "STABLE", "CANARY", "WEIGHT", "STEP", "AGE"]
    assert len(rows) == 1 and re.match(rf"{objects[NS]}\s+Progressing\s+v1\s+v2\s+80/20\s+1/2\s+\d+s$", rows[0]), rows
    proc = kanari("get", *flags, "-A", "-o", "wide")
    header, *rows = proc.stdout.strip().splitlines()
    assert header.split()[:2] == ["NAMESPACE", "NAME"] and header.split()[-3:] == ["STRATEGY", "READY", "MESSAGE"]
    assert {r.split()[0] for r in rows} >= {NS, OTHER_NS}
    doc = json.loads(kanari("list", *flags, "-A", "-o", "json").stdout)
    assert doc["kind"] == "List" and {i["metadata"]["name"] for i in doc["items"]} >= set(objects.values())
    assert yaml.safe_load(kanari("list", *flags, "-o", "yaml").stdout)["items"][0]["metadata"]["name"] == objects[NS]


def test_status_shows_the_inference_service_revisions_and_their_readiness(kubeconfig, objects):
    name = objects[NS]
    proc = kanari("status", name, "--kubeconfig", str(kubeconfig), "--context", "emulator")
    assert proc.returncode == 0, proc.stderr
    assert f"InferenceService: {name}  Ready=True" in proc.stdout
    assert re.search(rf"{name}-predictor-00001\s+stable\s+80%\s+True", proc.stdout), proc.stdout
    assert re.search(rf"{name}-predictor-00002\s+latest\s+20%\s+True", proc.stdout), proc.stdout
    doc = json.loads(kanari("status", name, "--kubeconfig", str(kubeconfig), "--context", "emulator",
                            "-o", "json").stdout)
    assert [(r["role"], r["traffic"]) for r in doc["inferenceService"]["revisions"]] == [("stable", 80), ("latest", 20)]
    # -A finds the one namespace holding that name, as kubectl get -A does.
    found = kanari("status", objects[OTHER_NS], "--kubeconfig", str(kubeconfig), "--context", "emulator", "-A")
    assert found.returncode == 0 and f"(namespace {OTHER_NS})" in found.stdout, found.stderr
    # Not created yet is said, not an error.
    other = kanari("status", objects[OTHER_NS], "--kubeconfig", str(kubeconfig), "--context", "emulator",
                   "-n", OTHER_NS)
    assert other.returncode == 0 and "InferenceService: not created yet" in other.stdout


class _Refusing(http.server.BaseHTTPRequestHandler):
    """An API server that authenticates nobody (401) or authorises nothing (403)."""

    code = 403

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        body = json.dumps({"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": self.code,
                           "reason": "Forbidden" if self.code == 403 else "Unauthorized",
                           "message": 'modeldeployments.kanari.dev "x" is forbidden: User "u" cannot get resource'
                           if self.code == 403 else "Unauthorized"}).encode()
        self.send_response(self.code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_PATCH = do_GET

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(params=[403, 401])
def refusing_server(request, tmp_path) -> Iterator[tuple[int, Path]]:
    handler = type("Handler", (_Refusing,), {"code": request.param})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    t = threading.Thread(target=server.serve_forever, daemon=True)
    t.start()
    try:
        yield request.param, write_kubeconfig(tmp_path / "kubeconfig", f"http://127.0.0.1:{server.server_port}")
    finally:
        server.shutdown()
        server.server_close()


def test_forbidden_and_unauthorized_are_one_line_with_their_codes(refusing_server):
    code, kubeconfig = refusing_server
    for argv in (("status", "x"), ("pause", "x"), ("list",)):
        proc = kanari(*argv, "--kubeconfig", str(kubeconfig), "-n", NS)
        line = one_line_error(proc)
        if code == 403:
            assert proc.returncode == 5 and "forbidden" in line, line
        else:
            assert proc.returncode == 6 and "unauthorized" in line, line


def test_everyday_kubernetes_failures_print_one_line_and_their_exit_code(kubeconfig, objects, tmp_path):
    flags = ("--kubeconfig", str(kubeconfig))
    cases = [
        # API server unreachable: the kubeconfig's current context points at a closed port.
        (("status", "x", *flags), 7, "unreachable"),
        (("list", "-A", *flags), 7, "unreachable"),
        # No credentials: no kubeconfig at all, or an unknown context.
        (("status", "x", "--kubeconfig", str(tmp_path / "missing")), 6, "no kubeconfig at"),
        (("list", *flags, "--context", "nope"), 6, "context 'nope' not found"),
        # Not found.
        (("status", "nope", *flags, "--context", "emulator"), 4, "modeldeployment nope not found in namespace ml"),
        (("promote", "nope", *flags, "--context", "emulator"), 4, "not found"),
        (("list", "nope", *flags, "--context", "emulator", "-A"), 4, "not found in any namespace"),
    ]
    for argv, code, text in cases:
        start = time.monotonic()
        proc = kanari(*argv)
        assert proc.returncode == code, (argv, proc.returncode, proc.stderr)
        assert text in one_line_error(proc), (argv, proc.stderr)
        assert time.monotonic() - start < 30, f"{argv}: an everyday failure must not hang"


def test_all_namespaces_refuses_an_ambiguous_name(cluster, kubeconfig, objects):
    twin = f"twin-{uuid.uuid4().hex[:6]}"
    for ns in (NS, OTHER_NS):
        Kube(cluster, ns).create_md(twin, SPEC)
    try:
        proc = kanari("pause", twin, "-A", "--kubeconfig", str(kubeconfig), "--context", "emulator")
        assert proc.returncode == 2
        assert f"modeldeployment {twin} exists in {NS}, {OTHER_NS}: choose one with -n" in one_line_error(proc)
    finally:
        for ns in (NS, OTHER_NS):
            Kube(cluster, ns).delete_md(twin)


def test_verbose_shows_the_traceback(kubeconfig):
    proc = kanari("status", "x", "--kubeconfig", str(kubeconfig), "-v")
    assert proc.returncode == 7 and "Traceback" in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("kanari: error: ")


def test_version_completion_and_a_fast_help():
    proc = kanari("--version")
    assert proc.returncode == 0 and re.fullmatch(r"kanari \S+\n", proc.stdout)
    for shell in ("bash", "zsh"):
        script = kanari("completion", shell).stdout
        assert "status" in script and "--kubeconfig" in script and "--all-namespaces" in script
    # bash accepts the script it is given.
    bash = subprocess.run(["bash", "-n"], input=kanari("completion", "bash").stdout, capture_output=True, text=True)
    assert bash.returncode == 0, bash.stderr
    # --help builds the whole parser: it must not pull in the heavy libraries the commands use.
    code = ("import sys, time; t = time.perf_counter(); from kanari.cli.main import build_parser; build_parser(); "
            "heavy = sorted({m.split('.')[0] for m in sys.modules} & {'kubernetes', 'boto3', 'botocore', 'pydantic', "
            "'numpy', 'pandas', 'yaml', 'kfp', 'aiohttp', 'scipy'}); print(heavy, time.perf_counter() - t)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT).stdout
    assert out.startswith("[] "), out
    # Wall time beyond the interpreter's own start, best of five (the machine is shared; its load varies).
    help_runs, bare_runs = [], []
    for _ in range(5):
        start = time.perf_counter()
        assert kanari("--help").returncode == 0
        help_runs.append(time.perf_counter() - start)
        start = time.perf_counter()
        subprocess.run([sys.executable, "-c", "pass"], check=True)
        bare_runs.append(time.perf_counter() - start)
    assert min(help_runs) - min(bare_runs) < 0.3, f"kanari --help: {min(help_runs):.2f}s, python: {min(bare_runs):.2f}s"


def test_every_exit_code_is_documented_in_the_readme():
    from kanari.cli.common import EXIT_CODES

    readme = (ROOT / "README.md").read_text()
    section = readme.split("### Exit codes", 1)[1].split("\n## ", 1)[0]
    for code, meaning in EXIT_CODES.items():
        assert re.search(rf"^\| `{code}` \| {re.escape(meaning)}", section, re.M), (code, meaning)


def test_the_pipelines_apply_step_connects_with_the_given_context(kubeconfig, objects, monkeypatch):
    """`kanari pipeline run --apply --context c`: its steps run as processes of their own and connect through the
    one loader, which takes the context from the environment the CLI hands them."""
    from kanari.kubeclient import CONTEXT_ENV, custom_objects_api

    monkeypatch.setenv("KUBECONFIG", str(kubeconfig))
    monkeypatch.setenv(CONTEXT_ENV, "emulator")
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    items = custom_objects_api().list_namespaced_custom_object("kanari.dev", "v1alpha1", NS, "modeldeployments")
    assert [i["metadata"]["name"] for i in items["items"]] == [objects[NS]]
    from kanari.cli.main import build_parser

    args = build_parser().parse_args(["pipeline", "run", "--local", "--context", "emulator", "--kubeconfig", "k"])
    assert (args.context, args.kubeconfig) == ("emulator", "k")
