"""The statistical canary judge: seeded rollout simulations with known truth (500-rollout version in
bench/judge_bench.py), cross-checks against scipy, and hostile input."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from kanari.judging.canary import (
    INTERPOLATION_SLACK_PER_UNIT,
    MAX_BUCKET_SHARE,
    bucket_counts,
    judge_error_rate,
    judge_latency,
    mann_whitney,
    scale_histogram,
)
from kanari.judging.sequential import Look, boundaries_for, critical_z, spent
from kanari.judging.simulate import (
    BUCKETS,
    interpolation_bias,
    latency_false_rollbacks,
    simulate_error_rate,
    simulate_latency,
)
from scipy.stats import binom, mannwhitneyu, norm

ROLLOUTS = 150
ALPHA = 0.05


def _limit(rate: float, n: int = ROLLOUTS) -> float:
    """Largest rate consistent with `rate` (P(Binomial(n, rate) > limit) < 0.001)."""
    return binom.ppf(0.999, n, rate) / n


@pytest.fixture(scope="module")
def error_rate_sim() -> dict:
    return simulate_error_rate(rollouts=ROLLOUTS, looks=10, alpha=ALPHA, seed=11)


@pytest.fixture(scope="module")
def latency_sim() -> dict:
    return simulate_latency(rollouts=ROLLOUTS, looks=10, alpha=ALPHA, seed=11)


@pytest.mark.parametrize("sim", ["error_rate_sim", "latency_sim"])
def test_false_rollbacks_at_no_degradation_stay_within_alpha_over_ten_looks(sim: str, request: pytest.FixtureRequest) -> None:
    result = request.getfixturevalue(sim)
    null = result["no_degradation"]
    assert null["rollback_rate"] <= _limit(ALPHA), result
    # A healthy canary is promoted: the judge is not merely cautious.
    assert null["pass_rate"] >= 0.9, result


@pytest.mark.parametrize("sim", ["error_rate_sim", "latency_sim"])
def test_a_canary_worse_by_max_degradation_is_caught_and_rarely_passed(sim: str, request: pytest.FixtureRequest) -> None:
    result = request.getfixturevalue(sim)
    bad = result["at_max_degradation"]
    assert bad["rollback_rate"] >= 0.8, result  # power at the tolerated degradation (reported by the bench)
    assert bad["pass_rate"] <= _limit(ALPHA), result


def test_naive_testing_at_every_look_would_inflate_false_rollbacks() -> None:
    # The same no-degradation traffic, tested at alpha at every look without correction: the
    # correction above is what keeps the rate down (this is what the simulation could catch).
    rng = np.random.default_rng(3)
    crossed = 0
    trials = 400
    for _ in range(trials):
        z = np.cumsum(rng.normal(size=10)) / np.sqrt(np.arange(1, 11))
        crossed += bool(np.any(z >= norm.isf(ALPHA)))
    assert crossed / trials > 2 * ALPHA
    bounds = [critical_z(Look(k, 10), ALPHA) for k in range(1, 11)]
    rng = np.random.default_rng(4)
    z = np.cumsum(rng.normal(size=(40_000, 10)), axis=1) / np.sqrt(np.arange(1, 11))
    assert np.mean(np.any(z >= np.array(bounds), axis=1)) == pytest.approx(ALPHA, abs=0.006)


def test_spending_and_boundaries() -> None:
    assert spent(ALPHA, 0) == 0 and spent(ALPHA, 1) == pytest.approx(ALPHA)
    bounds = [critical_z(Look(k, 5), ALPHA) for k in range(1, 6)]
    assert all(math.isfinite(b) and b > norm.isf(ALPHA) for b in bounds)
    assert critical_z(Look(6, 5), ALPHA) == math.inf  # no alpha left past the planned looks
    many = [critical_z(Look(k, 200), ALPHA) for k in (1, 100, 200)]  # union-bound fallback
    assert all(b > norm.isf(ALPHA) for b in many)


def test_boundaries_equal_the_published_lan_demets_values() -> None:
    # R's ldbounds (ld98) for O'Brien-Fleming-type spending, 4 equally spaced looks, one-sided 0.025:
    # 4.3326, 2.9631, 2.3590, 2.0141 (its documented example).
    t = np.arange(1, 5) / 4
    spent_obf = 2 - 2 * norm.cdf(norm.isf(0.025 / 2) / np.sqrt(t))
    assert boundaries_for(tuple(np.diff([0.0, *spent_obf]))) == pytest.approx((4.3326, 2.9631, 2.3590, 2.0141), abs=2e-4)


def test_a_look_that_spends_nothing_leaves_its_paths_to_the_next_one() -> None:
    # No alpha at look 1: nothing can cross there, so look 2 is a single test at its own increment.
    first, second = boundaries_for((0.0, 0.025))
    assert first == math.inf and second == pytest.approx(norm.isf(0.025), abs=1e-4)


@pytest.mark.parametrize("looks", [3, 10])
def test_each_look_rejects_with_exactly_the_alpha_allotted_to_it(looks: int) -> None:
    """Under no effect, the share of Brownian paths first crossing at look k is the spending function's
    increment for k (1,000,000 paths: a few hundredths of a percent)."""
    paths = 1_000_000
    rng = np.random.default_rng(5)
    z = np.cumsum(rng.normal(size=(paths, looks)), axis=1) / np.sqrt(np.arange(1, looks + 1))
    crossed = z >= np.array([critical_z(Look(k, looks), ALPHA) for k in range(1, looks + 1)])
    first = (crossed & (np.cumsum(crossed, axis=1) == 1)).mean(axis=0)
    allotted = np.diff([0.0, *(spent(ALPHA, k / looks) for k in range(1, looks + 1))])
    assert np.all(np.abs(first - allotted) <= 4 * np.sqrt(allotted / paths)), (first, allotted)


@pytest.mark.parametrize(("median", "sigma", "canary", "stable"), [
    (0.08, 0.6, 300, 2700), (0.03, 1.2, 300, 2700), (0.3, 0.25, 300, 2700), (0.03, 1.2, 100, 100),
])
def test_the_latency_failure_rule_rolls_back_a_healthy_canary_at_most_alpha(
    median: float, sigma: float, canary: int, stable: int
) -> None:
    """The judge's own failure rule over 20,000 rollouts of 10 looks (1,000,000 in the bench): the rate is
    not above alpha beyond Monte Carlo error, on wide, narrow (ties everywhere) and small-sample shapes."""
    result = latency_false_rollbacks(rollouts=20_000, median=median, sigma=sigma, canary_per_look=canary,
                                     stable_per_look=stable, seed=21)
    assert result["rollback_lower_95"] <= ALPHA, result
    assert result["rollback_rate"] >= 0.8 * ALPHA, result  # not bought by never rolling back


@given(
    st.integers(0, 500), st.integers(1, 500), st.integers(0, 5000), st.integers(1, 5000),
    st.floats(0.001, 0.2), st.integers(1, 10),
)
@settings(max_examples=150, deadline=None)
def test_error_rate_never_passes_without_the_power_to_see_max_degradation(
    xc: int, nc: int, xs: int, ns: int, delta: float, k: int
) -> None:
    v = judge_error_rate(min(xc, nc), nc, min(xs, ns), ns, max_degradation=delta, alpha=ALPHA, look=Look(k, 10))
    assert v.phase in ("Successful", "Failed", "Inconclusive")
    if v.phase == "Successful":
        assert v.power is not None and v.power >= 0.8 and v.upper_bound is not None and v.upper_bound < delta
    if v.phase == "Failed":
        assert v.degradation is not None and v.degradation > 0 and v.p_value is not None and v.p_value < ALPHA


def test_a_handful_of_requests_is_inconclusive_even_when_perfect() -> None:
    v = judge_error_rate(0, 20, 0, 200, max_degradation=0.01, alpha=ALPHA, look=Look(1, 10))
    assert v.phase == "Inconclusive" and "too few samples" in v.message
    v = judge_latency([5, 10, 20], [50, 100, 200], bounds=[0.1, 0.5, math.inf], max_degradation=0.05, alpha=ALPHA,
                      look=Look(1, 10))
    assert v.phase == "Inconclusive"
    assert judge_error_rate(0, 0, 3, 900, max_degradation=0.01, alpha=ALPHA, look=Look(1, 10)).phase == "Inconclusive"


@pytest.mark.parametrize(
    ("args", "field"),
    [
        ((-1, 10, 0, 10), "canary errors"),
        ((0, float("nan"), 0, 10), "canary requests"),
        ((0, 10, 0, float("inf")), "stable requests"),
    ],
)
def test_bad_counts_name_the_field(args: tuple, field: str) -> None:
    with pytest.raises(ValueError, match=field):
        judge_error_rate(*args, max_degradation=0.01, alpha=ALPHA, look=Look(1, 10))


def test_bad_histograms_are_refused() -> None:
    two = [0.5, math.inf]
    with pytest.raises(ValueError, match="same buckets"):
        judge_latency([1, 2], [1, 2, 3], bounds=two, max_degradation=0.05, alpha=ALPHA, look=Look(1, 3))
    with pytest.raises(ValueError, match="histogram bucket"):
        judge_latency([1, -2], [1, 2], bounds=two, max_degradation=0.05, alpha=ALPHA, look=Look(1, 3))
    with pytest.raises(ValueError, match="maxDegradation"):
        judge_latency([1, 2], [1, 2], bounds=two, max_degradation=1.5, alpha=ALPHA, look=Look(1, 3))
    for bounds, what in (([0.5, 1.0, 2.0], r"le=\+Inf"), ([1.0, 0.5, math.inf], "ascending"), ([0.0, 1.0, math.inf], "positive"),
                         ([0.5, math.inf], "bucket bounds")):
        with pytest.raises(ValueError, match=what):
            judge_latency([1, 2, 3], [1, 2, 3], bounds=bounds, max_degradation=0.1, alpha=ALPHA, look=Look(1, 3))


@given(
    st.lists(st.integers(0, 40), min_size=2, max_size=8).flatmap(
        lambda a: st.tuples(st.just(a), st.lists(st.integers(0, 40), min_size=len(a), max_size=len(a)))
    )
)
@settings(max_examples=100, deadline=None)
def test_bucketed_mann_whitney_equals_scipy_on_the_tied_sample(pair: tuple[list[int], list[int]]) -> None:
    a, b = (np.array(x, dtype=float) for x in pair)
    if a.sum() < 2 or b.sum() < 2 or np.count_nonzero(a + b) < 2:
        return
    theta, z, _, _ = mann_whitney(a, b)
    xa = np.repeat(np.arange(len(a)), a.astype(int))
    xb = np.repeat(np.arange(len(b)), b.astype(int))
    ref = mannwhitneyu(xa, xb, alternative="greater", use_continuity=False, method="asymptotic")
    assert theta == pytest.approx(ref.statistic / (len(xa) * len(xb)))
    assert norm.sf(z) == pytest.approx(ref.pvalue, rel=1e-6, abs=1e-12)


def test_prometheus_buckets_with_extrapolation_dips_are_clipped() -> None:
    assert list(bucket_counts([3.2, 3.1, 10.0])) == pytest.approx([3.2, 0.0, 6.9])


@given(
    st.lists(st.integers(0, 3000), min_size=2, max_size=12).flatmap(
        lambda a: st.tuples(st.just(a), st.lists(st.integers(0, 3000), min_size=len(a), max_size=len(a)))
    ),
    st.floats(0.01, 0.3), st.integers(1, 12),
)
@settings(max_examples=150, deadline=None)
def test_latency_never_passes_without_power_and_fails_only_when_slower(
    pair: tuple[list[int], list[int]], delta: float, k: int
) -> None:
    a, b = (np.cumsum(x).tolist() for x in pair)
    v = judge_latency(a, b, bounds=BUCKETS[-len(a):], max_degradation=delta, alpha=ALPHA, look=Look(k, 10))
    if v.phase == "Successful":
        assert v.power is not None and v.power >= 0.8 and v.upper_bound is not None and v.upper_bound < delta
        assert max(pair[1]) <= MAX_BUCKET_SHARE * sum(pair[1])
    if v.phase == "Failed":
        assert v.degradation is not None and v.degradation > 0 and k <= 10


def lognormal_histogram(rng: np.random.Generator, n: int, median: float, sigma: float, bounds: list[float]) -> list[float]:
    x = rng.lognormal(math.log(median), sigma, size=n)
    return [float(np.sum(x <= le)) for le in bounds]


# Fine buckets (5% apart) from 10 ms to 10 s: the histogram resolves small slowdowns.
FINE = [*np.round(0.01 * 1.05 ** np.arange(142), 6).tolist(), math.inf]


def test_max_degradation_is_a_relative_slowdown() -> None:
    """Regression: maxDegradation was on Mann-Whitney's probability scale (0.1 = a canary request slower
    than a stable one 60% of the time), so 0.1 let a canary 25% slower pass as "within tolerance"."""
    rng = np.random.default_rng(5)
    stable = lognormal_histogram(rng, 40_000, 0.2, 0.6, FINE)
    slower = lognormal_histogram(rng, 20_000, 0.2 * 1.25, 0.6, FINE)  # every quantile 25% slower
    v = judge_latency(slower, stable, bounds=FINE, max_degradation=0.1, alpha=ALPHA, look=Look(10, 10))
    assert v.phase == "Failed", v.message
    assert v.degradation == pytest.approx(0.25, abs=0.03)  # the estimate is the slowdown, in its units
    # 8% slower is within a 15% tolerance, and not within 5%.
    slight = lognormal_histogram(rng, 20_000, 0.2 * 1.08, 0.6, FINE)
    within = judge_latency(slight, stable, bounds=FINE, max_degradation=0.15, alpha=ALPHA, look=Look(10, 10))
    assert within.phase == "Successful", within.message
    assert within.degradation == pytest.approx(0.08, abs=0.02) and within.upper_bound < 0.15
    assert judge_latency(slight, stable, bounds=FINE, max_degradation=0.05, alpha=ALPHA,
                         look=Look(10, 10)).phase == "Failed"


def test_buckets_too_coarse_for_the_tolerance_never_pass() -> None:
    # All traffic between 250 and 500 ms (one default bucket): a 10% slowdown is invisible in the counts,
    # so however much traffic, the judge cannot show the canary within 10%.
    rng = np.random.default_rng(6)
    bounds = list(BUCKETS)
    stable = lognormal_histogram(rng, 200_000, 0.33, 0.1, bounds)
    same = lognormal_histogram(rng, 100_000, 0.33, 0.1, bounds)
    v = judge_latency(same, stable, bounds=bounds, max_degradation=0.1, alpha=ALPHA, look=Look(10, 10))
    assert v.phase == "Inconclusive" and "too coarse" in v.message, v.message
    # Slower by exactly the tolerance: the interpolated bound would call it within 10% (about 5%), the judge
    # does not pass it (here the failure test sees it).
    slower = lognormal_histogram(rng, 100_000, 0.33 * 1.1, 0.1, bounds)
    v = judge_latency(slower, stable, bounds=bounds, max_degradation=0.1, alpha=ALPHA, look=Look(10, 10))
    assert v.phase == "Failed" and v.upper_bound is not None and v.upper_bound < 0.1, v.message


@given(
    st.lists(st.integers(0, 500), min_size=2, max_size=12), st.floats(0.05, 20.0),
)
@settings(max_examples=200, deadline=None)
def test_slowing_a_histogram_keeps_its_requests_and_only_moves_them_up(counts: list[int], factor: float) -> None:
    c = np.array(counts, dtype=float)
    bounds = np.array(BUCKETS[-len(c):])
    slowed = scale_histogram(c, bounds, factor)
    assert np.all(slowed >= -1e-9) and slowed.sum() == pytest.approx(c.sum())
    np.testing.assert_allclose(scale_histogram(c, bounds, 1.0), c, atol=1e-9)
    cdf, slowed_cdf = np.cumsum(c), np.cumsum(slowed)
    if factor >= 1:
        assert np.all(slowed_cdf <= cdf + 1e-9)
    else:
        assert np.all(slowed_cdf >= cdf - 1e-9)


@pytest.mark.parametrize("max_degradation", [0.05, 0.1, 0.3, 0.9])
def test_the_pass_tests_slack_covers_the_histogram_interpolation_error(max_degradation: float) -> None:
    """At a true slowdown of exactly maxDegradation the re-split histogram may misplace traffic; wherever the
    judge may pass, the slack it charges covers that error (else a canary at the tolerance would pass more
    often than alpha once traffic is large). Where it would not be covered, the judge never passes."""
    bias = interpolation_bias(max_degradation=max_degradation, medians=25)
    assert bias["shapes_the_judge_may_pass"] >= bias["shapes"] // 4  # the guard leaves most real shapes judged
    assert -bias["worst_bias_where_it_may_pass"] <= INTERPOLATION_SLACK_PER_UNIT * max_degradation, bias
    assert -bias["worst_bias_any_shape"] > INTERPOLATION_SLACK_PER_UNIT * max_degradation  # the guard is needed
