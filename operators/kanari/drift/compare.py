"""Compare current data with a baseline: drift per feature, schema violations, a dataset verdict.

Pure: a parsed Baseline and a DataFrame or Profile in, a DriftReport out.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from kanari.drift.methods import (
    CATEGORICAL_METHODS,
    NUMERIC_METHODS,
    P_VALUE_METHODS,
    categorical_drift,
    is_drift,
    numeric_drift,
)
from kanari.drift.model_monitor import Baseline
from kanari.drift.profile import Feature, Profile, categorical_strings, profile_frame
from kanari.drift.thresholds import Significance, holm, significance

if TYPE_CHECKING:
    import pandas as pd

MAX_EXAMPLES = 5


DEFAULT_MIN_SAMPLES = 100  # as the drift monitor: below this a window says nothing either way
ROBUST_C_ALPHA = 1.8  # SageMaker's linf_robust (Deequ Distance.defaultCAlpha, KS at alpha ~0.003)
Status = Literal["drift", "no drift", "inconclusive", "not compared"]


@dataclass(frozen=True)
class FeatureDrift:
    feature: str
    inferred_type: str
    method: str
    value: float | None
    threshold: float
    drifted: bool
    baseline_count: int
    current_count: int
    status: Status = "no drift"
    p_value: float | None = None  # under "same distribution", for these sample sizes
    adjusted_p_value: float | None = None  # Holm-corrected across the dataset's features
    critical_value: float | None = None  # the raw statistic significant at the budget (Bonferroni level)
    note: str = ""

    @property
    def severity(self) -> float:
        """How far past its threshold (1.0 = at the threshold), to rank features across methods."""
        if self.value is None:
            return 0.0
        if self.method in P_VALUE_METHODS:
            return self.threshold / max(self.value, 1e-300)
        return self.value / self.threshold if self.threshold > 0 else float("inf")


@dataclass(frozen=True)
class SchemaViolation:
    kind: str  # missing_column | extra_column | type_mismatch | completeness | unseen_category | baseline_empty
    feature: str
    detail: str


@dataclass
class DriftReport:
    features: list[FeatureDrift]
    violations: list[SchemaViolation]
    baseline_rows: int
    current_rows: int
    drifted_features: list[str] = field(default_factory=list)
    min_samples: int = DEFAULT_MIN_SAMPLES
    false_alarm_rate: float | None = None

    @property
    def drift(self) -> bool:
        return bool(self.drifted_features or self.violations)

    @property
    def inconclusive_features(self) -> list[str]:
        return [f.feature for f in self.features if f.status == "inconclusive"]

    @property
    def verdict(self) -> str:
        if self.drifted_features and self.violations:
            return "drift and schema violations"
        if self.drifted_features:
            return "drift"
        if self.violations:
            return "schema violations"
        # Too few values to judge is not "no drift": the window could not have seen it.
        return "inconclusive" if self.inconclusive_features else "no drift"

    def most_drifted(self, n: int) -> list[FeatureDrift]:
        ranked = sorted((f for f in self.features if f.value is not None), key=lambda f: -f.severity)
        return ranked[:n]

    def to_dict(self) -> dict[str, Any]:
        return {
            "verdict": self.verdict,
            "drift": self.drift,
            "baseline_rows": self.baseline_rows,
            "current_rows": self.current_rows,
            "min_samples": self.min_samples,
            "false_alarm_rate": self.false_alarm_rate,
            "drifted_features": self.drifted_features,
            "inconclusive_features": self.inconclusive_features,
            "features": [asdict(f) for f in self.features],
            "schema_violations": [asdict(v) for v in self.violations],
        }


def method_for(baseline: Baseline, feature: Feature, override: str | None) -> str:
    if feature.numeric:
        return override if override in NUMERIC_METHODS else baseline.numeric_method
    return override if override in CATEGORICAL_METHODS else baseline.categorical_method


def linf_robust(linf_simple: float, n: float, m: float) -> float:
    """SageMaker's comparison_method Robust: the L-infinity distance less the KS allowance for n and m."""
    return max(0.0, linf_simple - ROBUST_C_ALPHA * math.sqrt((n + m) / (n * m)))


