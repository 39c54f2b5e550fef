"""Everything under manifests/, the Argo CD objects, the Dockerfile and skaffold.yaml: valid against the
schemas of the controllers that will read them, and consistent with the chart and the controller."""

from __future__ import annotations

import fnmatch
import glob
import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from delivery_schemas import CHART, ROOT, ManifestError, argocd_cm, helm, load_all, render_chart, validate
from kanari.api.v1alpha1 import parse_model_deployment
from kanari.controller.config import OperatorConfig

MANIFESTS = ROOT / "manifests"
# Helm values for third-party charts live beside the manifests but are not Kubernetes objects.
FILES = sorted(p for p in MANIFESTS.rglob("*.yaml") if not p.name.endswith("-values.yaml"))
SAMPLES = sorted((MANIFESTS / "samples").glob("*.yaml"))

pytestmark = pytest.mark.timeout(120)


def docs(path: Path) -> list[dict[str, Any]]:
    return load_all(path.read_text())


def all_objects() -> list[dict[str, Any]]:
    return [o for p in FILES for o in docs(p)]


def by_kind(kind: str) -> list[dict[str, Any]]:
    return [o for o in all_objects() if o["kind"] == kind]


def expand_applicationset(appset: dict[str, Any]) -> list[dict[str, Any]]:
    """The Applications a list generator with goTemplate makes (missingkey=error: an unknown key fails)."""
    assert appset["spec"]["goTemplate"] is True
    [generator] = appset["spec"]["generators"]
    text = yaml.safe_dump(appset["spec"]["template"])
    apps = []
    for element in generator["list"]["elements"]:
        def substitute(m: re.Match[str], element: dict[str, str] = element) -> str:
            if m.group(1) not in element:
                raise ManifestError(f"ApplicationSet template: map has no entry for key {m.group(1)!r}")
            return element[m.group(1)]

        rendered = yaml.safe_load(re.sub(r"\{\{\s*\.(\w+)\s*\}\}", substitute, text))
        assert "{{" not in yaml.safe_dump(rendered)
        apps.append({"apiVersion": "argoproj.io/v1alpha1", "kind": "Application", **rendered})
    return apps


@pytest.mark.parametrize("path", FILES, ids=lambda p: str(p.relative_to(MANIFESTS)))
def test_manifest_is_valid(path: Path) -> None:
    objects = docs(path)
    assert objects, f"{path} holds no object"
    for obj in objects:
        if obj["kind"] == "ApplicationSet":
            # No ApplicationSet CRD in shared/upstream: what it generates is checked as Applications.
            for app in expand_applicationset(obj):
                validate(app)
        elif obj["kind"] == "AppProject":
            check_appproject(obj)
        else:
            validate(obj)


def check_appproject(obj: dict[str, Any]) -> None:
    """No AppProject CRD in shared/upstream: the fields Argo CD documents, and what this project relies on."""
    known = {"description", "sourceRepos", "destinations", "clusterResourceWhitelist", "clusterResourceBlacklist",
             "namespaceResourceWhitelist", "namespaceResourceBlacklist", "roles", "orphanedResources",
             "syncWindows", "signatureKeys", "sourceNamespaces", "destinationServiceAccounts",
             "permitOnlyProjectScopedClusters"}
    assert set(obj["spec"]) <= known, set(obj["spec"]) - known
    for role in obj["spec"].get("roles", []):
        for policy in role["policies"]:
            parts = [p.strip() for p in policy.split(",")]
            assert parts[0] == "p" and parts[1] == f"proj:{obj['metadata']['name']}:{role['name']}", policy
            assert parts[5] in ("allow", "deny"), policy


def test_validation_rejects_a_typo() -> None:
    """The validation above is strict: a misspelt field of a custom kind is an error, as with kubectl."""
    pool = next(o for o in by_kind("NodePool") if o["metadata"]["name"] == "inf2")
    pool["spec"]["disruption"]["consolidateAftr"] = "5m"
    with pytest.raises(ManifestError, match="consolidateAftr"):
        validate(pool)


# ------------------------------------------------------------------------------------ samples
@pytest.mark.parametrize("path", SAMPLES, ids=lambda p: p.name)
def test_sample_parses_as_the_controller_parses_it(path: Path) -> None:
    for obj in docs(path):
        parse_model_deployment(obj)


def test_samples_cover_modes_accelerators_monitoring_and_strategies() -> None:
    mds = [parse_model_deployment(o) for p in SAMPLES for o in docs(p)]
    assert {m.spec.serving.deploymentMode for m in mds} == {"Serverless", "RawDeployment"}
    assert {"inferentia2", "cpu"} <= {m.spec.serving.accelerator for m in mds}
    assert {m.spec.monitoring is not None for m in mds} == {True, False}
    assert {"Canary", "Linear", "BlueGreen"} <= {m.spec.rollout.strategy for m in mds}


