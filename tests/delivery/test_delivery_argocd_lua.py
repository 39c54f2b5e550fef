"""Kanari's Argo CD health check and actions, run under lupa the way Argo CD runs them (see argocd_lua.py),
from their health_test.yaml and action_test.yaml in Argo CD's own format."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from argocd_lua import ArgoLua, Clock, LuaScriptError, load_yaml
from delivery_schemas import ROOT, UPSTREAM, argocd_cm
from kanari.api.v1alpha1 import ACTION_ANNOTATION, ACTIONS, parse_model_deployment

CUSTOM = ROOT / "argocd" / "resource_customizations" / "kanari.dev" / "ModelDeployment"
HEALTH = (CUSTOM / "health.lua").read_text()
DISCOVERY = (CUSTOM / "actions" / "discovery.lua").read_text()
# The clock action_test.yaml's expected outputs were written for.
TEST_CLOCK = datetime(2024, 5, 1, 12, 0, 0, tzinfo=UTC)
HEALTH_TESTS = yaml.safe_load((CUSTOM / "health_test.yaml").read_text())["tests"]
ACTION_TESTS = yaml.safe_load((CUSTOM / "actions" / "action_test.yaml").read_text())

pytestmark = pytest.mark.timeout(60)


def action_script(name: str) -> str:
    return (CUSTOM / "actions" / name / "action.lua").read_text()


@pytest.fixture
def lua() -> ArgoLua:
    return ArgoLua(Clock(TEST_CLOCK))


@pytest.mark.parametrize("case", HEALTH_TESTS, ids=lambda c: c["inputPath"])
def test_health_test_yaml(lua: ArgoLua, case: dict[str, Any]) -> None:
    obj = load_yaml(CUSTOM / case["inputPath"])
    assert lua.health(HEALTH, obj) == case["healthStatus"]


def test_health_cases_cover_every_phase_and_verdict() -> None:
    phases = {(load_yaml(CUSTOM / c["inputPath"]).get("status") or {}).get("phase") for c in HEALTH_TESTS}
    assert {"Pending", "Progressing", "Promoting", "Paused", "Succeeded", "RolledBack", "Failed", "Degraded"} <= phases
    assert {c["healthStatus"]["status"] for c in HEALTH_TESTS} == {"Healthy", "Progressing", "Suspended", "Degraded"}


@pytest.mark.parametrize("path", sorted((CUSTOM / "testdata").glob("*.yaml")), ids=lambda p: p.name)
def test_testdata_are_valid_model_deployments(path: Path) -> None:
    parse_model_deployment(load_yaml(path))


def test_bad_state_is_degraded_with_the_reason_from_its_conditions(lua: ArgoLua) -> None:
    """A spec the controller rejected, or a model the registry refuses, says why in Argo CD."""
    obj = load_yaml(CUSTOM / "testdata" / "healthy.yaml")
    obj["status"].update(phase="Failed", message="spec.serving.maxReplicas: 1 must be >= minReplicas (2)")
    obj["status"]["conditions"] = [{
        "type": "InvalidSpec", "status": "True", "reason": "InvalidSpec", "lastTransitionTime": "2024-05-01T11:00:00Z",
        "message": "spec.serving.maxReplicas: 1 must be >= minReplicas (2)",
    }]
    assert lua.health(HEALTH, obj) == {
        "status": "Degraded", "message": "Failed: InvalidSpec: spec.serving.maxReplicas: 1 must be >= minReplicas (2)"}
    obj["status"]["conditions"] = [{
        "type": "ModelApproved", "status": "False", "reason": "ModelNotApproved",
        "lastTransitionTime": "2024-05-01T11:00:00Z", "message": "model package fraud-scorer/9 is Rejected",
    }]
    obj["status"]["phase"] = "RolledBack"
    assert lua.health(HEALTH, obj) == {
        "status": "Degraded", "message": "RolledBack: ModelNotApproved: model package fraud-scorer/9 is Rejected"}
    # Without any explaining condition, the status message is the reason.
    obj["status"]["conditions"] = []
    assert lua.health(HEALTH, obj)["message"] == "RolledBack: spec.serving.maxReplicas: 1 must be >= minReplicas (2)"


def test_a_stale_status_is_never_healthy(lua: ArgoLua) -> None:
    obj = load_yaml(CUSTOM / "testdata" / "healthy.yaml")
    assert lua.health(HEALTH, obj)["status"] == "Healthy"
    obj["metadata"]["generation"] += 1
    assert lua.health(HEALTH, obj)["status"] == "Progressing"


@pytest.mark.parametrize("case", ACTION_TESTS["discoveryTests"], ids=lambda c: c["inputPath"])
def test_action_discovery(lua: ArgoLua, case: dict[str, Any]) -> None:
    found = lua.discovery(DISCOVERY, load_yaml(CUSTOM / case["inputPath"]))
    # Argo CD's runner checks each discovered action is expected; expecting all of them is stricter.
    assert found == sorted(case["result"], key=lambda a: a["name"])


@pytest.mark.parametrize("case", ACTION_TESTS["actionTests"], ids=lambda c: f"{c['action']}/{c['inputPath']}")
def test_action_test_yaml(lua: ArgoLua, case: dict[str, Any]) -> None:
    source = load_yaml(CUSTOM / case["inputPath"])
    impacted = lua.action(action_script(case["action"]), source)
    expected = load_yaml(CUSTOM / case["expectedOutputPath"])
    assert impacted == [("patch", expected)]


@pytest.mark.parametrize("action", sorted(p.parent.name for p in (CUSTOM / "actions").glob("*/action.lua")))
def test_actions_change_only_the_action_annotation(action: str) -> None:
    """With the real clock: the patch is the annotation alone, in the format the controller consumes."""
    source = load_yaml(CUSTOM / "testdata" / "paused-annotated.yaml")
    before = datetime.now(UTC).replace(microsecond=0)
    [(operation, result)] = ArgoLua().action(action_script(action), source)
    after = datetime.now(UTC)
    assert operation == "patch"
    value = result["metadata"]["annotations"].pop(ACTION_ANNOTATION)
    assert result == load_yaml(CUSTOM / "testdata" / "paused-annotated.yaml") | {
        "metadata": {**source["metadata"], "annotations": {"team": "fraud"}}}
    name, _, nonce = value.partition("/")
    assert name == action and name in ACTIONS
    at = datetime.strptime(nonce, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    assert before - timedelta(seconds=1) <= at <= after


def test_every_controller_action_is_offered() -> None:
    scripts = {p.parent.name for p in (CUSTOM / "actions").glob("*/action.lua")}
    assert scripts == set(ACTIONS)


def test_repeated_action_is_a_new_request(lua: ArgoLua) -> None:
    obj = load_yaml(CUSTOM / "testdata" / "paused.yaml")
    [(_, first)] = lua.action(action_script("promote"), obj)
    lua.clock.now = TEST_CLOCK + timedelta(seconds=30)
    [(_, second)] = lua.action(action_script("promote"), first)
    assert first["metadata"]["annotations"][ACTION_ANNOTATION] != second["metadata"]["annotations"][ACTION_ANNOTATION]


# ------------------------------------------------------------------------ the runner mirrors Argo CD
def test_scripts_run_without_the_string_library(lua: ArgoLua) -> None:
    """Argo CD's sandbox for argocd-cm scripts has no string library; ours must not need one."""
    with pytest.raises(LuaScriptError, match="string"):
        lua.health('return {status = string.upper("healthy")}', {})
    with pytest.raises(LuaScriptError):
        lua.health('return {status = ("Healthy"):sub(1)}', {})
    for lib in ("string", "math", "io", "debug"):
        assert not re.search(rf"\b{lib}\.", HEALTH + DISCOVERY + action_script("promote"))


