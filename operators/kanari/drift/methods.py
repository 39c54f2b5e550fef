"""Drift distances between a baseline and a current distribution.

Numeric features are compared sketch against sketch, all features in one numpy pass: the two sketches'
items are stacked with weights +1/n_baseline and -1/n_current, sorted per column, and the running sum is
the CDF difference at every item. Categorical features are compared on category frequencies.

Thresholds default to the tools users know: L-infinity 0.1 (SageMaker Model Monitor), PSI, Jensen-Shannon
and normalised Wasserstein 0.1, chi-square p-value 0.05 (Evidently).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from kanari.drift.sketch import CategoryCounter, KllSketch

NUMERIC_METHODS = ("linf", "psi", "js", "wasserstein")
CATEGORICAL_METHODS = ("linf", "psi", "js", "chi2")
METHODS = ("linf", "psi", "js", "wasserstein", "chi2")
DEFAULT_THRESHOLDS: dict[str, float] = {"linf": 0.1, "psi": 0.1, "js": 0.1, "wasserstein": 0.1, "chi2": 0.05}
# chi2 reports a p-value: small means drift. Every other method is a distance: large means drift.
P_VALUE_METHODS = frozenset({"chi2"})
PSI_EPSILON = 1e-4  # stands in for an empty bin, so ln(p/q) stays finite
DECILES = tuple(q / 10 for q in range(1, 10))
CHI2_MIN_EXPECTED = 5.0


def is_drift(method: str, value: float, threshold: float) -> bool:
    if not np.isfinite(value):
        return False
    return value < threshold if method in P_VALUE_METHODS else value > threshold


# --------------------------------------------------------------------------------------------- numeric
def _stacked(base: KllSketch, cur: KllSketch) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sorted values and CDF differences (baseline - current), shape (columns, items), plus which columns
    have data on both sides."""
    return _stacked_items(*base.weighted_items(), *cur.weighted_items())