@pytest.mark.parametrize("name", ["churn-inf2-raw-linear.yaml", "iris-cpu-raw-bluegreen.yaml",
                                  "recommender-cpu-serverless-canary.yaml"])
def test_storage_uri_samples_render_valid_inference_services(name: str) -> None:
    """`kanari render` (the controller's own reconcile) on a sample: KServe's CRD accepts the result, a
    Neuron model lands on the Neuron runtime and on the inf2 NodePool's nodes."""
    proc = subprocess.run([sys.executable, "-m", "kanari.cli.main", "render", "-f", str(MANIFESTS / "samples" / name)],
                          capture_output=True, text=True, timeout=60, check=False, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    isvcs = [o for o in load_all(proc.stdout) if o["kind"] == "InferenceService"]
    assert isvcs
    runtime = next(o for o in by_kind("ServingRuntime") if o["metadata"]["name"] == "kanari-neuron")
    pool = next(o for o in by_kind("NodePool") if o["metadata"]["name"] == "inf2")
    for isvc in isvcs:
        validate(isvc)
        model = isvc["spec"]["predictor"]["model"]
        if model["modelFormat"]["name"].endswith("-neuronx"):
            assert model["runtime"] == runtime["metadata"]["name"]
            assert model["modelFormat"]["name"] in {f["name"] for f in runtime["spec"]["supportedModelFormats"]}
            assert schedulable_on(isvc["spec"]["predictor"], pool)


def schedulable_on(pod: dict[str, Any], pool: dict[str, Any]) -> bool:
    """The pod tolerates the pool's taints and its nodeSelector can be met by the pool's nodes."""
    template = pool["spec"]["template"]
    for taint in template["spec"].get("taints", []):
        if not any(t.get("key") == taint["key"] and t.get("effect") in (None, taint["effect"])
                   and (t.get("operator") == "Exists" or t.get("value") == taint.get("value"))
                   for t in pod.get("tolerations", [])):
            return False
    labels = template.get("metadata", {}).get("labels", {})
    requirements = {r["key"]: r for r in template["spec"]["requirements"]}

    def allowed(key: str, value: str) -> bool:
        req = requirements.get(key)
        return labels.get(key) == value or req is None or (req["operator"] == "In" and value in req["values"])

    for key, value in pod.get("nodeSelector", {}).items():
        if key == "node.kubernetes.io/instance-type":
            # Karpenter derives it from the instance: the pool must allow that family and size.
            family, _, size = value.partition(".")
            ok = allowed("karpenter.k8s.aws/instance-family", family) and allowed("karpenter.k8s.aws/instance-size", size)
        else:
            ok = key in labels or key in requirements
            ok = ok and allowed(key, value)
        if not ok:
            return False
    return True


# ------------------------------------------------------------------------------ serving and nodes
def test_neuron_serving_runtime() -> None:
    [runtime] = by_kind("ServingRuntime")
    assert runtime["metadata"]["name"] == OperatorConfig().neuron_runtime
    assert {f["name"] for f in runtime["spec"]["supportedModelFormats"]} == {"pytorch-neuronx", "huggingface-neuronx"}
    [container] = runtime["spec"]["containers"]
    repo, _, tag = container["image"].rpartition(":")
    assert repo == "public.ecr.aws/neuron/pytorch-inference-neuronx"
    assert re.fullmatch(r"\d+\.\d+\.\d+-neuronx-py\d+-sdk\d+\.\d+\.\d+-ubuntu\d+\.\d+", tag), tag
    assert container["resources"]["limits"]["aws.amazon.com/neuroncore"]
    assert any(t["key"] == "aws.amazon.com/neuron" for t in runtime["spec"]["tolerations"])


def test_karpenter_pools_for_inf2_and_trn1() -> None:
    classes = {o["metadata"]["name"] for o in by_kind("EC2NodeClass")}
    families = {}
    for pool in by_kind("NodePool"):
        spec = pool["spec"]
        assert spec["template"]["spec"]["nodeClassRef"]["name"] in classes
        assert {"key": "aws.amazon.com/neuron", "effect": "NoSchedule"} in spec["template"]["spec"]["taints"]
        assert spec["limits"]["aws.amazon.com/neuron"] and spec["limits"]["cpu"]
        assert spec["disruption"]["consolidationPolicy"] in ("WhenEmpty", "WhenEmptyOrUnderutilized")
        [family] = [r for r in spec["template"]["spec"]["requirements"] if r["key"] == "karpenter.k8s.aws/instance-family"]
        families[pool["metadata"]["name"]] = set(family["values"])
    assert families == {"inf2": {"inf2"}, "trn1": {"trn1", "trn1n"}}


# ------------------------------------------------------------------------------------- Argo CD
def test_argocd_cm_is_generated_from_the_lua_scripts() -> None:
    assert argocd_cm().main(["--check"]) == 0, "run: python argocd/argocd_cm.py"


def test_argocd_platform_application_renders_the_chart(tmp_path: Path) -> None:
    [app] = [o for o in by_kind("Application") if o["metadata"]["name"] == "kanari-platform"]
    source = app["spec"]["source"]
    assert (ROOT / source["path"]) == CHART
    values = tmp_path / "values.yaml"
    values.write_text(yaml.safe_dump(source["helm"]["valuesObject"]))
    objs = render_chart("-f", str(values), namespace=app["spec"]["destination"]["namespace"],
                        release=source["helm"]["releaseName"])
    for obj in objs:
        validate(obj)
    assert any(o["kind"] == "CustomResourceDefinition" and o["metadata"]["name"] == "modeldeployments.kanari.dev"
               for o in objs)


def test_argocd_sync_waves_put_crds_before_everything() -> None:
    def wave(obj: dict[str, Any]) -> int:
        return int((obj["metadata"].get("annotations") or {}).get("argocd.argoproj.io/sync-wave", "0"))

    [project] = by_kind("AppProject")
    [platform] = [o for o in by_kind("Application") if o["metadata"]["name"] == "kanari-platform"]
    [models] = by_kind("ApplicationSet")
    assert wave(project) < wave(platform) < wave(models)
    chart = render_chart()
    crd_waves = [wave(o) for o in chart if o["kind"] == "CustomResourceDefinition"]
    assert crd_waves and max(crd_waves) < min(wave(o) for o in chart if o["kind"] != "CustomResourceDefinition")
    [runtime] = by_kind("ServingRuntime")
    assert wave(runtime) < 0  # before the ModelDeployments of the same environment


def test_models_applicationset_has_one_cluster_per_environment() -> None:
    [appset] = by_kind("ApplicationSet")
    apps = expand_applicationset(appset)
    assert [a["metadata"]["labels"]["kanari.dev/environment"] for a in apps] == ["dev", "staging", "prod"]
    assert len({a["spec"]["destination"]["name"] for a in apps}) == 3
    assert len({a["metadata"]["annotations"]["kanari.dev/aws-account"] for a in apps}) == 3
    [project] = by_kind("AppProject")
    allowed = {(d["name"], d["namespace"]) for d in project["spec"]["destinations"]}
    for app in apps:
        assert app["spec"]["project"] == project["metadata"]["name"]
        assert (app["spec"]["destination"]["name"], app["spec"]["destination"]["namespace"]) in allowed


# ------------------------------------------------------------------------------- image and skaffold
def dockerignored(path: str, patterns: list[str]) -> bool:
    ignored = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        pat = pattern.lstrip("!").strip("/")
        if fnmatch.fnmatch(path, pat) or fnmatch.fnmatch(path, pat.replace("**/", "")) or path.startswith(pat + "/"):
            ignored = not negate
    return ignored


def test_dockerfile_is_pinned_multistage_and_non_root() -> None:
    lines = [ln.strip() for ln in (ROOT / "Dockerfile").read_text().splitlines() if ln.strip() and not ln.startswith("#")]
    args = dict(ln.split(None, 1)[1].split("=", 1) for ln in lines if ln.startswith("ARG ") and "=" in ln)
    froms = [ln.split()[1] for ln in lines if ln.startswith("FROM ")]
    assert len(froms) >= 2, "multi-stage: build tools stay out of the runtime image"
    for image in froms:
        image = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], image)
        name, _, tag = image.partition(":")
        # A digest, a full semver tag, or a SageMaker framework container's full release tag (`...-v1.0`: the
        # `-v1` alone moves with each patch release).
        pinned = re.fullmatch(r"\d+\.\d+\.\d+-[a-z0-9-]+", tag) or re.fullmatch(r"\d+\.\d+-[a-z0-9-]+-v\d+\.\d+", tag)
        assert "@sha256:" in image or pinned, f"unpinned base image {image}"
    last_stage = lines[max(i for i, ln in enumerate(lines) if ln.startswith("FROM ")):]
    [user] = [ln.split()[1] for ln in last_stage if ln.startswith("USER ")]
    uid = user.split(":")[0]
    assert uid.isdigit() and int(uid) != 0
    # The chart runs the image as this user.
    deployment = next(o for o in render_chart() if o["kind"] == "Deployment")
    assert deployment["spec"]["template"]["spec"]["securityContext"]["runAsUser"] == int(uid)
    # The operator image (the default target and the stage it copies from) installs no extras; the pipeline
    # component image (stages named pipeline*) brings torch for evaluation on purpose.
    stage, installs = "", []
    for ln in lines:
        if ln.startswith("FROM "):
            stage = ln.split()[3] if len(ln.split()) > 3 else ""
        elif "pip install" in ln and not stage.startswith("pipeline"):
            installs.append(ln)
    assert installs and not any(re.search(r"\.\[|\[(dev|serve|train)", ln) for ln in installs), installs


