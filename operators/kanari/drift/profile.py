"""A dataset's profile: per-feature counts, moments, extremes, a KLL sketch of every numeric feature and
category counts of every categorical one. Profiles merge (window buckets, chunks of a big file) and
read and write the statistics.json format of SageMaker Model Monitor.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from kanari.drift.sketch import DEFAULT_K, OTHER, CategoryCounter, KllSketch

if TYPE_CHECKING:
    import pandas as pd

InferredType = Literal["Integral", "Fractional", "String"]
NUMERIC_TYPES = ("Integral", "Fractional")
HISTOGRAM_BUCKETS = 10  # SageMaker materialises the KLL distribution in 10 buckets
CHUNK_VALUES = 2_000_000  # values per chunk when profiling a big table: bounds the temporaries (~16 MB each)


def chunk_rows(n_features: int) -> int:
    return max(1000, CHUNK_VALUES // max(1, n_features))


@dataclass(frozen=True)
class Feature:
    name: str
    inferred_type: InferredType

    @property
    def numeric(self) -> bool:
        return self.inferred_type in NUMERIC_TYPES


def infer_type(series: pd.Series) -> InferredType:
    """SageMaker's inferred_type for a column: Integral, Fractional or String."""
    import pandas as pd  # imported on use: paths reading Arrow columns (the CLI, fastcompare) never need it

    if pd.api.types.is_bool_dtype(series.dtype):
        return "String"
    if pd.api.types.is_integer_dtype(series.dtype):
        return "Integral"
    if pd.api.types.is_float_dtype(series.dtype):
        values = series.dropna().to_numpy()
        finite = values[np.isfinite(values)]
        return "Integral" if len(values) and np.all(finite == np.round(finite)) else "Fractional"
    return "String"


def categorical_strings(series: pd.Series) -> np.ndarray:
    """A categorical column as strings (how statistics.json stores them), None where missing."""
    missing = series.isna().to_numpy()
    if _is_boolean(series, missing):
        # A bool column with gaps arrives as object (CSV) or nullable "boolean" (Parquet); it is still the
        # feature the baseline stored as true/false, as the monitor's payload path reads JSON booleans.
        out = np.array([None if m else ("true" if v else "false") for v, m in zip(series, missing, strict=True)], dtype=object)
    else:
        out = series.astype(str).to_numpy(dtype=object)
    out[missing] = None
    return out


def _is_boolean(series: pd.Series, missing: np.ndarray) -> bool:
    import pandas as pd

    if pd.api.types.is_bool_dtype(series.dtype):
        return True
    if series.dtype != object or missing.all():
        return False
    return all(isinstance(v, bool | np.bool_) for v in series[~missing])


