"""The KLL sketch's stated error bound holds after any number of merges: a KS statistic computed from two
sketches stays within ks_error_bound of the exact two-sample KS, whatever the batch sizes and merge order."""

from __future__ import annotations

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from kanari.drift.methods import linf
from kanari.drift.sketch import DEFAULT_K, KllSketch, ks_error_bound, rank_error_bound
from kanari.drift.window import WINDOW_SKETCH_K
from scipy.stats import ks_2samp

# What the sizes in use must give: a KS statistic within a fifth of the default 0.1 threshold of the exact one.
KS_TOLERANCE = 0.02


def sup_rank_error(sk: KllSketch, data: np.ndarray) -> float:
    """Largest |sketch CDF - exact CDF| over every value, per column (the sketch CDF is a step function)."""
    sv, cw, total = sk.sorted_cdf()
    worst = 0.0
    for j in range(data.shape[1]):
        x = np.sort(data[:, j])
        last_of_run = np.append(sv[j][1:] != sv[j][:-1], True)  # among tied items only the last is a CDF value
        v, c = sv[j][last_of_run], cw[j][last_of_run] / total[j]
        at = np.searchsorted(x, v, side="right") / len(x)
        before_next = np.append(np.searchsorted(x, v[1:], side="left") / len(x), 1.0)
        first = np.searchsorted(x, v[0], side="left") / len(x)
        worst = max(worst, float(np.max(np.abs(at - c))), float(np.max(np.abs(before_next - c))), float(first))
    return worst


def merged_sketch(data: np.ndarray, cuts: list[int], k: int, rng: np.random.Generator) -> KllSketch:
    """One sketch per batch, merged in a random tree (Spark partitions, window buckets)."""
    bounds = sorted({0, len(data), *(c % len(data) for c in cuts)})
    parts = []
    for a, b in zip(bounds[:-1], bounds[1:], strict=True):
        part = KllSketch(data.shape[1], k=k, seed=int(rng.integers(2**31)))
        part.update(data[a:b])
        parts.append(part)
    while len(parts) > 1:
        i, j = sorted(rng.choice(len(parts), 2, replace=False))
        parts[i].merge(parts[j])
        parts.pop(j)
    return parts[0]


@settings(max_examples=25, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(
    rows=st.integers(2_000, 40_000),
    cuts=st.lists(st.integers(0, 10**9), min_size=0, max_size=300),
    shift=st.floats(0.0, 1.0),
    spread=st.floats(0.5, 2.0),
    ties=st.booleans(),
    seed=st.integers(0, 2**31),
)
def test_ks_from_merged_sketches_stays_within_the_stated_bound(
    rows: int, cuts: list[int], shift: float, spread: float, ties: bool, seed: int
) -> None:
    k = 32  # small, so that these sizes compact through many levels
    rng = np.random.default_rng(seed)
    a = rng.normal(size=(rows, 3))
    b = rng.normal(shift, spread, size=(rows // 2 + 1, 3))
    if ties:  # integer-valued features: many equal values
        a, b = np.round(a * 3), np.round(b * 3)
    sa = merged_sketch(a, cuts, k, rng)
    sb = merged_sketch(b, cuts[::-1], k, rng)
    assert sa.n == len(a) and sb.n == len(b)
    assert sup_rank_error(sa, a) <= sa.rank_error
    assert sup_rank_error(sb, b) <= sb.rank_error
    exact = np.array([ks_2samp(a[:, j], b[:, j]).statistic for j in range(3)])
    assert np.all(np.abs(linf(sa, sb) - exact) <= ks_error_bound(sa, sb))


def test_an_uncompacted_sketch_is_exact() -> None:
    sk = KllSketch(1, k=64)
    sk.update(np.arange(50.0))
    assert sk.rank_error == 0.0
    sk.update(np.arange(500.0))
    assert sk.rank_error == rank_error_bound(64)


def test_window_and_baseline_sizes_keep_ks_within_tolerance_after_a_thousand_merges() -> None:
    """The issue's case: two sketches fed in 1,000-row batches up to 1M rows. The baseline is built from
    1,000 merged partitions; the window side is streamed in 1,000-row batches."""
    rng = np.random.default_rng(20261130)
    n = 1_000_000
    base_data = rng.normal(size=(n, 2))
    cur_data = np.column_stack([rng.normal(0.25, 1.0, n), rng.normal(0.0, 1.1, n)])
    base = KllSketch(2, k=DEFAULT_K, seed=1)
    cur = KllSketch(2, k=WINDOW_SKETCH_K, seed=2)
    for start in range(0, n, 1000):
        part = KllSketch(2, k=DEFAULT_K, seed=start)
        part.update(base_data[start : start + 1000])
        base.merge(part)
        cur.update(cur_data[start : start + 1000])
    bound = ks_error_bound(base, cur)
    assert bound <= KS_TOLERANCE
    exact = np.array([ks_2samp(base_data[:, j], cur_data[:, j]).statistic for j in range(2)])
    assert np.all(np.abs(linf(base, cur) - exact) <= bound)