def test_docker_build_context_has_what_the_build_copies() -> None:
    patterns = [ln.strip() for ln in (ROOT / ".dockerignore").read_text().splitlines()
                if ln.strip() and not ln.startswith("#")]
    copied = []
    for ln in (ROOT / "Dockerfile").read_text().splitlines():
        if ln.startswith("COPY ") and "--from=" not in ln:
            copied += ln.split()[1:-1]
    assert copied
    pyproject = (ROOT / "pyproject.toml").read_text()
    readme = re.search(r'^readme\s*=\s*"([^"]+)"', pyproject, re.M)
    needed = set(copied) | ({readme.group(1)} if readme else set())
    for path in needed:
        assert (ROOT / path).exists(), path
        assert not dockerignored(path, patterns), f"{path} is copied but excluded by .dockerignore"
        assert path in copied, f"{path} is needed by the package build but not copied"
    for heavy in (".venv", ".git", "tests", ".tools"):
        assert dockerignored(heavy, patterns), heavy


def skaffold_configs() -> dict[str, dict[str, Any]]:
    base = yaml.safe_load((ROOT / "skaffold.yaml").read_text())
    out = {"(default)": base}
    for profile in base.get("profiles", []):
        merged = {k: v for k, v in base.items() if k != "profiles"}
        merged.update({k: v for k, v in profile.items() if k in ("build", "deploy", "manifests")})
        out[profile["name"]] = merged
    return out