@dataclass
class Moments:
    """Count, mean, M2, min, max per numeric column; merged with Chan's parallel formula."""

    count: np.ndarray
    mean: np.ndarray
    m2: np.ndarray
    minimum: np.ndarray
    maximum: np.ndarray
    total: np.ndarray

    @classmethod
    def empty(cls, n: int) -> Moments:
        return cls(np.zeros(n), np.zeros(n), np.zeros(n), np.full(n, np.inf), np.full(n, -np.inf), np.zeros(n))

    @classmethod
    def of(cls, rows: np.ndarray) -> Moments:
        present = ~np.isnan(rows)
        count = present.sum(axis=0).astype(np.float64)
        total = np.nansum(rows, axis=0)
        with np.errstate(invalid="ignore", divide="ignore"):
            mean = np.where(count > 0, total / np.maximum(count, 1), 0.0)
        dev = np.where(present, rows - mean[None, :], 0.0)
        m2 = (dev * dev).sum(axis=0)
        minimum = np.where(count > 0, np.min(np.where(present, rows, np.inf), axis=0), np.inf)
        maximum = np.where(count > 0, np.max(np.where(present, rows, -np.inf), axis=0), -np.inf)
        return cls(count, mean, m2, minimum, maximum, total)

    @classmethod
    def of_columns(cls, columns: np.ndarray) -> Moments:
        """As `of`, for a chunk given column by column (shape (columns, n)); a chunk without missing values
        (the usual case) skips the masked copies."""
        nan = np.isnan(columns)
        if nan.any():
            return cls.of(columns.T)
        n = columns.shape[1]
        count = np.full(columns.shape[0], float(n))
        total = columns.sum(axis=1)
        mean = total / n if n else np.zeros(columns.shape[0])
        dev = columns - mean[:, None]
        m2 = np.einsum("ij,ij->i", dev, dev)
        minimum = columns.min(axis=1) if n else np.full(columns.shape[0], np.inf)
        maximum = columns.max(axis=1) if n else np.full(columns.shape[0], -np.inf)
        return cls(count, mean, m2, minimum, maximum, total)

    def merge(self, other: Moments) -> Moments:
        n = self.count + other.count
        delta = other.mean - self.mean
        with np.errstate(invalid="ignore", divide="ignore"):
            frac = np.where(n > 0, other.count / np.maximum(n, 1), 0.0)
        self.mean = self.mean + delta * frac
        self.m2 = self.m2 + other.m2 + delta * delta * self.count * frac
        self.count = n
        self.total = self.total + other.total
        self.minimum = np.minimum(self.minimum, other.minimum)
        self.maximum = np.maximum(self.maximum, other.maximum)
        return self

    def std(self) -> np.ndarray:
        # Population std, as SageMaker's std_dev.
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.sqrt(np.where(self.count > 0, self.m2 / np.maximum(self.count, 1), 0.0))

    def copy(self) -> Moments:
        return Moments(*(a.copy() for a in (self.count, self.mean, self.m2, self.minimum, self.maximum, self.total)))


