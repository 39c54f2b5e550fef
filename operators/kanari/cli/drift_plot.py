"""Baseline vs current distributions of the most drifted features, as one PNG."""

from __future__ import annotations

import os

import matplotlib

matplotlib.use("Agg")  # files only: the CLI runs on servers without a display
import matplotlib.pyplot as plt
import numpy as np

from kanari.drift.compare import DriftReport
from kanari.drift.methods import DECILES, P_VALUE_METHODS
from kanari.drift.model_monitor import Baseline
from kanari.drift.profile import Profile

PLOTTED_FEATURES = 6
CURVE_POINTS = 200


def plot_report(
    report: DriftReport, baseline: Baseline, current: Profile, path: str | os.PathLike[str], top: int = PLOTTED_FEATURES
) -> list[str]:
    """Draw CDFs (numeric) or category frequencies (categorical) of the `top` most drifted features.

    Returns the plotted feature names.
    """
    chosen = report.most_drifted(top)
    if not chosen:
        raise ValueError("no feature could be compared, so there is nothing to plot")
    cols = min(3, len(chosen))
    rows = int(np.ceil(len(chosen) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(5 * cols, 3.6 * rows), squeeze=False)
    numeric_index = {f.name: j for j, f in enumerate(baseline.profile.numeric_features)}
    for ax, result in zip(axes.flat, chosen, strict=False):
        name = result.feature
        if name in numeric_index:
            j = numeric_index[name]
            lo = np.nanmin([baseline.profile.moments.minimum[j], current.moments.minimum[j]])
            hi = np.nanmax([baseline.profile.moments.maximum[j], current.moments.maximum[j]])
            xs = np.linspace(lo, hi, CURVE_POINTS)
            for profile, label in ((baseline.profile, "baseline"), (current, "current")):
                points = np.full((CURVE_POINTS, profile.sketch.n_columns), np.nan)
                points[:, j] = xs
                ax.plot(xs, profile.sketch.cdf(points)[:, j], label=label)
            for q in baseline.profile.sketch.quantiles(DECILES)[:, j]:
                ax.axvline(q, color="grey", lw=0.4, alpha=0.5)
            ax.set_ylabel("CDF")
        else:
            base = baseline.profile.categories[name].counts
            cur = current.categories[name].counts
            cats = sorted(set(base) | set(cur), key=lambda c: -(base.get(c, 0) + cur.get(c, 0)))[:15]
            nb, nc = max(sum(base.values()), 1), max(sum(cur.values()), 1)
            x = np.arange(len(cats))
            ax.bar(x - 0.2, [base.get(c, 0) / nb for c in cats], 0.4, label="baseline")
            ax.bar(x + 0.2, [cur.get(c, 0) / nc for c in cats], 0.4, label="current")
            ax.set_xticks(x, cats, rotation=45, ha="right", fontsize=7)
            ax.set_ylabel("frequency")
        flag = "DRIFT" if result.drifted else "ok"
        op = "<" if result.method in P_VALUE_METHODS else ">"
        ax.set_title(f"{name}: {result.method}={result.value:.3g} ({op}{result.threshold:g}: {flag})", fontsize=9)
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(chosen):]:
        ax.axis("off")
    fig.suptitle(f"Kanari drift: {report.verdict} ({len(report.drifted_features)} drifted features)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return [r.feature for r in chosen]