SKAFFOLD_TEMPLATE_VALUES = {
    "IMAGE_REPO_kanari": "123456789012.dkr.ecr.us-west-2.amazonaws.com/kanari",
    "IMAGE_TAG_kanari": "v0.1.0-3-gabc1234",
    "IMAGE_DIGEST_kanari": "sha256:" + "1" * 64,
    "AWS_REGION": "us-west-2",
    "KANARI_CONTROLLER_ROLE_ARN": "arn:aws:iam::123456789012:role/kanari-controller",
    "AMP_QUERY_URL": "https://aps-workspaces.us-west-2.amazonaws.com/workspaces/ws-1",
}


@pytest.mark.parametrize("profile", list(skaffold_configs()))
def test_skaffold_profile_deploys_a_valid_release(profile: str) -> None:
    config = skaffold_configs()[profile]
    assert re.fullmatch(r"skaffold/v4beta\d+", config["apiVersion"])
    artifacts = {a["image"]: a for a in config["build"]["artifacts"]}
    for artifact in artifacts.values():
        assert (ROOT / artifact["docker"]["dockerfile"]).exists()
        target = artifact["docker"].get("target")
        assert target is None or f" AS {target}" in (ROOT / artifact["docker"]["dockerfile"]).read_text(), target
    assert "kanari" in artifacts and artifacts["kanari"]["docker"].get("target") is None, "the operator image"
    for pattern in config.get("manifests", {}).get("rawYaml", []):
        assert glob.glob(str(ROOT / pattern)), pattern
    [release] = config["deploy"]["helm"]["releases"]
    assert (ROOT / release["chartPath"]) == CHART
    args = ["--namespace", release["namespace"]]
    for values_file in release.get("valuesFiles", []):
        assert (ROOT / values_file).exists(), values_file
        args += ["-f", str(ROOT / values_file)]
    for key, template in release.get("setValueTemplates", {}).items():
        value = re.sub(r"\{\{\s*\.(\w+)\s*\}\}", lambda m: SKAFFOLD_TEMPLATE_VALUES[m.group(1)], template)
        args += ["--set", f"{key}={value}"]
    proc = helm("template", release["name"], str(CHART), *args)
    assert proc.returncode == 0, proc.stderr
    objs = load_all(proc.stdout)
    for obj in objs:
        validate(obj)
    image = next(o for o in objs if o["kind"] == "Deployment")["spec"]["template"]["spec"]["containers"][0]["image"]
    assert image.startswith(SKAFFOLD_TEMPLATE_VALUES["IMAGE_REPO_kanari"])


def test_chart_schema_is_valid_json_schema() -> None:
    import jsonschema

    schema = json.loads((CHART / "values.schema.json").read_text())
    jsonschema.Draft7Validator.check_schema(schema)
    jsonschema.Draft7Validator(schema).validate(yaml.safe_load((CHART / "values.yaml").read_text()))