def _stacked_items(
    vb: np.ndarray, wb: np.ndarray, vc: np.ndarray, wc: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """As `_stacked`, from weighted items (values, weights), each shape (columns, items)."""
    tb, tc = wb.sum(axis=1), wc.sum(axis=1)
    ok = (tb > 0) & (tc > 0)
    values = np.concatenate([vb, vc], axis=1)
    diffs = np.concatenate([wb / np.where(tb > 0, tb, 1.0)[:, None], -wc / np.where(tc > 0, tc, 1.0)[:, None]], axis=1)
    order = np.argsort(values, axis=1)
    sv = np.take_along_axis(values, order, axis=1)
    cd = np.cumsum(np.take_along_axis(diffs, order, axis=1), axis=1)
    return sv, cd, ok


def linf(base: KllSketch, cur: KllSketch) -> np.ndarray:
    """Largest distance between the two CDFs (the two-sample KS statistic), per column."""
    sv, cd, ok = _stacked(base, cur)
    if not sv.shape[1]:
        return np.full(base.n_columns, np.nan)
    # Among tied values only the last one's running sum is a CDF value.
    last_of_run = np.hstack([sv[:, 1:] != sv[:, :-1], np.ones((sv.shape[0], 1), dtype=bool)])
    out = np.max(np.where(last_of_run, np.abs(cd), 0.0), axis=1)
    return np.where(ok, out, np.nan)


def wasserstein(base: KllSketch, cur: KllSketch, base_std: np.ndarray) -> np.ndarray:
    """Earth mover's distance (integral of |CDF difference|) divided by the baseline's std."""
    return wasserstein_items(*base.weighted_items(), *cur.weighted_items(), base_std)


def wasserstein_items(
    vb: np.ndarray, wb: np.ndarray, vc: np.ndarray, wc: np.ndarray, base_std: np.ndarray
) -> np.ndarray:
    """`wasserstein` of weighted items (values, weights; shape (columns, items)): also what the drift
    bootstrap computes between its null draws, so the null statistic is the observed one's computation."""
    sv, cd, ok = _stacked_items(vb, wb, vc, wc)
    if sv.shape[1] < 2:
        return np.where(ok, 0.0, np.nan)
    dx = np.diff(sv, axis=1)
    w1 = np.sum(np.abs(cd[:, :-1]) * np.where(np.isfinite(dx), dx, 0.0), axis=1)
    # A constant baseline has no spread to scale by: the distance stays in the feature's units.
    scale = np.where(base_std > 0, base_std, 1.0)
    return np.where(ok, w1 / scale, np.nan)


def decile_bins(base: KllSketch, cur: KllSketch) -> tuple[np.ndarray, np.ndarray]:
    """Proportions of baseline and current in the baseline's decile bins, shape (10, columns).

    Ties (a feature with few values) make edges coincide; such empty bins are empty on both sides.
    """
    edges = base.quantiles(DECILES)
    pb = _bin_props(base, edges)
    pc = _bin_props(cur, edges)
    return pb, pc


def _bin_props(sketch: KllSketch, edges: np.ndarray) -> np.ndarray:
    cdf = sketch.cdf(np.nan_to_num(edges, nan=0.0))
    full = np.vstack([np.zeros((1, cdf.shape[1])), cdf, np.ones((1, cdf.shape[1]))])
    return np.clip(np.diff(full, axis=0), 0.0, 1.0)


def psi_of(pb: np.ndarray, pc: np.ndarray) -> np.ndarray:
    b = np.clip(pb, PSI_EPSILON, None)
    c = np.clip(pc, PSI_EPSILON, None)
    return np.sum((c - b) * np.log(c / b), axis=0)


def js_of(pb: np.ndarray, pc: np.ndarray) -> np.ndarray:
    """Jensen-Shannon distance in base 2 (0 identical .. 1 disjoint), as scipy and Evidently define it."""
    from scipy.spatial.distance import jensenshannon  # scipy's import is slow; the CLI imports this module

    with np.errstate(invalid="ignore", divide="ignore"):
        return np.asarray(jensenshannon(pb, pc, base=2, axis=0), dtype=np.float64)


def numeric_drift(base: KllSketch, cur: KllSketch, base_std: np.ndarray, methods: tuple[str, ...]) -> dict[str, np.ndarray]:
    """{method: values per column}; NaN where either side has no values for a column."""
    out: dict[str, np.ndarray] = {}
    if "linf" in methods:
        out["linf"] = linf(base, cur)
    if "wasserstein" in methods:
        out["wasserstein"] = wasserstein(base, cur, base_std)
    if "psi" in methods or "js" in methods:
        pb, pc = decile_bins(base, cur)
        has = (base.weighted_items()[1].sum(axis=1) > 0) & (cur.weighted_items()[1].sum(axis=1) > 0)
        if "psi" in methods:
            out["psi"] = np.where(has, psi_of(pb, pc), np.nan)
        if "js" in methods:
            out["js"] = np.where(has, js_of(pb, pc), np.nan)
    return out


# ----------------------------------------------------------------------------------------- categorical
def aligned_frequencies(base: Mapping[str, int], cur: Mapping[str, int]) -> tuple[list[str], np.ndarray, np.ndarray]:
    cats = sorted(set(base) | set(cur))
    b = np.array([base.get(c, 0) for c in cats], dtype=np.float64)
    c = np.array([cur.get(k, 0) for k in cats], dtype=np.float64)
    return cats, b, c


def chi2_pvalue(base_counts: np.ndarray, cur_counts: np.ndarray) -> float:
    """Two-sample chi-square test on a 2 x K table; categories the current sample is expected to see fewer
    than 5 times (and categories the baseline never saw) are pooled into one, as the test requires."""
    nb, nc = base_counts.sum(), cur_counts.sum()
    if nb == 0 or nc == 0:
        return float("nan")
    expected = base_counts / nb * nc
    big = expected >= CHI2_MIN_EXPECTED
    table_b = np.append(base_counts[big], base_counts[~big].sum())
    table_c = np.append(cur_counts[big], cur_counts[~big].sum())
    keep = (table_b + table_c) > 0
    table = np.vstack([table_b[keep], table_c[keep]])
    if table.shape[1] < 2:
        return 1.0
    from scipy.stats import chi2_contingency  # scipy's import is slow; the CLI imports this module

    return float(chi2_contingency(table, correction=False).pvalue)


def categorical_drift(base: CategoryCounter, cur: CategoryCounter, methods: tuple[str, ...]) -> dict[str, float]:
    _, b, c = aligned_frequencies(base.counts, cur.counts)
    nb, nc = b.sum(), c.sum()
    if nb == 0 or nc == 0:
        return {m: float("nan") for m in methods}
    pb, pc = b / nb, c / nc
    out: dict[str, float] = {}
    for m in methods:
        if m == "linf":
            out[m] = float(np.max(np.abs(pb - pc)))
        elif m == "psi":
            out[m] = float(psi_of(pb, pc))
        elif m == "js":
            out[m] = float(js_of(pb, pc))
        elif m == "chi2":
            out[m] = chi2_pvalue(b, c)
    return out
