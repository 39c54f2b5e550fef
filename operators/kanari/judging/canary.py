"""The statistical canary judge: canary against stable over the same window, per metric.

Pure functions of the counts Prometheus returns. Each look is one of K planned looks at the data gathered
since the analysis step began; three outcomes:

- Failed: the canary is worse than stable, at the sequentially corrected level (kanari.judging.sequential).
  At no degradation the probability of ever rolling back over all K looks is at most alpha.
- Successful: the canary is shown to be worse by less than the tolerated degradation (maxDegradation):
  the sequentially corrected upper confidence bound of its degradation is below maxDegradation, and the
  sample had the power (MIN_POWER) to detect a degradation of that size. A canary that is worse by
  maxDegradation or more passes with probability at most alpha.
- Inconclusive: neither yet; in particular whenever the sample is too small to detect maxDegradation.
  Never a pass.

Error rate (degradation = canary error rate - stable error rate): the failure test is Fisher's exact
one-sided test (valid at any count, conservative); the upper bound is the Farrington-Manning score
bound (the estimate's spread evaluated where the canary is exactly maxDegradation worse), the usual
non-inferiority test for two proportions.

Latency (degradation = relative slowdown: the canary's latency distribution is the stable's scaled by
1 + d, every quantile d slower; maxDegradation 0.1 = "up to 10% slower"). Two tests on the histograms:
- Failed: the canary is slower than stable at all, by the Mann-Whitney statistic on the two histograms'
  buckets, as Kayenta's judge uses (every request in one bucket is a tie; the variance carries the tie
  correction). Exact on bucketed data: no assumption about latencies inside a bucket.
- Successful: the canary is shown faster than the stable distribution slowed by 1 + maxDegradation: the
  same Mann-Whitney statistic, canary against the stable histogram with every latency multiplied by
  1 + maxDegradation and re-split on the same buckets, has its sequentially corrected upper bound (DeLong's
  variance) plus a slack for interpolation below 1/2. Re-splitting needs the latencies inside a bucket, which a
  histogram does not keep: the CDF is interpolated on a log scale (SlowedHistogram), an assumption, whose
  error is measured and charged (INTERPOLATION_SLACK_PER_UNIT). A histogram with over MAX_BUCKET_SHARE of the stable
  traffic in one bucket cannot resolve a small slowdown: never a pass. The reported degradation and its
  upper bound are the slowdowns at which the statistic (and its bound) cross 1/2.
The power check asks whether the failure test could see a slowdown of maxDegradation at this sample size.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

from kanari.judging.sequential import Look, critical_z

MIN_POWER = 0.8
Phase = Literal["Successful", "Failed", "Inconclusive"]


@dataclass(frozen=True)
class Verdict:
    phase: Phase
    degradation: float | None  # the estimate
    upper_bound: float | None  # sequentially corrected upper confidence bound of the degradation
    p_value: float | None  # one-sided, canary worse than stable (before the sequential correction)
    critical_z: float  # what the failure test's z had to reach at this look
    power: float | None  # of the failure test against maxDegradation, at this sample size
    canary_samples: float
    stable_samples: float
    message: str


def _z_of_p(p: float) -> float:
    from scipy.stats import norm

    return float(norm.isf(min(max(p, 1e-300), 1.0)))


def _phi(x: float) -> float:
    return 0.5 * math.erfc(-x / math.sqrt(2.0))


def _check(name: str, value: float) -> float:
    if value is None or not math.isfinite(value) or value < 0:
        raise ValueError(f"{name}: {value!r} is not a count (finite, not negative)")
    return float(value)


def _decide(
    *, degradation: float, upper: float, p_value: float, z_fail: float, power: float, max_degradation: float,
    nc: float, ns: float, unit: str, detail: str, unresolved: str = "", failed: bool | None = None,
) -> Verdict:
    common = {
        "degradation": degradation, "upper_bound": upper, "p_value": p_value, "critical_z": z_fail, "power": power,
        "canary_samples": nc, "stable_samples": ns,
    }
    facts = (
        f"degradation {degradation:+.4g}{unit} (upper bound {upper:+.4g}), p={p_value:.3g} vs z>={z_fail:.3g}, "
        f"power {power:.2f} at maxDegradation {max_degradation:g}; {detail}"
    )
    if failed is None:
        failed = _z_of_p(p_value) >= z_fail
    if upper < max_degradation and power >= MIN_POWER and not unresolved:
        return Verdict("Successful", message=f"within tolerance: {facts}", **common)
    if failed:
        return Verdict("Failed", message=f"canary worse than stable: {facts}", **common)
    why = ("too few samples to detect maxDegradation" if power < MIN_POWER
           else unresolved or "not yet shown within tolerance")
    return Verdict("Inconclusive", message=f"{why}: {facts}", **common)


def _no_data(nc: float, ns: float, look: Look, alpha: float, what: str) -> Verdict:
    return Verdict("Inconclusive", None, None, None, critical_z(look, alpha), None, nc, ns, what)


# --------------------------------------------------------------------------------------- error rate
def judge_error_rate(
    canary_errors: float,
    canary_total: float,
    stable_errors: float,
    stable_total: float,
    *,
    max_degradation: float,
    alpha: float,
    look: Look,
) -> Verdict:
    """Counts over the same window (Prometheus increase() may return fractions: they are rounded)."""
    from scipy.stats import hypergeom, norm

    if not 0 < max_degradation < 1:
        raise ValueError(f"maxDegradation: {max_degradation} must be between 0 and 1 for an error rate")
    xc, nc = round(_check("canary errors", canary_errors)), round(_check("canary requests", canary_total))
    xs, ns = round(_check("stable errors", stable_errors)), round(_check("stable requests", stable_total))
    # increase() extrapolates each series on its own, so errors may exceed requests by a rounding.
    xc, xs = min(xc, nc), min(xs, ns)
    z_fail = critical_z(look, alpha)
    if nc == 0 or ns == 0:
        return _no_data(nc, ns, look, alpha, f"no {'canary' if nc == 0 else 'stable'} requests in the window")
    # Fisher's exact test, one-sided: given all errors, how surprising is the canary's share of them.
    p_value = float(hypergeom.sf(xc - 1, nc + ns, xc + xs, nc))
    pc, ps = xc / nc, xs / ns
    # Non-inferiority score test (Farrington-Manning): the spread of the estimate where the canary is
    # exactly maxDegradation worse, the stable rate estimated under that constraint.
    restricted = min(max((xs + xc - nc * max_degradation) / (ns + nc), 1e-9), 1 - max_degradation - 1e-9)
    se_margin = math.sqrt(
        (restricted + max_degradation) * (1 - restricted - max_degradation) / nc + restricted * (1 - restricted) / ns
    )
    z_pass = critical_z(look, alpha)
    upper = (pc - ps) + z_pass * se_margin if math.isfinite(z_pass) else math.inf
    # Power of a level-alpha one-sided test against p_c = p_s + maxDegradation at these sizes.
    base = min(max((xs + xc + 1) / (ns + nc + 2), 1e-6), 1 - max_degradation - 1e-6)
    alt = base + max_degradation
    se0 = math.sqrt(base * (1 - base) * (1 / nc + 1 / ns))
    se1 = math.sqrt(alt * (1 - alt) / nc + base * (1 - base) / ns)
    power = _phi((max_degradation - float(norm.isf(alpha)) * se0) / se1)
    detail = f"canary {xc}/{nc} errors ({pc:.4%}), stable {xs}/{ns} ({ps:.4%}), look {look.index}/{look.planned}"
    return _decide(
        degradation=pc - ps, upper=upper, p_value=p_value, z_fail=z_fail, power=power,
        max_degradation=max_degradation, nc=nc, ns=ns, unit="", detail=detail,
    )


# ------------------------------------------------------------------------------------------ latency
def bucket_counts(cumulative: Sequence[float]) -> np.ndarray:
    """Per-bucket counts from Prometheus' cumulative `le` buckets (ascending, +Inf last).

    increase() on each bucket series is extrapolated separately, so the cumulative counts may dip a
    little; a dip is clipped to zero rather than trusted as a negative count.
    """
    cum = np.asarray([_check("histogram bucket", float(c)) for c in cumulative], dtype=np.float64)
    return np.clip(np.diff(np.concatenate([[0.0], cum])), 0.0, None)


def _u_statistic(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """U of "canary slower" (ties count half) and its tie-corrected permutation variance, over the last
    axis (leading axes are a batch, so simulations run the judge's own arithmetic)."""
    na, nb = a.sum(axis=-1), b.sum(axis=-1)
    below_b = np.cumsum(b, axis=-1) - b  # stable observations in lower buckets
    u = np.sum(a * (below_b + b / 2.0), axis=-1)
    n = na + nb
    ties = a + b  # every request in one bucket is a tie
    with np.errstate(divide="ignore", invalid="ignore"):
        var_u = na * nb / 12.0 * ((n + 1) - np.sum(ties**3 - ties, axis=-1) / (n * (n - 1)))
    return u, np.nan_to_num(var_u)


def null_z(canary: np.ndarray, stable: np.ndarray) -> np.ndarray:
    """The failure test's statistic: the Mann-Whitney z of "canary slower" for histograms over the same
    buckets (batched over leading axes); 0 where the histograms cannot say (no requests, or all tied)."""
    a, b = np.asarray(canary, dtype=np.float64), np.asarray(stable, dtype=np.float64)
    u, var_u = _u_statistic(a, b)
    centred = u - a.sum(axis=-1) * b.sum(axis=-1) / 2.0
    return np.where(var_u > 0, centred / np.sqrt(np.where(var_u > 0, var_u, 1.0)), 0.0)


def fails(z: np.ndarray | float, look: Look, alpha: float) -> np.ndarray:
    """The latency failure rule at this look: z at or past the sequential boundary."""
    return np.asarray(z) >= critical_z(look, alpha)


def mann_whitney(canary: np.ndarray, stable: np.ndarray) -> tuple[float, float, float, float]:
    """(theta, null z, DeLong standard error, null standard deviation of theta) for two histograms over
    the same buckets.

    theta = P(canary slower) + P(same bucket)/2. The null z is null_z's; DeLong's variance uses each
    observation's placement among the other sample's buckets.
    """
    a, b = canary.astype(np.float64), stable.astype(np.float64)
    na, nb = a.sum(), b.sum()
    u, var_u = (float(x) for x in _u_statistic(a, b))
    theta = u / (na * nb)
    above_a = na - np.cumsum(a)  # canary observations in higher buckets
    va = (np.cumsum(b) - b / 2.0) / nb  # placement of each canary bucket among stable observations
    vb = (above_a + a / 2.0) / na
    sa = float(np.sum(a * (va - theta) ** 2) / max(na - 1, 1))
    sb = float(np.sum(b * (vb - theta) ** 2) / max(nb - 1, 1))
    return theta, float(null_z(a, b)), math.sqrt(sa / na + sb / nb), math.sqrt(max(var_u, 0.0)) / (na * nb)


LOG_SCALE_LIMIT = math.log(100.0)  # slowdowns searched from 1/100x to 100x
# The pass test's margin for the re-split's interpolation error, per unit of maxDegradation: over log-normal
# latencies (spreads 0.05 to 1.5, medians 4 ms to 3 s) on Prometheus' default buckets, with no bucket holding
# over MAX_BUCKET_SHARE of the stable traffic, the interpolated statistic at a true slowdown of exactly
# maxDegradation fell at most 0.049 x maxDegradation (at 0.1) to 0.080 x maxDegradation (at 0.9) below its
# true 1/2 (kanari.judging.simulate.interpolation_bias; bench/judge_bench.py, "judge"). Above that share the
# histogram cannot resolve a small slowdown at all (the traffic sits inside one bucket 2-2.5x wide): never a pass.
INTERPOLATION_SLACK_PER_UNIT = 0.085
MAX_BUCKET_SHARE = 0.5


def _check_bounds(bounds: Sequence[float], buckets: int) -> np.ndarray:
    les = np.asarray([float(b) for b in bounds], dtype=np.float64)
    if len(les) != buckets:
        raise ValueError(f"latency histograms: {len(les)} bucket bounds (le) for {buckets} buckets")
    if not (np.isinf(les[-1]) and les[-1] > 0):
        raise ValueError("latency histograms: the last bucket must be le=+Inf")
    finite = les[:-1]
    if len(finite) and (not np.all(np.isfinite(finite)) or finite[0] <= 0 or np.any(np.diff(finite) <= 0)):
        raise ValueError("latency histograms: bucket bounds (le) must be positive and ascending")
    return les


class SlowedHistogram:
    """A histogram whose every observation can be multiplied by a factor and re-split on the same bounds.

    Inside a bucket the histogram's CDF is interpolated on a log scale by a monotone cubic (scipy's PCHIP,
    through the cumulative counts at every bound), so the slope inside a bucket follows its neighbours:
    evenly spread mass is the wrong guess where the density falls off inside a wide bucket, which is where a
    re-split overstates how much traffic a slowdown pushes over the bucket's upper bound. The first bucket
    starts one bucket-width (in log) below its bound; the +Inf bucket is unbounded and keeps its count.
    """

    def __init__(self, counts: np.ndarray, bounds: np.ndarray):
        from scipy.interpolate import PchipInterpolator

        self.counts = counts.astype(np.float64)
        self.total = float(self.counts.sum())
        self.logs = np.log(bounds[:-1])
        self.cum = np.concatenate([[0.0], np.cumsum(self.counts[:-1])])
        if len(self.logs):
            width = self.logs[1] - self.logs[0] if len(self.logs) > 1 else math.log(2.0)
            self.knots = np.concatenate([[self.logs[0] - width], self.logs])
            self.cdf = PchipInterpolator(self.knots, self.cum, extrapolate=False)

    def slowed(self, factor: float) -> np.ndarray:
        if not len(self.logs):
            return self.counts
        x = self.logs - math.log(factor)  # the slowed CDF at bound B is the original's at B / factor
        at = np.where(x <= self.knots[0], 0.0, np.where(x >= self.knots[-1], self.cum[-1], self.cdf(x)))
        at = np.maximum.accumulate(np.clip(np.nan_to_num(at), 0.0, self.cum[-1]))
        return np.concatenate([np.diff(np.concatenate([[0.0], at])), [self.total - at[-1]]])


def scale_histogram(counts: np.ndarray, bounds: np.ndarray, factor: float) -> np.ndarray:
    return SlowedHistogram(counts, bounds).slowed(factor)


def _slowdown_root(f: Callable[[float], float], lo: float, hi: float) -> float:
    """The log-scale root of a decreasing function f on [lo, hi] by bisection (f(lo) >= 0 >= f(hi))."""
    for _ in range(32):
        mid = (lo + hi) / 2.0
        if f(mid) > 0:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2.0


def _crossing(f: Callable[[float], float], margin: float) -> float:
    """exp(root) - 1 of f (decreasing in the log-slowdown): bracketed on the side of `margin` f says, so
    the reported value is below the margin exactly when f(margin) < 0."""
    if f(margin) < 0:
        if f(-LOG_SCALE_LIMIT) < 0:
            return math.expm1(-LOG_SCALE_LIMIT)
        return math.expm1(_slowdown_root(f, -LOG_SCALE_LIMIT, margin))
    if f(LOG_SCALE_LIMIT) >= 0:
        return math.inf
    return math.expm1(_slowdown_root(f, margin, LOG_SCALE_LIMIT))


def judge_latency(
    canary_cumulative: Sequence[float],
    stable_cumulative: Sequence[float],
    *,
    bounds: Sequence[float],
    max_degradation: float,
    alpha: float,
    look: Look,
) -> Verdict:
    """Cumulative bucket counts over the same window, on the same `le` bounds (`bounds`: ascending, +Inf
    last); maxDegradation is a relative slowdown (0.1: the canary may be up to 10% slower)."""
    from scipy.stats import norm

    if not 0 < max_degradation < 1:
        raise ValueError(f"maxDegradation: {max_degradation} must be between 0 and 1 for latency (0.1 = 10% slower)")
    if len(canary_cumulative) != len(stable_cumulative) or len(canary_cumulative) < 2:
        raise ValueError("latency histograms: canary and stable need the same buckets (at least 2)")
    a, b = bucket_counts(canary_cumulative), bucket_counts(stable_cumulative)
    les = _check_bounds(bounds, len(a))
    na, nb = float(a.sum()), float(b.sum())
    z_fail = critical_z(look, alpha)
    if na < 1 or nb < 1:
        return _no_data(na, nb, look, alpha, f"no {'canary' if na < 1 else 'stable'} requests in the window")
    theta, z, _, sd0 = mann_whitney(a, b)
    p_value = float(norm.sf(z))
    margin = math.log1p(max_degradation)
    stable = SlowedHistogram(b, les)
    slack = INTERPOLATION_SLACK_PER_UNIT * max_degradation

    def against_slowed(log_factor: float) -> tuple[float, float]:
        t, _, se_t, _ = mann_whitney(a, stable.slowed(math.exp(log_factor)))
        return t - 0.5, se_t

    def bound(log_factor: float) -> float:
        d, se_t = against_slowed(log_factor)
        return d + z_fail * se_t + slack if math.isfinite(z_fail) else math.inf

    estimate = _crossing(lambda s_: against_slowed(s_)[0], 0.0)
    upper = _crossing(bound, margin)
    # Power of the failure test against a canary slowed by exactly maxDegradation (the stable's own
    # histogram slowed stands in for it), with the null (tie-corrected) spread of the statistic.
    shifted = mann_whitney(stable.slowed(1.0 + max_degradation), b)[0] - 0.5
    power = _phi(shifted / sd0 - float(norm.isf(alpha))) if sd0 > 0 else 0.0
    detail = (f"{na:.0f} canary and {nb:.0f} stable requests, P(canary slower) {theta:.4f}, "
              f"look {look.index}/{look.planned}")
    share = float(b.max()) / nb
    unresolved = (f"histogram buckets too coarse to resolve a {max_degradation:.0%} slowdown ({share:.0%} of "
                  "stable requests in one bucket; add buckets around the typical latency)"
                  if share > MAX_BUCKET_SHARE else "")
    return _decide(
        degradation=estimate, upper=upper, p_value=p_value, z_fail=z_fail, power=power,
        max_degradation=max_degradation, nc=na, ns=nb, unit=" (relative slowdown)", detail=detail,
        unresolved=unresolved, failed=bool(fails(z, look, alpha)),
    )