def drift_values(baseline: Baseline, current: Profile, features: list[Feature]) -> dict[str, dict[str, float]]:
    """{feature: {method: value}} for every method that applies, numeric features in one pass.

    `current` must have been profiled with (some of) the baseline's features, with the baseline's types.
    """
    base = baseline.profile
    out: dict[str, dict[str, float]] = {}
    wanted = {f.name for f in features}
    current_numeric = [f.name for f in current.numeric_features]
    if current_numeric:
        # The current profile may cover fewer features (a live window has no target column).
        base_index = {f.name: j for j, f in enumerate(base.numeric_features)}
        idx = [base_index[name] for name in current_numeric]
        base_sketch = base.sketch if idx == list(range(base.sketch.n_columns)) else base.sketch.select(idx)
        values = numeric_drift(base_sketch, current.sketch, base.moments.std()[idx], NUMERIC_METHODS)
        for j, name in enumerate(current_numeric):
            if name in wanted:
                out[name] = {m: float(v[j]) for m, v in values.items()}
    for f in current.categorical_features:
        if f.name in wanted:
            out[f.name] = categorical_drift(base.categories[f.name], current.categories[f.name], CATEGORICAL_METHODS)
    return out


def schema_violations(baseline: Baseline, df: pd.DataFrame) -> list[SchemaViolation]:
    """The schema violations of a DataFrame against a baseline (SchemaCheck on one chunk)."""
    check = SchemaCheck.of(baseline, df.columns)
    for f in check.compared:
        if f.numeric:
            values = check.numeric(f, df[f.name])
            check.count_present(f.name, int(np.count_nonzero(~np.isnan(values))))
        else:
            check.categorical(f, df[f.name])
    check.add_rows(len(df))
    return check.violations()


