"""Seeded rollout simulations with known truth, for the judge's guarantees (tests run a short version,
bench/judge_bench.py the long one).

A rollout is K looks at accumulating traffic; each look the judge sees everything since the step began.
Every look is judged (no early stop on a pass), which is the worst case for false rollbacks.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from kanari.judging.canary import judge_error_rate, judge_latency
from kanari.judging.sequential import Look

# Prometheus client's default histogram buckets (seconds), +Inf last.
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, math.inf)


def _rate_upper(k: int, n: int) -> float:
    from scipy.stats import beta

    return 1.0 if k >= n else float(beta.ppf(0.975, k + 1, n - k))


def _rate_lower(k: int, n: int) -> float:
    from scipy.stats import beta

    return 0.0 if k <= 0 else float(beta.ppf(0.025, k, n - k + 1))


def _summary(outcomes: dict[str, list[tuple[bool, bool, int | None]]], rollouts: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for truth, runs in outcomes.items():
        failed = sum(f for f, _, _ in runs)
        passed = sum(p for _, p, _ in runs)
        first = [k for _, _, k in runs if k is not None]
        out[truth] = {
            "rollback_rate": failed / rollouts,
            "rollback_upper_95": _rate_upper(failed, rollouts),
            "pass_rate": passed / rollouts,
            "pass_upper_95": _rate_upper(passed, rollouts),
            "mean_look_of_first_verdict": float(np.mean(first)) if first else None,
        }
    return out


def simulate_error_rate(
    *, rollouts: int = 500, looks: int = 10, alpha: float = 0.05, max_degradation: float = 0.01,
    base_rate: float = 0.01, canary_per_look: int = 1000, stable_per_look: int = 9000, seed: int = 0,
) -> dict[str, Any]:
    """No degradation (canary error rate = stable's) and degradation = maxDegradation."""
    rng = np.random.default_rng(seed)
    outcomes: dict[str, list[tuple[bool, bool, int | None]]] = {}
    for truth, rate in (("no_degradation", base_rate), ("at_max_degradation", base_rate + max_degradation)):
        runs = []
        for _ in range(rollouts):
            xc = xs = nc = ns = 0
            failed = passed = False
            first: int | None = None
            for k in range(1, looks + 1):
                nc += canary_per_look
                ns += stable_per_look
                xc += int(rng.binomial(canary_per_look, rate))
                xs += int(rng.binomial(stable_per_look, base_rate))
                v = judge_error_rate(xc, nc, xs, ns, max_degradation=max_degradation, alpha=alpha, look=Look(k, looks))
                failed |= v.phase == "Failed"
                passed |= v.phase == "Successful"
                if first is None and v.phase != "Inconclusive":
                    first = k
            runs.append((failed, passed, first))
        outcomes[truth] = runs
    out = _summary(outcomes, rollouts)
    out["settings"] = {"looks": looks, "alpha": alpha, "maxDegradation": max_degradation, "base_rate": base_rate,
                       "canary_per_look": canary_per_look, "stable_per_look": stable_per_look}
    return out


def _bucket_probs(mu: float, sigma: float) -> np.ndarray:
    from scipy.stats import norm

    edges = np.log(np.array(BUCKETS[:-1]))
    cdf = np.concatenate([norm.cdf((edges - mu) / sigma), [1.0]])
    return np.diff(np.concatenate([[0.0], cdf]))


def simulate_latency(
    *, rollouts: int = 500, looks: int = 10, alpha: float = 0.05, max_degradation: float = 0.1,
    median: float = 0.08, sigma: float = 0.6, canary_per_look: int = 300, stable_per_look: int = 2700, seed: int = 0,
) -> dict[str, Any]:
    """Log-normal latencies on Prometheus' default buckets; the degraded canary's latencies are the
    stable's multiplied by 1 + maxDegradation (every quantile maxDegradation slower), the judge's own
    definition of the tolerated slowdown."""
    rng = np.random.default_rng(seed)
    mu = math.log(median)
    ps = _bucket_probs(mu, sigma)
    shift = math.log1p(max_degradation)
    outcomes: dict[str, list[tuple[bool, bool, int | None]]] = {}
    for truth, pc in (("no_degradation", ps), ("at_max_degradation", _bucket_probs(mu + shift, sigma))):
        runs = []
        for _ in range(rollouts):
            a = np.zeros(len(BUCKETS))
            b = np.zeros(len(BUCKETS))
            failed = passed = False
            first: int | None = None
            for k in range(1, looks + 1):
                a += rng.multinomial(canary_per_look, pc)
                b += rng.multinomial(stable_per_look, ps)
                v = judge_latency(np.cumsum(a).tolist(), np.cumsum(b).tolist(), bounds=BUCKETS,
                                  max_degradation=max_degradation, alpha=alpha, look=Look(k, looks))
                failed |= v.phase == "Failed"
                passed |= v.phase == "Successful"
                if first is None and v.phase != "Inconclusive":
                    first = k
            runs.append((failed, passed, first))
        outcomes[truth] = runs
    out = _summary(outcomes, rollouts)
    out["settings"] = {"looks": looks, "alpha": alpha, "maxDegradation": max_degradation, "median_s": median,
                       "sigma": sigma, "canary_per_look": canary_per_look, "stable_per_look": stable_per_look,
                       "latency_shift_at_max_degradation": f"x{math.exp(shift):.3f}"}
    return out


def latency_false_rollbacks(
    *, rollouts: int = 100_000, looks: int = 10, alpha: float = 0.05, median: float = 0.08, sigma: float = 0.6,
    canary_per_look: int = 300, stable_per_look: int = 2700, seed: int = 0, batch: int = 50_000,
) -> dict[str, Any]:
    """The latency judge's false-rollback rate at no degradation, precisely: many rollouts of its failure
    rule alone (canary_judge.null_z and canary_judge.fails, the judge's own code, run on a batch).

    Only the failure rule can roll back, and at no degradation it is what alpha bounds; the full judge
    (simulate_latency) also bisects for the pass test's bounds, which limits it to hundreds of rollouts,
    where a rate exactly at alpha reads anywhere from 3% to 7%. Every look is judged (no stop on a pass).
    Reported beside the rate: its 95% interval and, per look, the share of rollouts first rolled back
    there against the alpha the spending function allots to that look.
    """
    from kanari.judging.canary import fails, null_z
    from kanari.judging.sequential import spent

    rng = np.random.default_rng(seed)
    ps = _bucket_probs(math.log(median), sigma)
    first = np.zeros(looks)
    for start in range(0, rollouts, batch):
        size = min(batch, rollouts - start)
        a = np.zeros((size, len(ps)))
        b = np.zeros((size, len(ps)))
        rolled_back = np.zeros(size, dtype=bool)
        for k in range(looks):
            a += rng.multinomial(canary_per_look, ps, size=size)
            b += rng.multinomial(stable_per_look, ps, size=size)
            now = fails(null_z(a, b), Look(k + 1, looks), alpha) & ~rolled_back
            first[k] += now.sum()
            rolled_back |= now
    failed = int(first.sum())
    allotted = np.diff([0.0, *(spent(alpha, (k + 1) / looks) for k in range(looks))])
    return {
        "rollouts": rollouts, "rollback_rate": failed / rollouts, "rollback_upper_95": _rate_upper(failed, rollouts),
        "rollback_lower_95": _rate_lower(failed, rollouts),
        "first_rollback_by_look": [round(float(x) / rollouts, 5) for x in first],
        "alpha_spent_by_look": [round(float(x), 5) for x in allotted],
        "settings": {"looks": looks, "alpha": alpha, "median_s": median, "sigma": sigma,
                     "canary_per_look": canary_per_look, "stable_per_look": stable_per_look,
                     "largest_bucket_share": round(float(ps.max()), 3)},
    }


def interpolation_bias(
    *, max_degradation: float = 0.1, medians: int = 60, sigmas: tuple[float, ...] = (
        0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4, 0.5, 0.6, 0.8, 1.0, 1.5),
) -> dict[str, Any]:
    """How far the latency judge's re-split histogram misplaces a true slowdown of exactly maxDegradation.

    For log-normal latencies (medians 4 ms to 3 s, the spreads given) on Prometheus' default buckets, with
    exact bucket probabilities (no sampling noise): the pass test's statistic (canary against the stable
    histogram slowed by 1 + maxDegradation) for a canary truly slowed by 1 + maxDegradation, minus its true
    value 1/2. Negative is the direction that would pass a canary at the tolerance: INTERPOLATION_SLACK_PER_UNIT x
    maxDegradation must
    cover it wherever the judge may pass (no bucket above MAX_BUCKET_SHARE of the stable traffic).
    """
    from kanari.judging.canary import MAX_BUCKET_SHARE, SlowedHistogram, mann_whitney

    bounds = np.array(BUCKETS)
    worst_allowed, worst_any, allowed, cases = 0.0, 0.0, 0, 0
    worst_case: dict[str, float] = {}
    for median in np.exp(np.linspace(math.log(0.004), math.log(3.0), medians)):
        for sigma in sigmas:
            ps = _bucket_probs(math.log(median), sigma) * 1e6
            pc = _bucket_probs(math.log(median) + math.log1p(max_degradation), sigma) * 1e6
            bias = mann_whitney(pc, SlowedHistogram(ps, bounds).slowed(1.0 + max_degradation))[0] - 0.5
            cases += 1
            worst_any = min(worst_any, bias)
            if ps.max() / ps.sum() <= MAX_BUCKET_SHARE:
                allowed += 1
                if bias < worst_allowed:
                    worst_allowed = bias
                    worst_case = {"median_s": float(median), "sigma": sigma}
    return {"maxDegradation": max_degradation, "shapes": cases, "shapes_the_judge_may_pass": allowed,
            "worst_bias_where_it_may_pass": float(worst_allowed), "worst_shape": worst_case,
            "worst_bias_any_shape": float(worst_any)}
