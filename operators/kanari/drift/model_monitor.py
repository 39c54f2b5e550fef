"""Baselines: statistics.json and constraints.json, as SageMaker Model Monitor writes them.

This is the contract with the training pipeline: `baseline_documents(df, target=...)` and
`write_baseline(df, out_dir)` keep their signatures. Kanari-specific fields live under a top-level
"kanari" key, which SageMaker's own tools ignore, so the files stay readable by both.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from kanari.drift.methods import CATEGORICAL_METHODS, DEFAULT_THRESHOLDS, NUMERIC_METHODS
from kanari.drift.profile import Feature, Profile, infer_type, profile_frame
from kanari.drift.sketch import OTHER

if TYPE_CHECKING:
    import pandas as pd

STATISTICS = "statistics.json"
CONSTRAINTS = "constraints.json"
# A few request bodies made of training rows, beside the baseline: inputs for the warm-up gate. Bounded: the
# controller reads at most 20, and a baseline must stay small next to the model.
SAMPLES = "samples.jsonl"
SAMPLE_LIMIT = 20
MAX_DOMAIN = 1000  # categories listed in string_constraints.domains; more makes "unseen" meaningless
DEFAULT_NUMERIC_METHOD = "linf"  # SageMaker's distance, threshold 0.1
DEFAULT_CATEGORICAL_METHOD = "linf"
DEFAULT_FALSE_ALARM_RATE = 0.01
# monitoring_config.distribution_constraints as SageMaker documents it (model-monitor-byoc-constraints):
# comparison_method Simple = linf_simple, Robust = linf_robust (Deequ's Distance.selectMetrics);
# categorical_drift_method LInfinity or ChiSquared (a p-value: drift below the threshold).
COMPARISON_METHODS = ("Simple", "Robust")
CATEGORICAL_DRIFT_METHODS = {"LInfinity": "linf", "ChiSquared": "chi2"}
SWITCH = ("Enabled", "Disabled")
# Kanari's own methods have no SageMaker field; their thresholds live under "kanari". L-infinity's come
# only from SageMaker's fields, so an edit there is never overridden.
KANARI_THRESHOLD_METHODS = ("psi", "js", "wasserstein", "chi2")


def baseline_documents(df: pd.DataFrame, *, target: str | None = None) -> tuple[dict, dict]:
    """(statistics, constraints) JSON documents for a training DataFrame.

    `target` names the label column: it is profiled like any feature (prediction drift compares the
    served predictions with it) but is not expected in inference requests.
    """
    import pandas as pd

    if not isinstance(df, pd.DataFrame):
        raise TypeError(f"df: expected a pandas DataFrame, got {type(df).__name__}")
    if df.empty or not len(df.columns):
        raise ValueError("df: the training data is empty; a baseline needs rows and columns")
    columns = [str(c) for c in df.columns]
    if len(set(columns)) != len(columns):
        raise ValueError("df: column names must be unique")
    if target is not None and target not in columns:
        raise ValueError(f"target: column {target!r} is not in the data (columns: {', '.join(columns)})")
    # Columns named by strings already (the usual case) need no copy of the whole frame.
    frame = df if list(df.columns) == columns else df.set_axis(columns, axis=1)
    _refuse_infinities(frame)
    profile = profile_frame(frame, [Feature(c, infer_type(frame[c])) for c in columns], seed=0)
    return profile_documents(profile, target=target)


def profile_documents(profile: Profile, *, target: str | None = None) -> tuple[dict, dict]:
    """(statistics, constraints) of a finished profile: the local engine's and the Spark engine's output."""
    statistics = profile.to_statistics()
    if target is not None:
        statistics["kanari"] = {"target": target}
    return statistics, constraints_for(profile)


def _refuse_infinities(df: pd.DataFrame) -> None:
    """±inf is no measurement a model can be trained on, and JSON cannot store it: name the columns."""
    import pandas as pd

    found = Infinities()
    for name in df.columns:
        col = df[name]
        if pd.api.types.is_numeric_dtype(col.dtype) and not pd.api.types.is_bool_dtype(col.dtype):
            found.check(str(name), col.to_numpy(dtype=np.float64, na_value=np.nan), 0)
    found.refuse("df")


INFINITE_ROWS_SHOWN = 3


@dataclass
class Infinities:
    """Infinite values per column, found chunk by chunk: their count and first rows, for the error."""

    count: dict[str, int] = field(default_factory=dict)
    rows: dict[str, list[int]] = field(default_factory=dict)

    def check(self, name: str, values: np.ndarray, offset: int) -> None:
        inf = np.isinf(values)
        if inf.any():
            self.count[name] = self.count.get(name, 0) + int(inf.sum())
            first = self.rows.setdefault(name, [])
            first.extend(int(r) + offset for r in np.flatnonzero(inf)[: INFINITE_ROWS_SHOWN - len(first)])

    def refuse(self, what: str) -> None:
        if self.count:
            raise ValueError(infinite_values_message(what, [(n, c, self.rows[n]) for n, c in self.count.items()]))


def infinite_values_message(what: str, found: list[tuple[str, int, list[int]]]) -> str:
    """The refusal of ±inf, the same from every engine: (column, count, first rows, 0-based) per column."""
    bad = [f"{name!r}: {count} infinite values (rows {', '.join(map(str, rows))}{', ...' if count > len(rows) else ''})"
           for name, count, rows in found]
    return f"{what}: infinite values cannot be profiled; replace or drop them: {'; '.join(bad)}"


def constraints_for(profile: Profile) -> dict[str, Any]:
    features: list[dict[str, Any]] = []
    numeric_index = {f.name: j for j, f in enumerate(profile.numeric_features)}
    for f in profile.features:
        entry: dict[str, Any] = {
            "name": f.name,
            "inferred_type": f.inferred_type,
            "completeness": round(profile.present(f.name) / profile.rows, 6) if profile.rows else 0.0,
        }
        if f.numeric:
            # From the profile's minimum (inf when no value is present: vacuously non-negative), so a profile
            # merged from partitions gives the same answer as the whole frame.
            non_negative = bool(profile.moments.minimum[numeric_index[f.name]] >= 0)
            entry["num_constraints"] = {"is_non_negative": non_negative}
        else:
            counts = profile.categories[f.name].counts
            if OTHER not in counts and len(counts) <= MAX_DOMAIN:
                entry["string_constraints"] = {"domains": sorted(counts)}
        features.append(entry)
    return {
        "version": 0.0,
        "features": features,
        "monitoring_config": {
            "evaluate_constraints": "Enabled",
            "emit_metrics": "Enabled",
            "datatype_check_threshold": 1.0,
            "domain_content_threshold": 1.0,
            "distribution_constraints": {
                "perform_comparison": "Enabled",
                "comparison_threshold": DEFAULT_THRESHOLDS["linf"],
                "comparison_method": "Robust",
                "categorical_comparison_threshold": DEFAULT_THRESHOLDS["linf"],
                "categorical_drift_method": "LInfinity",
            },
        },
        "kanari": {
            "numeric_method": DEFAULT_NUMERIC_METHOD,
            "thresholds": {m: DEFAULT_THRESHOLDS[m] for m in KANARI_THRESHOLD_METHODS},
            "false_alarm_rate": DEFAULT_FALSE_ALARM_RATE,
        },
    }


def write_baseline(df: pd.DataFrame, out_dir: str | os.PathLike[str], *, target: str | None = None) -> None:
    """Write statistics.json, constraints.json and samples.jsonl into out_dir (created if needed), each atomically."""
    write_documents(*baseline_documents(df, target=target), out_dir)
    write_samples(df, out_dir, target=target)


def write_samples(df: pd.DataFrame, out_dir: str | os.PathLike[str], *, target: str | None = None) -> None:
    """samples.jsonl (see sample_requests) into out_dir, atomically."""
    _atomic_write(Path(out_dir) / SAMPLES, samples_jsonl(df, target=target))


def sample_requests(df: pd.DataFrame, *, target: str | None = None, limit: int = SAMPLE_LIMIT) -> list[dict[str, Any]]:
    """Up to `limit` KServe v1 request bodies of one training row each (the label left out): the warm-up
    gate's inputs (kanari.controller.warmup). Rows without missing values, spread evenly over the data."""
    import pandas as pd

    features = [c for c in df.columns if str(c) != target]
    if not features or df.empty:
        return []
    frame = df[features]
    complete = frame.dropna()
    pool = complete if len(complete) else frame
    step = max(1, len(pool) // max(1, limit))
    out = []
    for _, row in pool.iloc[::step].head(limit).iterrows():
        instance = {str(k): (None if pd.isna(v) else v.item() if hasattr(v, "item") else v) for k, v in row.items()}
        out.append({"instances": [instance]})
    return out


def samples_jsonl(df: pd.DataFrame, *, target: str | None = None, limit: int = SAMPLE_LIMIT) -> str:
    return _jsonl(sample_requests(df, target=target, limit=limit))


def _jsonl(requests: list[dict[str, Any]]) -> str:
    return "".join(json.dumps(r, allow_nan=False, default=str) + "\n" for r in requests)


def write_sample_records(records: list[dict[str, Any]], out_dir: str | os.PathLike[str], *,
                         target: str | None = None, limit: int = SAMPLE_LIMIT) -> None:
    """samples.jsonl from rows already read as Python values (the streamed Parquet baseline), chosen as
    sample_requests chooses them: complete rows first, spread evenly."""
    rows = [{str(k): None if isinstance(v, float) and math.isnan(v) else v for k, v in r.items() if str(k) != target}
            for r in records]
    rows = [r for r in rows if r]
    complete = [r for r in rows if all(v is not None for v in r.values())]
    pool = complete or rows
    step = max(1, len(pool) // max(1, limit))
    _atomic_write(Path(out_dir) / SAMPLES, _jsonl([{"instances": [r]} for r in pool[::step][:limit]]))


def write_documents(statistics: dict, constraints: dict, out_dir: str | os.PathLike[str]) -> None:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    # statistics.json (sketches: ~1,000 numbers a feature) is written compact: indenting forces json's
    # pure-Python encoder, several times slower; constraints.json, which people edit, stays indented.
    _atomic_write(out / STATISTICS, json.dumps(statistics, separators=(",", ":"), allow_nan=False))
    _atomic_write(out / CONSTRAINTS, json.dumps(constraints, indent=1, allow_nan=False))


def _atomic_write(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@dataclass
class Baseline:
    """A parsed baseline: the profile, its constraints and the drift settings they carry."""

    profile: Profile
    constraints: dict[str, Any]
    target: str | None
    numeric_method: str
    categorical_method: str
    thresholds: dict[str, float]  # per method, numeric features (linf: comparison_threshold)
    categorical_thresholds: dict[str, float] = field(default_factory=dict)  # linf/chi2: categorical_comparison_threshold
    perform_comparison: bool = True
    robust: bool = False  # comparison_method Robust: L-infinity is SageMaker's linf_robust
    evaluate_constraints: bool = True
    false_alarm_rate: float | None = None  # set: a drift must also be significant at this dataset-level rate

    @property
    def input_features(self) -> list[Feature]:
        return [f for f in self.profile.features if f.name != self.target]

    @property
    def target_feature(self) -> Feature | None:
        return next((f for f in self.profile.features if f.name == self.target), None)

    def threshold(self, method: str, numeric: bool) -> float:
        table = self.thresholds if numeric else {**self.thresholds, **self.categorical_thresholds}
        return table[method]

    def constraint(self, name: str) -> dict[str, Any]:
        return next((c for c in self.constraints.get("features", []) if c.get("name") == name), {})

    def domain(self, name: str) -> set[str] | None:
        domains = self.constraint(name).get("string_constraints", {}).get("domains")
        return set(map(str, domains)) if isinstance(domains, list) else None


def _number(value: Any, where: str, *, low: float = 0.0, high: float = math.inf) -> float:
    try:
        out = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"constraints.json: {where} is not a number: {value!r}") from None
    if isinstance(value, bool) or not low <= out <= high:
        raise ValueError(f"constraints.json: {where} must be between {low:g} and {high:g}, got {value!r}")
    return out


def _choice(section: dict[str, Any], key: str, choices: Any, default: str, where: str) -> str:
    value = section.get(key, default)
    if value not in choices:
        raise ValueError(f"constraints.json: {where}.{key} {value!r} is not one of {', '.join(choices)}")
    return str(value)


def parse_baseline(statistics: Any, constraints: Any) -> Baseline:
    """Both documents, checked; ValueError names the file and field that is wrong.

    SageMaker's fields mean what SageMaker documents and are the only source of the L-infinity
    thresholds and the categorical method; Kanari's own block adds what SageMaker has no field for.
    """
    if not isinstance(statistics, dict):
        raise ValueError("statistics.json: expected a JSON object")
    if not isinstance(constraints, dict):
        raise ValueError("constraints.json: expected a JSON object")
    profile = Profile.from_statistics(statistics)
    target = statistics.get("kanari", {}).get("target")
    if target is not None and target not in {f.name for f in profile.features}:
        raise ValueError(f"statistics.json: kanari.target {target!r} is not one of the features")
    config = constraints.get("monitoring_config") or {}
    dist = config.get("distribution_constraints") or {}
    if not isinstance(config, dict) or not isinstance(dist, dict):
        raise ValueError("constraints.json: monitoring_config.distribution_constraints must be an object")
    where = "monitoring_config.distribution_constraints"
    kanari = constraints.get("kanari") or {}
    thresholds = dict(DEFAULT_THRESHOLDS)
    for method, value in (kanari.get("thresholds") or {}).items():
        if method not in thresholds:
            raise ValueError(f"constraints.json: kanari.thresholds.{method} is not a drift method")
        if method != "linf":  # older Kanari baselines wrote linf here; SageMaker's field wins
            thresholds[method] = _number(value, f"kanari.thresholds.{method}")
    thresholds["linf"] = _number(dist.get("comparison_threshold", DEFAULT_THRESHOLDS["linf"]), f"{where}.comparison_threshold")
    categorical_threshold = _number(
        dist.get("categorical_comparison_threshold", DEFAULT_THRESHOLDS["linf"]), f"{where}.categorical_comparison_threshold"
    )
    drift_method = _choice(dist, "categorical_drift_method", CATEGORICAL_DRIFT_METHODS, "LInfinity", where)
    categorical_method = CATEGORICAL_DRIFT_METHODS[drift_method]
    categorical_thresholds = {"linf": categorical_threshold, categorical_method: categorical_threshold}
    if "categorical_drift_method" not in dist and "categorical_method" in kanari:
        # A Kanari-only method (psi, js) chosen for categorical features keeps its kanari threshold.
        categorical_method = kanari["categorical_method"]
    numeric_method = kanari.get("numeric_method", DEFAULT_NUMERIC_METHOD)
    if numeric_method not in NUMERIC_METHODS:
        raise ValueError(f"constraints.json: kanari.numeric_method {numeric_method!r} not in {NUMERIC_METHODS}")
    if categorical_method not in CATEGORICAL_METHODS:
        raise ValueError(
            f"constraints.json: kanari.categorical_method {categorical_method!r} not in {CATEGORICAL_METHODS}"
        )
    perform = _choice(dist, "perform_comparison", SWITCH, "Enabled", where)
    comparison_method = _choice(dist, "comparison_method", COMPARISON_METHODS, "Simple", where)
    evaluate = _choice(config, "evaluate_constraints", SWITCH, "Enabled", "monitoring_config")
    rate = kanari.get("false_alarm_rate")
    false_alarm_rate = None if rate is None else _number(rate, "kanari.false_alarm_rate", low=1e-9, high=0.5)
    return Baseline(
        profile,
        constraints,
        target,
        numeric_method,
        categorical_method,
        thresholds,
        categorical_thresholds=categorical_thresholds,
        perform_comparison=perform == "Enabled",
        robust=comparison_method == "Robust",
        evaluate_constraints=evaluate == "Enabled",
        false_alarm_rate=false_alarm_rate,
    )


def read_baseline(directory: str | os.PathLike[str]) -> Baseline:
    """Read a baseline directory; ValueError (not a traceback) on a missing or broken file."""
    base = Path(directory)
    docs = []
    for name in (STATISTICS, CONSTRAINTS):
        path = base / name
        try:
            docs.append(json.loads(path.read_text()))
        except FileNotFoundError:
            raise ValueError(f"{path}: not found (a baseline directory holds {STATISTICS} and {CONSTRAINTS})") from None
        except (OSError, json.JSONDecodeError) as exc:
            raise ValueError(f"{path}: unreadable: {exc}") from None
    return parse_baseline(*docs)