@dataclass
class SchemaCheck:
    """Schema checks of current data against a baseline, accumulated chunk by chunk: the one implementation
    behind both comparison paths (schema_violations on a DataFrame, fastcompare's stream of chunks), so the
    violations do not depend on the path or the chunking.

    Callers hand it each compared column of a chunk: `numeric` (a pandas Series: coerced, non-numeric values
    and fractional values in an Integral feature recorded) or `whole` (float values read without pandas),
    `categorical` (a Series) or `categories` (distinct values and counts); `count_present` with the values
    present, and `add_rows` once per chunk.
    """

    baseline: Baseline
    columns: list[str]
    compared: list[Feature]
    non_numeric: dict[str, int] = field(default_factory=dict)
    non_numeric_examples: dict[str, list[str]] = field(default_factory=dict)
    fractional: set[str] = field(default_factory=set)
    unseen: dict[str, int] = field(default_factory=dict)
    unseen_examples: dict[str, list[str]] = field(default_factory=dict)
    present: dict[str, int] = field(default_factory=dict)
    rows: int = 0

    @classmethod
    def of(cls, baseline: Baseline, columns: Iterable[Any]) -> SchemaCheck:
        names = [str(c) for c in columns]
        here = set(names)
        compared = [f for f in baseline.profile.features if f.name in here]
        return cls(baseline, names, compared, present={f.name: 0 for f in compared})

    def add_rows(self, n: int) -> None:
        self.rows += n

    def count_present(self, name: str, n: int) -> None:
        """Values of a numeric feature that are numbers (non-numeric ones are counted by `numeric`)."""
        self.present[name] += n

    def numeric(self, feature: Feature, series: pd.Series) -> np.ndarray:
        """A numeric feature's chunk as float64 (NaN: missing, or not a number, which is recorded)."""
        import pandas as pd

        name = feature.name
        if pd.api.types.is_float_dtype(series.dtype):
            values = series.to_numpy(dtype=np.float64, na_value=np.nan)
            if feature.inferred_type == "Integral":
                self.whole(name, values)
            return values
        if pd.api.types.is_bool_dtype(series.dtype) or pd.api.types.is_integer_dtype(series.dtype):
            return series.to_numpy(dtype=np.float64, na_value=np.nan)
        coerced = pd.to_numeric(series, errors="coerce")
        bad = series.notna() & coerced.isna()
        if bad.any():
            self.non_numeric[name] = self.non_numeric.get(name, 0) + int(bad.sum())
            seen = self.non_numeric_examples.setdefault(name, [])
            for v in series[bad].astype(str).unique():
                if len(seen) >= MAX_EXAMPLES:
                    break
                if v not in seen:
                    seen.append(v)
        elif feature.inferred_type == "Integral" and pd.api.types.is_float_dtype(coerced.dtype):
            self.whole(name, coerced.to_numpy(dtype=np.float64, na_value=np.nan))
        return coerced.to_numpy(dtype=np.float64, na_value=np.nan)

    def whole(self, name: str, values: np.ndarray) -> None:
        """Float values of an Integral feature: one with a fractional part is a type mismatch."""
        if name not in self.fractional:
            finite = values[np.isfinite(values)]
            if len(finite) and not np.array_equal(finite, np.round(finite)):
                self.fractional.add(name)

    def categorical(self, feature: Feature, series: pd.Series) -> tuple[list[str], np.ndarray]:
        """A categorical feature's chunk counted by integer codes: (distinct values as strings, counts)."""
        import pandas as pd

        codes, uniques = pd.factorize(series, use_na_sentinel=True)
        if not len(uniques):
            return [], np.zeros(0, dtype=np.int64)
        counts = np.bincount(codes[codes >= 0], minlength=len(uniques))
        names = [str(n) for n in categorical_strings(pd.Series(uniques))]
        self.categories(feature.name, names, counts)
        return names, counts

    def categories(self, name: str, names: Sequence[str], counts: Sequence[int] | np.ndarray) -> None:
        self.present[name] += int(sum(counts))
        domain = self.baseline.domain(name)
        if domain is None:
            return
        for value, n in zip(names, counts, strict=True):
            if value not in domain:
                self.unseen[name] = self.unseen.get(name, 0) + int(n)
                seen = self.unseen_examples.setdefault(name, [])
                if len(seen) < MAX_EXAMPLES and value not in seen:
                    seen.append(value)

    def violations(self) -> list[SchemaViolation]:
        out: list[SchemaViolation] = []
        known = {f.name for f in self.baseline.profile.features}
        here = set(self.columns)
        for f in self.baseline.input_features:
            if f.name not in here:
                out.append(SchemaViolation("missing_column", f.name, "in the baseline, not in the data"))
        for col in self.columns:
            if col not in known:
                out.append(SchemaViolation("extra_column", col, "in the data, not in the baseline"))
        for f in self.compared:
            if f.name in self.non_numeric:
                examples = ", ".join(repr(v) for v in self.non_numeric_examples[f.name])
                out.append(SchemaViolation(
                    "type_mismatch", f.name,
                    f"{self.non_numeric[f.name]} non-numeric values in a {f.inferred_type} feature: {examples}",
                ))
            elif f.name in self.fractional:
                out.append(SchemaViolation("type_mismatch", f.name, "fractional values in an Integral feature"))
            if f.name in self.unseen:
                examples = ", ".join(repr(v) for v in self.unseen_examples[f.name])
                out.append(SchemaViolation(
                    "unseen_category", f.name, f"{self.unseen[f.name]} values outside the baseline's domain: {examples}"
                ))
            # A non-numeric value in a numeric feature is present (and a type mismatch).
            filled = self.present[f.name] + self.non_numeric.get(f.name, 0)
            if self.baseline.profile.present(f.name) == 0 and filled:
                out.append(SchemaViolation(
                    "baseline_empty", f.name, f"the baseline has no values for this feature, the data has {filled}"
                ))
            required = float(self.baseline.constraint(f.name).get("completeness", 0.0))
            completeness = filled / self.rows if self.rows else 1.0
            if completeness < required:
                out.append(SchemaViolation(
                    "completeness", f.name, f"{completeness:.4f} of values present, the baseline requires {required:.4f}"
                ))
        return out


CURRENT_SEED = 1  # the baselines' is 0 (model_monitor)


def profile_current(baseline: Baseline, df: pd.DataFrame) -> Profile:
    """Profile current data on the baseline's features and types (the form drift_values needs).

    Seeded (the same data gives the same report) but apart from the baseline's seed 0: with the same coins,
    same-sized samples compact the same ranks and the two sketches' errors cancel, a comparison less noisy
    than the one the thresholds were calibrated on (a monitor window's own coins)."""
    return profile_frame(df.rename(columns=str), baseline.profile.features, seed=CURRENT_SEED)


