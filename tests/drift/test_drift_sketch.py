"""The sketches: KLL merge and serialisation (property tests), accuracy against exact statistics, the
drift distances against their textbook definitions, and bounded memory."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from kanari.drift.methods import chi2_pvalue, decile_bins, linf, numeric_drift, psi_of
from kanari.drift.profile import Feature
from kanari.drift.sketch import OTHER, CategoryCounter, KllSketch
from kanari.drift.window import SlidingWindow
from scipy.spatial.distance import jensenshannon
from scipy.stats import chi2_contingency, ks_2samp, wasserstein_distance

K = 32  # small k so that compaction happens within the sizes hypothesis draws
# KLL rank error bound with margin (seen: <= 2.7/k over 300 random streams); hypothesis also draws ties.
RANK_TOL = 4.0 / K

values = st.floats(min_value=-1e6, max_value=1e6, allow_nan=False, allow_infinity=False)
columns = st.lists(st.lists(values, min_size=2, max_size=2), min_size=0, max_size=700)


def exact_cdf(data: np.ndarray, x: float) -> float:
    return float(np.mean(data <= x)) if len(data) else float("nan")


def sketch_of(rows: list[list[float]], seed: int) -> KllSketch:
    sk = KllSketch(2, k=K, seed=seed)
    if rows:
        sk.update(np.array(rows))
    return sk


@settings(max_examples=60, deadline=None)
@given(a=columns, b=columns, seed=st.integers(0, 2**16))
def test_merge_preserves_counts_and_ranks(a: list[list[float]], b: list[list[float]], seed: int) -> None:
    merged = sketch_of(a, seed).merge(sketch_of(b, seed + 1))
    both = np.array(a + b).reshape(-1, 2)
    assert merged.n == len(both)  # total weight is exact through any number of compactions
    _, weights = merged.weighted_items()
    assert np.allclose(weights.sum(axis=1), len(both))
    if len(both):
        probes = np.quantile(both, [0.1, 0.5, 0.9], axis=0)
        approx = merged.cdf(probes)
        for j in range(2):
            for i in range(3):
                assert abs(approx[i, j] - exact_cdf(both[:, j], probes[i, j])) <= RANK_TOL


@settings(max_examples=60, deadline=None)
@given(rows=columns, seed=st.integers(0, 2**16))
def test_serialise_round_trip_is_exact(rows: list[list[float]], seed: int) -> None:
    sk = sketch_of(rows, seed)
    back = KllSketch.from_dict(json.loads(json.dumps(sk.to_dict())))
    assert back.n == sk.n
    for a, b in zip(sk.levels, back.levels, strict=True):
        assert np.array_equal(a, b, equal_nan=True)
    # The per-feature SageMaker form (`kll.sketch.data`) reads back to the same distribution.
    per_column = [{"parameters": {"c": sk.c, "k": sk.k}, "data": sk.column_levels(j)} for j in range(2)]
    joined = KllSketch.from_columns(json.loads(json.dumps(per_column)))
    probes = np.array([[0.0, 0.0], [1.0, -1.0], [1e5, 1e5]])
    assert np.allclose(joined.cdf(probes), sk.cdf(probes), equal_nan=True)


@settings(max_examples=40, deadline=None)
@given(parts=st.lists(columns, min_size=1, max_size=5), seed=st.integers(0, 2**16))
def test_merge_is_order_insensitive_in_distribution(parts: list[list[list[float]]], seed: int) -> None:
    forward = KllSketch(2, k=K, seed=seed)
    backward = KllSketch(2, k=K, seed=seed)
    for p in parts:
        forward.merge(sketch_of(p, seed))
    for p in reversed(parts):
        backward.merge(sketch_of(p, seed))
    data = np.array([r for p in parts for r in p]).reshape(-1, 2)
    assert forward.n == backward.n == len(data)
    if len(data):
        probe = np.median(data, axis=0, keepdims=True)
        assert np.all(np.abs(forward.cdf(probe) - backward.cdf(probe)) <= 2 * RANK_TOL)


def test_missing_values_weigh_nothing() -> None:
    sk = KllSketch(2, k=K, seed=1)
    rows = np.column_stack([np.arange(1000.0), np.where(np.arange(1000) % 2 == 0, np.nan, 1.0)])
    sk.update(rows)
    cdf = sk.cdf(np.array([[499.0, 1.0]]))
    assert abs(cdf[0, 0] - 0.5) < RANK_TOL
    assert cdf[0, 1] == pytest.approx(1.0)  # NaNs excluded from the second column's distribution


def test_sketch_linf_tracks_exact_ks_at_default_k() -> None:
    rng = np.random.default_rng(7)
    a = rng.normal(size=(50_000, 8))
    b = rng.normal(size=(20_000, 8)) + np.linspace(0, 0.5, 8)
    sa, sb = KllSketch(8, seed=1), KllSketch(8, seed=2)
    sa.update(a)
    for chunk in np.array_split(b, 40):  # streamed in pieces, as a window would see it
        sb.update(chunk)
    exact = np.array([ks_2samp(a[:, j], b[:, j]).statistic for j in range(8)])
    assert np.max(np.abs(linf(sa, sb) - exact)) < 0.02
    assert sa.retained < 2000  # per column, for 50k rows


def test_distances_match_their_definitions_on_exact_sketches() -> None:
    # Below the first compaction a sketch holds every value, so the distances must equal the
    # textbook formulas computed directly.
    rng = np.random.default_rng(3)
    a = rng.normal(size=(150, 1))
    b = rng.normal(loc=0.7, size=(120, 1))
    sa, sb = KllSketch(1, k=1000), KllSketch(1, k=1000)
    sa.update(a)
    sb.update(b)
    got = numeric_drift(sa, sb, np.array([a.std()]), ("linf", "psi", "js", "wasserstein"))
    assert got["linf"][0] == pytest.approx(ks_2samp(a[:, 0], b[:, 0]).statistic)
    assert got["wasserstein"][0] == pytest.approx(wasserstein_distance(a[:, 0], b[:, 0]) / a.std())
    edges = np.quantile(a[:, 0], np.arange(1, 10) / 10, method="inverted_cdf")
    full = np.concatenate([[-np.inf], edges, [np.inf]])
    pb = np.array([np.sum((b[:, 0] > lo) & (b[:, 0] <= hi)) for lo, hi in zip(full[:-1], full[1:], strict=True)]) / len(b)
    pa_right = np.array([np.sum((a[:, 0] > lo) & (a[:, 0] <= hi)) for lo, hi in zip(full[:-1], full[1:], strict=True)]) / len(a)
    assert np.allclose(decile_bins(sa, sb)[0][:, 0], pa_right)
    b_, c_ = np.clip(pa_right, 1e-4, None), np.clip(pb, 1e-4, None)
    assert got["psi"][0] == pytest.approx(np.sum((c_ - b_) * np.log(c_ / b_)))
    assert got["js"][0] == pytest.approx(jensenshannon(pa_right, pb, base=2))


def test_psi_uses_epsilon_for_empty_bins() -> None:
    base = np.array([[0.5], [0.5], [0.0]])
    cur = np.array([[0.0], [0.5], [0.5]])
    value = psi_of(base, cur)[0]
    assert np.isfinite(value) and value > 4  # an emptied and a new bin: a large but finite PSI


def test_chi2_groups_small_categories() -> None:
    base = np.array([500, 480, 3, 2, 1, 0], dtype=float)  # last: a category the baseline never saw
    cur = np.array([50, 48, 0, 1, 0, 1], dtype=float)
    # Expected counts in the current sample: 3, 2, 1, 0 for the small ones -> pooled into one.
    pooled = chi2_contingency(np.array([[500, 480, 6], [50, 48, 2]]), correction=False).pvalue
    assert chi2_pvalue(base, cur) == pytest.approx(pooled)
    assert chi2_pvalue(np.array([10.0]), np.array([3.0])) == 1.0  # one category: nothing to test


def test_category_counter_stays_bounded() -> None:
    counter = CategoryCounter(max_categories=50)
    counter.add_array(np.array([f"user-{i}" for i in range(10_000)], dtype=object))
    assert len(counter.counts) == 51
    assert counter.total == 10_000
    assert counter.counts[OTHER] == 10_000 - 50


def test_window_memory_is_constant_in_stream_length() -> None:
    features = [Feature(f"f{j}", "Fractional") for j in range(20)]
    window = SlidingWindow(features, size=5000)
    rng = np.random.default_rng(0)
    sizes = []
    for step in range(60):
        window.add(rng.normal(size=(1000, 20)), {}, 1000)
        if step in (19, 59):
            sizes.append(sum(b.sketch.retained for b in window._buckets))
    assert window.samples <= 5000
    assert sizes[0] == sizes[1]  # 20k rows or 60k rows: the same memory
    # and the window forgets: a shift fully replaces the old data after `size` rows
    for _ in range(6):
        window.add(rng.normal(loc=10.0, size=(1000, 20)), {}, 1000)
    assert np.nanmin(window.profile().sketch.quantiles([0.0])) > 5.0
