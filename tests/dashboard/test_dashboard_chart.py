"""The chart's in-cluster dashboard: off by default, read-only unless actions are enabled, signed-in users
only (its service account can review tokens and nothing else), a command the kanari CLI accepts. The chart's
general checks (lint, schema validity of every object, restricted pods, references) run on the
ci/dashboard-values.yaml scenario in tests/delivery."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.delivery.delivery_schemas import CHART, helm, render_chart

pytestmark = pytest.mark.timeout(120)


def render(tmp_path: Path, values: str = "") -> list[dict[str, Any]]:
    path = tmp_path / "values.yaml"
    path.write_text(values or "{}\n")
    return render_chart("-f", str(path))


def dashboard_objects(objs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [o for o in objs if (o["metadata"].get("labels") or {}).get("app.kubernetes.io/component") == "dashboard"]


def container(objs: list[dict[str, Any]]) -> dict[str, Any]:
    dep = next(o for o in objs if o["kind"] == "Deployment" and o["metadata"]["name"] == "kanari-dashboard")
    return dict(dep["spec"]["template"]["spec"]["containers"][0])


def test_off_by_default(tmp_path: Path) -> None:
    assert dashboard_objects(render(tmp_path)) == []


def test_enabled_is_read_only_signed_in_and_reviews_tokens_only(tmp_path: Path) -> None:
    from kanari.cli.main import build_parser

    objs = render(tmp_path, "dashboard:\n  enabled: true\n")
    c = container(objs)
    args = build_parser().parse_args(c["command"][1:])
    assert args.in_cluster and not args.enable_actions and args.port == 8080 and callable(args.func)
    env = {e["name"]: e.get("value") for e in c["env"]}
    assert env["KANARI_PROMETHEUS_URL"] == "http://prometheus-operated.monitoring.svc:9090"
    assert env["KANARI_DASHBOARD_SECURE_COOKIE"] == "true"
    # The service account's only grant: creating TokenReviews. Reads and actions use each user's own token.
    bound = [o for o in objs if o["kind"] in ("RoleBinding", "ClusterRoleBinding")
             and any(s.get("name") == "kanari-dashboard" for s in o.get("subjects") or [])]
    assert [(b["kind"], b["roleRef"]["name"]) for b in bound] == [("ClusterRoleBinding", "kanari-dashboard-token-review")]
    role = next(o for o in objs if o["kind"] == "ClusterRole" and o["metadata"]["name"] == "kanari-dashboard-token-review")
    assert role["rules"] == [{"apiGroups": ["authentication.k8s.io"], "resources": ["tokenreviews"], "verbs": ["create"]}]
    svc = next(o for o in objs if o["kind"] == "Service" and o["metadata"]["name"] == "kanari-dashboard")
    assert svc["spec"]["type"] == "ClusterIP"
    np = next(o for o in objs if o["kind"] == "NetworkPolicy" and o["metadata"]["name"] == "kanari-dashboard")
    assert np["spec"]["policyTypes"] == ["Ingress", "Egress"]


def test_actions_only_when_asked(tmp_path: Path) -> None:
    c = container(render(tmp_path, "dashboard:\n  enabled: true\n  actions: true\n"))
    assert "--enable-actions" in c["command"]


@pytest.mark.parametrize(("values", "message"), [
    ("dashboard:\n  enabled: true\n  replicas: 2\n", "at '/dashboard/replicas'"),
    ("dashboard:\n  enabled: true\n  action: true\n", "additional properties 'action' not allowed"),
    ("dashboard:\n  secureCookie: maybe\n", "at '/dashboard/secureCookie'"),
])
def test_bad_values_name_the_key(tmp_path: Path, values: str, message: str) -> None:
    path = tmp_path / "values.yaml"
    path.write_text(values)
    proc = helm("template", "kanari", str(CHART), "-f", str(path))
    assert proc.returncode != 0 and message in proc.stderr, proc.stderr


def controller_env(objs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    dep = next(o for o in objs if o["kind"] == "Deployment" and o["metadata"]["name"] == "kanari-controller")
    return list(dep["spec"]["template"]["spec"]["containers"][0]["env"])


def test_notifications_off_unless_a_secret_is_named(tmp_path: Path) -> None:
    assert not [e for e in controller_env(render(tmp_path)) if e["name"].startswith("KANARI_NOTIFY_")]


def test_notifications_example_configures_the_controller(tmp_path: Path) -> None:
    """The README's chart example (ci/notifications-values.yaml): what the controller reads from it is valid."""
    from kanari.notify.messages import Notification
    from kanari.notify.sinks import NotifyConfig

    example = (CHART / "ci" / "notifications-values.yaml").read_text()
    readme = (CHART.parents[1] / "README.md").read_text()
    assert example.split("\n", 2)[2].strip() in readme  # the README shows this very file
    env = controller_env(render(tmp_path, example))
    secret_urls = {"slack": "https://hooks.slack.com/services/T0/B0/x", "teams": "https://prod.example/workflows/1",
                   "webhook": "https://hooks.example/kanari", "webhookToken": "t0ken"}
    resolved = {}
    for e in env:
        if not e["name"].startswith("KANARI_NOTIFY_"):
            continue
        ref = (e.get("valueFrom") or {}).get("secretKeyRef")
        if ref:
            assert ref["name"] == "kanari-notifications" and ref["optional"] is True
            resolved[e["name"]] = secret_urls[ref["key"]]
        else:
            resolved[e["name"]] = e["value"]
    config = NotifyConfig.from_env(resolved)
    assert set(config.sinks) == {"slack", "teams", "webhook"} and config.rate_per_minute == 20
    assert "step_advanced" not in config.kinds and "rolled_back" in config.kinds
    n = Notification("rolled_back", "ml", "fraud", {"revision": "r2", "metric": "p99", "value": "0.31",
                                                     "threshold": "<= 0.25"})
    assert n.text(config.templates) == ":rotating_light: ml/fraud rolled back r2: p99 = 0.31 breached <= 0.25"


def test_notification_values_are_checked(tmp_path: Path) -> None:
    path = tmp_path / "values.yaml"
    path.write_text("notifications:\n  existingSecret: s\n  events: [exploded]\n")
    proc = helm("template", "kanari", str(CHART), "-f", str(path))
    assert proc.returncode != 0 and "at '/notifications/events/0'" in proc.stderr, proc.stderr
