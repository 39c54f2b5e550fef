"""Compare current data with a baseline: drift per feature, schema violations, a dataset verdict.

Pure: a parsed Baseline and a DataFrame or Profile in, a DriftReport out.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from kanari.drift.methods import (
    CATEGORICAL_METHODS,
    NUMERIC_METHODS,
    P_VALUE_METHODS,
    categorical_drift,
    is_drift,
    numeric_drift,
)
from kanari.drift.model_monitor import Baseline
from kanari.drift.profile import Feature, Profile, categorical_strings, infer_type, profile_frame

MAX_EXAMPLES = 5


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
    kind: str  # missing_column | extra_column | type_mismatch | completeness | unseen_category
    feature: str
    detail: str


@dataclass
class DriftReport:
    features: list[FeatureDrift]
    violations: list[SchemaViolation]
    baseline_rows: int
    current_rows: int
    drifted_features: list[str] = field(default_factory=list)

    @property
    def drift(self) -> bool:
        return bool(self.drifted_features or self.violations)

    @property
    def verdict(self) -> str:
        if self.drifted_features and self.violations:
            return "drift and schema violations"
        if self.drifted_features:
            return "drift"
        return "schema violations" if self.violations else "no drift"

    def most_drifted(self, n: int) -> list[FeatureDrift]:
        ranked = sorted((f for f in self.features if f.value is not None), key=lambda f: -f.severity)
        return ranked[:n]

    def to_dict(self) -> dict[str, Any]:
        return {
            "verdict": self.verdict,
            "drift": self.drift,
            "baseline_rows": self.baseline_rows,
            "current_rows": self.current_rows,
            "drifted_features": self.drifted_features,
            "features": [asdict(f) for f in self.features],
            "schema_violations": [asdict(v) for v in self.violations],
        }


def method_for(baseline: Baseline, feature: Feature, override: str | None) -> str:
    if feature.numeric:
        return override if override in NUMERIC_METHODS else baseline.numeric_method
    return override if override in CATEGORICAL_METHODS else baseline.categorical_method


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
    out: list[SchemaViolation] = []
    known = {f.name for f in baseline.profile.features}
    for f in baseline.input_features:
        if f.name not in df.columns:
            out.append(SchemaViolation("missing_column", f.name, "in the baseline, not in the data"))
    for col in df.columns:
        if col not in known:
            out.append(SchemaViolation("extra_column", str(col), "in the data, not in the baseline"))
    rows = len(df)
    for f in baseline.profile.features:
        if f.name not in df.columns:
            continue
        series = df[f.name]
        current_type = infer_type(series)
        if f.numeric:
            coerced = pd.to_numeric(series, errors="coerce")
            bad = series.notna() & coerced.isna()
            if bad.any():
                examples = ", ".join(repr(v) for v in series[bad].astype(str).unique()[:MAX_EXAMPLES])
                out.append(
                    SchemaViolation(
                        "type_mismatch", f.name, f"{int(bad.sum())} non-numeric values in a {f.inferred_type} feature: {examples}"
                    )
                )
            elif f.inferred_type == "Integral" and current_type == "Fractional":
                out.append(SchemaViolation("type_mismatch", f.name, "fractional values in an Integral feature"))
        else:
            domain = baseline.domain(f.name)
            if domain is not None:
                values = pd.Series(categorical_strings(series)).dropna()
                unseen = values[~values.isin(domain)]
                if len(unseen):
                    examples = ", ".join(repr(v) for v in unseen.unique()[:MAX_EXAMPLES])
                    out.append(
                        SchemaViolation(
                            "unseen_category", f.name, f"{len(unseen)} values outside the baseline's domain: {examples}"
                        )
                    )
        required = float(baseline.constraint(f.name).get("completeness", 0.0))
        completeness = float(series.notna().sum()) / rows if rows else 1.0
        if completeness < required:
            out.append(
                SchemaViolation(
                    "completeness", f.name, f"{completeness:.4f} of values present, the baseline requires {required:.4f}"
                )
            )
    return out


def profile_current(baseline: Baseline, df: pd.DataFrame) -> Profile:
    """Profile current data on the baseline's features and types (the form drift_values needs)."""
    return profile_frame(df.rename(columns=str), baseline.profile.features, seed=0)


def compare_frame(
    baseline: Baseline, df: pd.DataFrame, method: str | None = None, current: Profile | None = None
) -> DriftReport:
    """The whole comparison the CLI reports. The baseline's target column is compared only if present.

    Without a `current` profile the data is binned once against the baseline's stored sketch (fastcompare:
    exact on the current side, no sketch of it); with one, the two profiles are compared sketch to sketch.
    """
    if current is None:
        from kanari.drift.fastcompare import compare_frame_fast

        return compare_frame_fast(baseline, df, method)
    df = df.rename(columns=str)
    violations = schema_violations(baseline, df)
    compared = [f for f in baseline.profile.features if f.name in df.columns]
    values = drift_values(baseline, current, compared)
    results: list[FeatureDrift] = []
    for f in compared:
        m = method_for(baseline, f, method)
        raw = values[f.name].get(m, float("nan"))
        value = None if not np.isfinite(raw) else round(float(raw), 6)
        threshold = baseline.thresholds[m]
        results.append(
            FeatureDrift(
                feature=f.name,
                inferred_type=f.inferred_type,
                method=m,
                value=value,
                threshold=threshold,
                drifted=value is not None and is_drift(m, value, threshold),
                baseline_count=baseline.profile.present(f.name),
                current_count=current.present(f.name),
            )
        )
    return DriftReport(
        features=results,
        violations=violations,
        baseline_rows=baseline.profile.rows,
        current_rows=len(df),
        drifted_features=[r.feature for r in results if r.drifted],
    )