def test_runner_follows_gopher_json_and_argo_cd(lua: ArgoLua) -> None:
    assert lua.health('return {status = "Sick", message = "x"}', {}) == {
        "status": "Unknown", "message": "Lua returned an invalid health status"}
    with pytest.raises(LuaScriptError, match="unmarshal array"):
        lua.health("return {}", {})
    with pytest.raises(LuaScriptError, match="expect table output"):
        lua.health('return "Healthy"', {})
    with pytest.raises(LuaScriptError, match="sparse array"):
        lua.run("local t = {1, 2}; t[4] = 4; return t", {})
    with pytest.raises(LuaScriptError, match="mixed or invalid key types"):
        lua.run('return {1, 2, a = "b"}', {})
    with pytest.raises(LuaScriptError, match="deadline"):
        lua.run("while true do end", {})
    # JSON null: the key is absent in Lua, as decodeValue makes it.
    assert lua.run("return {absent = obj.metadata.labels == nil}", {"metadata": {"labels": None}}) == {"absent": True}


def test_identity_action_on_real_inference_services_keeps_them_intact(lua: ArgoLua) -> None:
    """Argo CD's own KServe testdata through `return obj`: the conversion to Lua and back, with
    cleanReturnedObj restoring the empty maps (such as `spec: {}`) Lua turns into empty arrays."""
    paths = sorted((UPSTREAM / "argocd-kserve-health" / "testdata").glob("*.yaml"))
    assert len(paths) >= 10
    cleaned = 0
    for path in paths:
        obj = load_yaml(path)
        [(operation, result)] = lua.action("return obj", obj)
        assert operation == "patch" and result == load_yaml(path), path.name
        cleaned += lua.run("return obj", obj) != obj
    assert cleaned, "no upstream object needed cleanReturnedObj: the empty-map case is no longer exercised"


