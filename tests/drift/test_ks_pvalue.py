"""The KS p-value without scipy (kanari.drift.thresholds.ks_p_value / ks_critical_value): never an alarm
that scipy's kstwo (what scipy.stats.ks_2samp uses, and what the comparison used before) would not raise,
and the same verdicts at the levels a verdict is taken at, on a grid of (d, n) and under hypothesis.

kstwo is slow past a few thousand (tens of ms a call at n=50,000), so the grid stops at 10,000; past that
the limiting law and kstwo differ by less than they do at 10,000 (the ratio of critical values tends to 1)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from kanari.drift.thresholds import holm, kolmogorov_sf, ks_critical_value, ks_p_value
from scipy.special import kolmogorov
from scipy.stats import kstwo

SIZES = [*range(1, 31), 40, 50, 66, 75, 100, 150, 200, 300, 500, 1000, 2000, 5000, 10_000]
# Bonferroni levels of the false-alarm budgets in use (0.01 by default, up to 0.5) over 1 to 500 features.
LEVELS = sorted({rate / m for rate in (0.5, 0.1, 0.05, 0.01, 0.001) for m in (1, 2, 5, 10, 20, 100, 500)})
# Where kstwo says exactly 1 (d <= 1/2n) the limiting law is 1 - 1e-10 at n=5: far above every level.
SLACK = 1e-9


def test_kolmogorov_sf_is_scipys_kolmogorov() -> None:
    lams = np.concatenate([np.linspace(0, 0.3, 301), np.linspace(0.3, 8, 7001), [0.999999, 1.0, 1.000001, 1e-9, 40.0]])
    for lam in lams:
        want = float(kolmogorov(lam))
        assert kolmogorov_sf(float(lam)) == pytest.approx(want, rel=1e-12, abs=1e-15), lam


@pytest.mark.parametrize("n", SIZES)
def test_p_value_is_never_below_kstwo_and_verdicts_never_more_alarming(n: int) -> None:
    lam = np.linspace(0.0, 7.0, 701)
    d = np.minimum(1.0, lam / math.sqrt(n))
    exact = kstwo.sf(d, n)
    ours = np.array([ks_p_value(float(x), n) for x in d])
    assert np.all(ours >= exact - SLACK), (n, d[np.argmin(ours - exact)])
    for level in LEVELS:
        # An alarm here is an alarm with kstwo: never more false alarms than before.
        assert not np.any((ours <= level) & (exact > level)), (n, level)


@pytest.mark.parametrize("n", [100, 150, 500, 1000, 2000, 5000, 10_000])
def test_critical_values_are_kstwos_within_one_and_a_half_percent_from_100_at_tail_levels(n: int) -> None:
    for level in LEVELS:
        exact = float(kstwo.isf(level, n))
        ours = ks_critical_value(level, n)
        # Never below kstwo's (never more alarming) and close above it (power kept).
        assert exact <= ours <= exact * (1.03 if level > 0.05 else 1.015 if n < 1000 else 1.005), (n, level, exact, ours)
        # The displayed critical value is where our own p-value crosses the level (at the tail levels where
        # the series' other terms, (level/2)**3 of the first, vanish; above it is a little past the crossing).
        assert ks_p_value(ours, n) <= level * (1 + 1e-9)
        if level <= 0.05:
            assert ks_p_value(ours * 0.999, n) > level


@pytest.mark.parametrize("n", [1, 2, 3, 4, 5, 10, 30])
def test_small_sizes_critical_values_are_conservative_too(n: int) -> None:
    for level in LEVELS:
        assert ks_critical_value(level, n) >= float(kstwo.isf(level, n)) - 1e-12


@given(
    st.floats(0.0, 1.0, allow_nan=False),
    st.integers(1, 3000),
    st.lists(st.floats(1e-12, 1.0), min_size=0, max_size=8),
)
@settings(max_examples=300, deadline=None)
def test_holm_verdicts_are_a_subset_of_kstwos(d: float, n: int, others: list[float]) -> None:
    """A random statistic among random other features' p-values: the feature is flagged (Holm-adjusted p at
    most the budget) only when kstwo's p-value would have flagged it too."""
    ours = ks_p_value(d, n)
    exact = float(kstwo.sf(d, n))
    assert ours >= exact - SLACK
    assert 0.0 <= ours <= 1.0
    for rate in (0.01, 0.05, 0.5):
        mine = holm({"x": ours, **{f"o{i}": p for i, p in enumerate(others)}})["x"]
        theirs = holm({"x": exact, **{f"o{i}": p for i, p in enumerate(others)}})["x"]
        if mine <= rate:
            assert theirs <= rate * (1 + 1e-9)


@given(st.one_of(st.floats(-1e300, 1e300), st.sampled_from([math.inf, -math.inf, 5e-324])), st.integers(1, 10**9))
@settings(max_examples=200, deadline=None)
def test_hostile_statistics_give_a_probability(d: float, n: int) -> None:
    p = ks_p_value(d, n)
    assert 0.0 <= p <= 1.0
    if d <= 0:
        assert p == 1.0
