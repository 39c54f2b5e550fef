"""The prometheus-operator stand-in: PrometheusRule objects in the cluster stand-in become rule files of the
local Prometheus, which is then reloaded (prometheus-operator's config-reloader does the same).

One file per PrometheusRule, `<namespace>-<name>.yaml` holding its spec.groups, in the directory the
Prometheus config's rule_files glob points at.
"""

from __future__ import annotations

import asyncio
import logging
import urllib.request
from pathlib import Path
from typing import Any

import yaml

from devstack.kubeapi import KubeApi

log = logging.getLogger("devstack.rules")

PROMETHEUS_RULE = ("monitoring.coreos.com", "v1", "prometheusrules")


def rule_file_name(namespace: str, name: str) -> str:
    return f"{namespace}-{name}.yaml"


def write_rule(rules_dir: Path, obj: dict[str, Any]) -> Path:
    meta = obj.get("metadata") or {}
    path = rules_dir / rule_file_name(str(meta.get("namespace")), str(meta.get("name")))
    groups = (obj.get("spec") or {}).get("groups") or []
    tmp = path.with_suffix(".tmp")
    tmp.write_text(yaml.safe_dump({"groups": groups}, sort_keys=False))
    tmp.replace(path)  # Prometheus never reads a half-written file
    return path


def reload_prometheus(url: str) -> None:
    req = urllib.request.Request(f"{url.rstrip('/')}/-/reload", method="POST")
    with urllib.request.urlopen(req, timeout=10) as resp:
        if resp.status != 200:
            raise RuntimeError(f"Prometheus reload answered {resp.status}")


class RuleSync:
    def __init__(self, api: KubeApi, rules_dir: Path, prometheus_url: str, namespace: str | None = None):
        self.api = api
        self.rules_dir = rules_dir
        self.prometheus_url = prometheus_url
        self.namespace = namespace
        rules_dir.mkdir(parents=True, exist_ok=True)

    async def run(self) -> None:
        async for kind, obj in self.api.watch(KubeApi.path(*PROMETHEUS_RULE, self.namespace)):
            meta = obj.get("metadata") or {}
            if kind == "DELETED":
                (self.rules_dir / rule_file_name(str(meta.get("namespace")), str(meta.get("name")))).unlink(
                    missing_ok=True
                )
            else:
                path = write_rule(self.rules_dir, obj)
                log.info("PrometheusRule %s/%s -> %s", meta.get("namespace"), meta.get("name"), path.name)
            try:
                await asyncio.to_thread(reload_prometheus, self.prometheus_url)
            except (OSError, RuntimeError) as exc:
                # What prometheus-operator does with a rule Prometheus refuses: it stays out, loudly.
                log.error("Prometheus refused the rules of %s/%s: %s", meta.get("namespace"), meta.get("name"), exc)