def test_argocd_cm_carries_these_exact_scripts() -> None:
    data = argocd_cm().entries()
    assert data["resource.customizations.health.kanari.dev_ModelDeployment"] == HEALTH
    actions = yaml.safe_load(data["resource.customizations.actions.kanari.dev_ModelDeployment"])
    assert actions["discovery.lua"] == DISCOVERY
    assert {d["name"]: d["action.lua"] for d in actions["definitions"]} == {a: action_script(a) for a in ACTIONS}


def test_health_reads_the_status_the_engine_writes(lua: ArgoLua) -> None:
    """The status shape of the rollout engine (pause conditions, analysis runs), not a hand-written copy."""
    from datetime import timedelta

    from kanari.api.v1alpha1 import MetricResult, ModelDeploymentStatus, ModelRef, parse_spec
    from kanari.rollout.engine import RolloutObservation, decide

    obj = load_yaml(CUSTOM / "testdata" / "paused.yaml")
    obj["spec"]["rollout"]["steps"] = [{"setWeight": 10}, {"analysis": {}}]
    obj["spec"]["rollout"]["analysis"].update(interval="1m", inconclusiveLimit=0)
    spec = parse_spec(obj["spec"])
    v1 = ModelRef(revision="r1", version="fraud-scorer/7")
    v2 = ModelRef(revision=spec.rollout_revision(), version="fraud-scorer/8")
    status = ModelDeploymentStatus()
    for ref, now, measurement in [(v1, TEST_CLOCK, None), (v2, TEST_CLOCK, None),
                                  (v2, TEST_CLOCK + timedelta(minutes=1), [MetricResult(
                                      name="success-rate", verdict="Inconclusive", message="success-rate: no data")])]:
        status = decide(spec, status, RolloutObservation(now=now, desired=ref, stable_ready=True, canary_ready=True,
                                                         measurement=measurement), 4).status
    obj["status"] = status.model_dump(mode="json")
    assert [p["reason"] for p in obj["status"]["pauseConditions"]] == ["AnalysisInconclusive"]
    health = lua.health(HEALTH, obj)
    assert health["status"] == "Suspended"
    assert health["message"].startswith("Paused with fraud-scorer/8 at 0% (step 2): analysis run step-1 inconclusive")
