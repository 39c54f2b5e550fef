"""Error control across repeated looks at accumulating data (group-sequential alpha spending).

An analysis measures the canary every interval on the data gathered since the step began. Testing each
look at level alpha would roll back a healthy canary far more often than alpha (ten looks at 5% reject a
true null about 19% of the time on accumulating data). Instead, alpha is spent over the planned looks
with the Lan-DeMets Pocock-type spending function alpha(t) = alpha ln(1 + (e - 1) t), t = k/K, which
spends fairly evenly so a gross regression is still caught early. The critical z at each look is
set so that P(first crossing at look k | no effect) = alpha(t_k) - alpha(t_{k-1}) for the canonical joint
distribution of cumulative z-statistics (Brownian motion observed at t_1..t_K); that distribution has
no closed form, so the boundaries are computed once per (K, alpha) by a seeded simulation of 200,000
paths. Past 50 looks the boundaries fall back to the union bound (each look at its own spent increment),
which is valid under any dependence. Looks beyond K have no alpha left: they can never reject.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

PATHS = 200_000
MAX_SIMULATED_LOOKS = 50
SEED = 16


@dataclass(frozen=True)
class Look:
    """The k-th of K planned looks (1-based)."""

    index: int
    planned: int

    def __post_init__(self) -> None:
        if self.index < 1 or self.planned < 1:
            raise ValueError(f"look {self.index} of {self.planned}: both must be at least 1")


def spent(alpha: float, t: float) -> float:
    """Pocock-type spending: the alpha spent by information fraction t (0 at t=0, alpha at t=1)."""
    t = min(max(t, 0.0), 1.0)
    return alpha * math.log(1.0 + (math.e - 1.0) * t)


def critical_z(look: Look, alpha: float) -> float:
    """The z a one-sided statistic must reach at this look to reject at the sequential level alpha."""
    if look.index > look.planned:
        return math.inf
    return _boundaries(look.planned, round(alpha, 12))[look.index - 1]


@lru_cache(maxsize=64)
def _boundaries(planned: int, alpha: float) -> tuple[float, ...]:
    from scipy.stats import norm

    t = np.arange(1, planned + 1) / planned
    increments = np.diff([0.0, *(spent(alpha, x) for x in t)])
    if planned > MAX_SIMULATED_LOOKS:
        return tuple(float(norm.isf(a)) if a > 0 else math.inf for a in increments)
    rng = np.random.default_rng(SEED)
    walk = np.cumsum(rng.normal(0.0, math.sqrt(1.0 / planned), size=(PATHS, planned)), axis=1)
    z = walk / np.sqrt(t)[None, :]
    alive = np.ones(PATHS, dtype=bool)
    out: list[float] = []
    for k in range(planned):
        allowed = int(math.floor(increments[k] * PATHS))
        candidates = np.sort(z[alive, k])
        if allowed < 1 or not len(candidates):
            c = math.inf
        else:
            # The smallest c with at most `allowed` live paths at or above it.
            c = float(np.nextafter(candidates[-allowed - 1], np.inf)) if allowed < len(candidates) else -math.inf
        out.append(c)
        alive &= z[:, k] < c
    return tuple(out)