def compare_frame(
    baseline: Baseline,
    df: pd.DataFrame,
    method: str | None = None,
    current: Profile | None = None,
    *,
    min_samples: int = DEFAULT_MIN_SAMPLES,
    false_alarm_rate: float | None | Literal["baseline"] = "baseline",
) -> DriftReport:
    """The whole comparison the CLI reports. The baseline's target column is compared only if present.

    A feature drifts when its distance passes the baseline's threshold and, when a false-alarm budget is
    set (the baseline's kanari.false_alarm_rate unless given), its Holm-adjusted p-value is within the
    budget. A feature with fewer than `min_samples` current values is inconclusive.

    Without a `current` profile the data is binned once against the baseline's stored sketch (fastcompare:
    exact on the current side, no sketch of it); with one, the two profiles are compared sketch to sketch.
    """
    if current is None:
        from kanari.drift.fastcompare import compare_frame_fast

        return compare_frame_fast(baseline, df, method, min_samples=min_samples, false_alarm_rate=false_alarm_rate)
    df = df.rename(columns=str)
    violations = schema_violations(baseline, df) if baseline.evaluate_constraints else []
    compared = [f for f in baseline.profile.features if f.name in df.columns]
    values = drift_values(baseline, current, compared)
    chosen = {f.name: method_for(baseline, f, method) for f in compared}
    raw = {f.name: values[f.name].get(chosen[f.name], float("nan")) for f in compared}
    return finish_report(
        baseline, current, compared, chosen, raw, violations, len(df), min_samples=min_samples,
        false_alarm_rate=false_alarm_rate,
    )


def finish_report(
    baseline: Baseline,
    current: Profile,
    compared: list[Feature],
    chosen: dict[str, str],
    raw: dict[str, float],
    violations: list[SchemaViolation],
    rows: int,
    *,
    min_samples: int = DEFAULT_MIN_SAMPLES,
    false_alarm_rate: float | None | Literal["baseline"] = "baseline",
    current_exact: bool = False,
) -> DriftReport:
    """Judge each compared feature's raw statistic (both comparison paths end here): the baseline's
    thresholds and comparison method, the minimum sample size, the false-alarm budget.

    `current` carries the current data's distribution for the p-values (`current_exact`: it is the data
    itself, not a sketch of it); `raw` holds each feature's statistic for its method in `chosen`.
    """
    rate = baseline.false_alarm_rate if false_alarm_rate == "baseline" else false_alarm_rate
    counts = {f.name: (baseline.profile.present(f.name), current.present(f.name)) for f in compared}
    judged = [
        f for f in compared
        if baseline.perform_comparison and counts[f.name][1] >= max(min_samples, 1) and np.isfinite(raw[f.name])
    ]
    tests: dict[str, Significance] = {}
    adjusted: dict[str, float] = {}
    if rate is not None and judged:
        tests = significance(
            baseline.profile, current, [(f, chosen[f.name]) for f in judged], raw, rate, current_exact=current_exact
        )
        adjusted = holm({k: v.p_value for k, v in tests.items()})
    results = [_feature_result(baseline, f, chosen[f.name], raw[f.name], counts[f.name], min_samples, rate,
                               tests.get(f.name), adjusted.get(f.name)) for f in compared]
    return DriftReport(
        features=results,
        violations=violations,
        baseline_rows=baseline.profile.rows,
        current_rows=rows,
        drifted_features=[r.feature for r in results if r.drifted],
        min_samples=min_samples,
        false_alarm_rate=rate,
    )


def _feature_result(
    baseline: Baseline,
    f: Feature,
    m: str,
    raw: float,
    counts: tuple[int, int],
    min_samples: int,
    rate: float | None,
    test: Significance | None,
    adjusted: float | None,
) -> FeatureDrift:
    nb, nc = counts
    threshold = baseline.threshold(m, f.numeric)
    value: float | None = None
    if np.isfinite(raw):
        value = round(linf_robust(raw, nb, nc) if m == "linf" and baseline.robust else float(raw), 6)

    def result(status: Status, drifted: bool, note: str = "") -> FeatureDrift:
        return FeatureDrift(
            feature=f.name, inferred_type=f.inferred_type, method=m, value=value, threshold=threshold,
            drifted=drifted, baseline_count=nb, current_count=nc, status=status,
            p_value=None if test is None else float(f"{test.p_value:.6g}"),
            adjusted_p_value=None if adjusted is None else float(f"{adjusted:.6g}"),
            critical_value=None if test is None or test.critical_value is None else round(test.critical_value, 6),
            note=note,
        )

    if not baseline.perform_comparison:
        return result("not compared", False, "distribution_constraints.perform_comparison is Disabled")
    if nb == 0:
        if nc == 0:
            return result("no drift", False, "no values on either side")
        # Nothing to compare a distribution with, but "always missing" became "present": that is drift.
        return result("drift", True, f"the baseline has no values, the data has {nc}")
    if nc < max(min_samples, 1):
        return result("inconclusive", False, f"{nc} values, fewer than min-samples {min_samples}")
    if value is None:
        return result("no drift", False)
    drifted = is_drift(m, value, threshold)
    if rate is not None:
        drifted = drifted and adjusted is not None and adjusted <= rate
    return result("drift" if drifted else "no drift", drifted)
