"""The one place the dashboard and the notifications read ModelDeployment status.

It is the API's own status model (`kanari.api.v1alpha1.ModelDeploymentStatus`), read leniently: the status comes
from the API server, written by whatever operator version runs there, so a field that does not read is dropped
(shown as absent) instead of failing the whole page. Only the summaries the views show are added here.
"""

from __future__ import annotations

from typing import Any

from kanari.api.v1alpha1 import AnalysisRun, Measurement, MetricRun, ModelDeploymentStatus, ModelRef

__all__ = ["AnalysisRun", "Measurement", "MetricRun", "RolloutStatus", "measured_at", "read_status"]


def measured_at(m: Measurement) -> str:
    return m.finishedAt or m.startedAt


class RolloutStatus(ModelDeploymentStatus):
    @property
    def stable(self) -> ModelRef | None:
        return self.stableModel

    @property
    def canary(self) -> ModelRef | None:
        return self.canaryModel

    @property
    def lastAction(self) -> str | None:  # noqa: N802 - the name the status and the page use
        return self.rollout.lastAction

    @property
    def stable_weight(self) -> int:
        return 100 - self.canary_weight

    @property
    def canary_weight(self) -> int:
        return max(0, min(100, self.canaryWeight)) if self.canaryModel else 0

    def verdict(self) -> str:
        """The latest analysis verdict of the revision being rolled out (or last rolled out); '' if none."""
        if not self.analysisRuns:
            return ""
        revision = self.canaryModel.revision if self.canaryModel else self.analysisRuns[-1].revision
        runs = [r for r in self.analysisRuns if r.revision == revision and r.name != "background"]
        return (runs or self.analysisRuns)[-1].phase

    def failing(self) -> tuple[AnalysisRun, MetricRun, Measurement] | None:
        """The measurement that failed the latest failed run: what a rollback is explained by."""
        for run in reversed(self.analysisRuns):
            if run.phase != "Failed":
                continue
            for metric in run.metrics:
                for m in reversed(metric.measurements):
                    if m.phase == "Failed":
                        return run, metric, m
        return None

    def to_json(self) -> dict[str, Any]:
        out = self.model_dump(mode="json", exclude={"stableModel", "canaryModel"})
        out["stable"] = self.stableModel.model_dump(mode="json") if self.stableModel else None
        out["canary"] = self.canaryModel.model_dump(mode="json") if self.canaryModel else None
        out["lastAction"] = self.lastAction
        out["stableWeight"], out["canaryWeightEffective"] = self.stable_weight, self.canary_weight
        out["verdict"] = self.verdict()
        return out


def read_status(status: Any) -> RolloutStatus:
    """The status as the views read it; never raises, whatever the input."""
    return RolloutStatus.lenient(status)
