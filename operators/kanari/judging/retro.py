"""The retro-verdict: roll a promoted version back when its realised quality, from delayed labels, is
confidently below what it was registered with, inside `rollbackWindow` after promotion.

Argo Rollouts' rollbackWindow only lets a person re-promote an old revision quickly; here the decision is
made from facts the controller can fetch (the promotion time and the previous stable version from status,
the realised figure and its denominator from kanari_realised_quality / the join store, the registered
test metric recorded with the version in status.stableModel.registeredMetrics) so a thin handler can act on it. Wired: the engine (rollout.engine._retro)
calls it inside `spec.rollout.rollbackWindow` with the facts in `status.retro`, and the controller's reading
comes from kanari.rollout.quality.

Rule: roll back when the one-sided (1 - alpha) Wilson upper bound of the realised proportion (recall over
the labelled positives, precision over the predicted positives) is below `registered - tolerance`:
a version that truly meets registered - tolerance is rolled back with probability at most alpha per check.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal

Reason = Literal["RealisedQualityDrop", "OutsideRollbackWindow", "TooFewLabels", "WithinTolerance"]


@dataclass(frozen=True)
class RetroVerdict:
    rollback: bool
    reason: Reason
    message: str
    upper_bound: float | None = None


def one_sided_z(alpha: float) -> float:
    """The standard normal quantile the one-sided (1 - alpha) bound uses (also written into the alert's PromQL)."""
    from scipy.stats import norm

    return float(norm.isf(alpha))


def wilson_upper(successes: float, n: float, alpha: float) -> float:
    z = one_sided_z(alpha)
    p = successes / n
    centre = p + z * z / (2 * n)
    spread = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return min(1.0, (centre + spread) / (1 + z * z / n))


def retro_verdict(
    *,
    metric: str,
    realised: float,
    denominator: int,
    registered: float,
    tolerance: float,
    promoted_at: datetime,
    now: datetime,
    rollback_window: timedelta,
    alpha: float = 0.01,
    min_labels: int = 50,
) -> RetroVerdict:
    if not 0 <= realised <= 1 or not 0 <= registered <= 1:
        raise ValueError(f"{metric}: realised ({realised}) and registered ({registered}) must be proportions")
    if now - promoted_at > rollback_window:
        return RetroVerdict(False, "OutsideRollbackWindow",
                            f"promoted {now - promoted_at} ago, past rollbackWindow {rollback_window}")
    if denominator < min_labels:
        return RetroVerdict(False, "TooFewLabels", f"{metric} over {denominator} labels, fewer than {min_labels}")
    upper = wilson_upper(realised * denominator, denominator, alpha)
    floor = registered - tolerance
    if upper < floor:
        return RetroVerdict(True, "RealisedQualityDrop",
                            f"realised {metric} {realised:.4f} over {denominator} labels (upper bound {upper:.4f}) is "
                            f"below the registered {registered:.4f} - {tolerance:g}", upper)
    return RetroVerdict(False, "WithinTolerance",
                        f"realised {metric} {realised:.4f} (upper bound {upper:.4f}) not below {floor:.4f}", upper)