@dataclass
class Profile:
    """Everything the drift methods need about one dataset (or one window of traffic)."""

    features: list[Feature]
    sketch: KllSketch
    moments: Moments
    categories: dict[str, CategoryCounter]
    missing: dict[str, int] = field(default_factory=dict)
    rows: int = 0

    @classmethod
    def empty(cls, features: Sequence[Feature], k: int = DEFAULT_K, seed: int | None = None) -> Profile:
        numeric = [f for f in features if f.numeric]
        return cls(
            features=list(features),
            sketch=KllSketch(len(numeric), k=k, seed=seed),
            moments=Moments.empty(len(numeric)),
            categories={f.name: CategoryCounter() for f in features if not f.numeric},
            missing={f.name: 0 for f in features},
        )

    @property
    def numeric_features(self) -> list[Feature]:
        return [f for f in self.features if f.numeric]

    @property
    def categorical_features(self) -> list[Feature]:
        return [f for f in self.features if not f.numeric]

    # ------------------------------------------------------------------------------------------ update
    def add_rows(self, numeric: np.ndarray, categorical: Mapping[str, np.ndarray], rows: int) -> None:
        """numeric: (rows, numeric features) float array, NaN = missing; categorical: per feature, an
        object array of `rows` strings, None = missing (an absent feature is missing in every row)."""
        if rows <= 0:
            return
        if numeric.shape[1]:
            self.sketch.update(numeric)
            self.moments.merge(Moments.of(numeric))
            missing = np.isnan(numeric).sum(axis=0)
            for f, m in zip(self.numeric_features, missing, strict=True):
                self.missing[f.name] += int(m)
        self._add_categorical(categorical, rows)
        self.rows += rows

    def _add_categorical(self, categorical: Mapping[str, np.ndarray], rows: int) -> None:
        for f in self.categorical_features:
            values = categorical.get(f.name)
            if values is None:
                self.missing[f.name] += rows
                continue
            import pandas as pd

            present = values[~pd.isna(values)]
            self.categories[f.name].add_array(present)
            self.missing[f.name] += rows - len(present)

    def add_columns(self, numeric: np.ndarray, categorical: Mapping[str, np.ndarray], rows: int) -> None:
        """As add_rows, with the numeric features given column by column (shape (numeric features, rows)),
        as Arrow and Parquet hold them: the sketch sorts contiguous rows and nothing is transposed."""
        if rows <= 0:
            return
        if numeric.shape[0]:
            self.sketch.update_columns(numeric)
            chunk = Moments.of_columns(numeric)
            self.moments.merge(chunk)
            for f, present in zip(self.numeric_features, chunk.count, strict=True):
                self.missing[f.name] += rows - int(present)
        self._add_categorical(categorical, rows)
        self.rows += rows

    def add_frame(self, df: pd.DataFrame) -> None:
        """Add a DataFrame's rows in chunks; absent columns count as missing (see frame_arrays)."""
        step = chunk_rows(len(self.features))
        for start in range(0, len(df), step):
            chunk = df.iloc[start : start + step]
            numeric, categorical = frame_arrays(chunk, self.features)
            self.add_rows(numeric, categorical, len(chunk))

    def merge(self, other: Profile) -> Profile:
        if [f.name for f in other.features] != [f.name for f in self.features]:
            raise ValueError("cannot merge profiles of different features")
        self.sketch.merge(other.sketch)
        self.moments.merge(other.moments)
        for name, counter in other.categories.items():
            self.categories[name].merge(counter)
        for name, m in other.missing.items():
            self.missing[name] += m
        self.rows += other.rows
        return self

    def copy(self) -> Profile:
        return Profile(
            features=list(self.features),
            sketch=self.sketch.copy(),
            moments=self.moments.copy(),
            categories={k: v.copy() for k, v in self.categories.items()},
            missing=dict(self.missing),
            rows=self.rows,
        )

    def present(self, name: str) -> int:
        return self.rows - self.missing.get(name, 0)

    # --------------------------------------------------------------------------------- statistics.json
    def to_statistics(self) -> dict[str, Any]:
        std = self.moments.std()
        edges = _bucket_edges(self.moments.minimum, self.moments.maximum)
        counts = self._bucket_counts(edges)
        features: list[dict[str, Any]] = []
        j = 0
        for f in self.features:
            common = {"num_present": self.present(f.name), "num_missing": self.missing.get(f.name, 0)}
            if f.numeric:
                has = self.moments.count[j] > 0
                features.append(
                    {
                        "name": f.name,
                        "inferred_type": f.inferred_type,
                        "numerical_statistics": {
                            "common": common,
                            "mean": float(self.moments.mean[j]) if has else None,
                            "sum": float(self.moments.total[j]),
                            "std_dev": float(std[j]) if has else None,
                            "min": float(self.moments.minimum[j]) if has else None,
                            "max": float(self.moments.maximum[j]) if has else None,
                            "distribution": {
                                "kll": {
                                    "buckets": [
                                        {"lower_bound": float(lo), "upper_bound": float(hi), "count": float(n)}
                                        for lo, hi, n in zip(edges[:-1, j], edges[1:, j], counts[:, j], strict=True)
                                    ]
                                    if has
                                    else [],
                                    "sketch": {
                                        "parameters": {"c": self.sketch.c, "k": float(self.sketch.k)},
                                        "data": self.sketch.column_levels(j),
                                    },
                                }
                            },
                        },
                    }
                )
                j += 1
            else:
                counter = self.categories[f.name]
                buckets = sorted(counter.counts.items(), key=lambda kv: (-kv[1], kv[0]))
                features.append(
                    {
                        "name": f.name,
                        "inferred_type": f.inferred_type,
                        "string_statistics": {
                            "common": common,
                            "distinct_count": float(len([v for v in counter.counts if v != OTHER])),
                            "distribution": {
                                "categorical": {"buckets": [{"value": v, "count": float(n)} for v, n in buckets]}
                            },
                        },
                    }
                )
        return {"version": 0.0, "dataset": {"item_count": self.rows}, "features": features}

    def _bucket_counts(self, edges: np.ndarray) -> np.ndarray:
        if not edges.shape[1]:
            return np.zeros((HISTOGRAM_BUCKETS, 0))
        inner = self.sketch.cdf(edges[1:-1]) * self.moments.count[None, :]
        cum = np.vstack([np.zeros((1, edges.shape[1])), np.nan_to_num(inner), self.moments.count[None, :]])
        return np.round(np.diff(cum, axis=0))

    @classmethod
    def from_statistics(cls, doc: Mapping[str, Any]) -> Profile:
        """Read statistics.json (Kanari's or SageMaker's own); ValueError names what is wrong."""
        try:
            entries = list(doc["features"])
            rows = int(doc.get("dataset", {}).get("item_count", 0))
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"statistics.json: needs features[] and dataset.item_count ({exc})") from None
        features: list[Feature] = []
        sketches: list[Mapping[str, Any]] = []
        moments: list[tuple[float, ...]] = []
        categories: dict[str, CategoryCounter] = {}
        missing: dict[str, int] = {}
        for i, entry in enumerate(entries):
            where = f"statistics.json: features[{i}]"
            try:
                name = str(entry["name"])
                itype = entry["inferred_type"]
            except (KeyError, TypeError):
                raise ValueError(f"{where}: needs name and inferred_type") from None
            if itype in NUMERIC_TYPES:
                stats = entry.get("numerical_statistics")
                if not isinstance(stats, Mapping):
                    raise ValueError(f"{where} ({name}): numerical_statistics missing")
                try:
                    sketch = stats["distribution"]["kll"]["sketch"]
                    common = stats["common"]
                    present = float(common["num_present"])
                    missing[name] = int(common.get("num_missing", 0))
                    mean = float(stats.get("mean") or 0.0)
                    std = float(stats.get("std_dev") or 0.0)
                    moments.append(
                        (
                            present,
                            mean,
                            std * std * present,
                            float(stats["min"]) if stats.get("min") is not None else np.inf,
                            float(stats["max"]) if stats.get("max") is not None else -np.inf,
                            float(stats.get("sum") or mean * present),
                        )
                    )
                except (KeyError, TypeError, ValueError) as exc:
                    raise ValueError(f"{where} ({name}): numerical_statistics incomplete: {exc}") from None
                sketches.append(sketch)
            elif itype == "String":
                stats = entry.get("string_statistics")
                try:
                    buckets = stats["distribution"]["categorical"]["buckets"]
                    missing[name] = int(stats["common"].get("num_missing", 0))
                    counter = CategoryCounter(max_categories=max(1000, len(buckets)))
                    counter.add((str(b["value"]) for b in buckets), (int(b["count"]) for b in buckets))
                except (KeyError, TypeError, ValueError) as exc:
                    raise ValueError(f"{where} ({name}): string_statistics incomplete: {exc}") from None
                categories[name] = counter
            else:
                raise ValueError(f"{where} ({name}): inferred_type {itype!r} is not Integral, Fractional or String")
            features.append(Feature(name, itype))
        names = [f.name for f in features]
        if len(set(names)) != len(names):
            raise ValueError("statistics.json: feature names are not unique")
        sketch = KllSketch.from_columns(sketches) if sketches else KllSketch(0)
        arr = np.array(moments, dtype=np.float64).reshape(-1, 6)
        return cls(
            features=features,
            sketch=sketch,
            moments=Moments(arr[:, 0], arr[:, 1], arr[:, 2], arr[:, 3], arr[:, 4], arr[:, 5]),
            categories=categories,
            missing=missing,
            rows=rows,
        )


def _bucket_edges(minimum: np.ndarray, maximum: np.ndarray) -> np.ndarray:
    lo = np.where(np.isfinite(minimum), minimum, 0.0)
    hi = np.where(np.isfinite(maximum), maximum, 0.0)
    return np.linspace(lo, hi, HISTOGRAM_BUCKETS + 1)


def frame_arrays(df: pd.DataFrame, features: Sequence[Feature]) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """A DataFrame as the arrays a Profile takes; absent columns count as missing everywhere."""
    numeric = [f for f in features if f.numeric]
    import pandas as pd

    out = np.full((len(df), len(numeric)), np.nan)
    for j, f in enumerate(numeric):
        if f.name in df.columns:
            out[:, j] = pd.to_numeric(df[f.name], errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
    categorical = {
        f.name: categorical_strings(df[f.name]) for f in features if not f.numeric and f.name in df.columns
    }
    return out, categorical


def profile_frame(df: pd.DataFrame, features: Sequence[Feature] | None = None, seed: int | None = None) -> Profile:
    features = list(features) if features is not None else [Feature(str(c), infer_type(df[c])) for c in df.columns]
    profile = Profile.empty(features, seed=seed)
    profile.add_frame(df)
    return profile
