"""Compare current data with a stored baseline in one pass over the data, without sketching it.

The baseline's KLL sketch is a step CDF over its retained items. Every distance Kanari reports changes
only at those items, so the current data need not be sorted or sketched: each value is binned once
against the baseline's item values (`np.searchsorted` into an interleaved grid [e0, e0+, e1, e1+, ...],
so one lookup tells "below e_i", "equal to e_i" and "strictly between" apart), and the bin counts give the
current CDF exactly at every point where the baseline's CDF can change. The KS statistic of the baseline
sketch against the exact current data is then exact; its distance from the exact two-sample KS is bounded
by the baseline sketch's rank error alone (see sketch.RANK_ERROR_C), half the bound of sketch vs sketch.

The binning is a small numba kernel (numpy's searchsorted costs ~80 ns a value on unsorted input, the
kernel a few): a uniform lookup table over each feature's edges puts a value within a step or two of its
cell, the remaining steps are branch-free, and features are spread over both cores. Input is accumulated
chunk by chunk (`CurrentBins.add_frame`), so memory is bounded by the chunk, not the file.
Categorical values are counted by integer codes (pandas.factorize) and only the distinct values are
turned into strings.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd

from kanari.drift.compare import (
    DEFAULT_MIN_SAMPLES,
    MAX_EXAMPLES,
    DriftReport,
    SchemaViolation,
    finish_report,
    method_for,
)
from kanari.drift.methods import DECILES, categorical_drift, js_of, psi_of
from kanari.drift.model_monitor import Baseline
from kanari.drift.profile import Feature, Profile, categorical_strings
from kanari.drift.sketch import CategoryCounter, KllSketch

CHUNK_VALUES = 8_000_000  # values per chunk read from a file: 64 MB of float64, whatever the width
WORKERS = max(1, min(2, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1))


GRID_PER_EDGE = 16  # uniform lookup cells per edge: most cells hold at most one edge
MAX_SCAN = 12  # a column whose densest lookup cell holds more edges than this is binned by binary search


@dataclass(frozen=True)
class NumericEdges:
    """The compared numeric features of a baseline, packed for the binning kernel.

    Per feature j: its edges (the baseline sketch's distinct item values, sorted) at edges[e_off[j]:],
    padded with NaN so a scan stops there; the baseline's CDF at each edge; a uniform lookup table over
    [lo, hi] giving, for each cell, how many edges lie below it (so a value starts its scan there and
    moves up a step or two instead of binary-searching); cell counts go to counts[c_off[j]:] in
    2*m_j + 1 cells (below e0, equal to e0, between e0 and e1, ..., above the last edge).
    """

    names: list[str]
    edges: list[np.ndarray]
    base_cdf: list[np.ndarray]
    deciles: list[np.ndarray]  # indices into edges of the baseline's deciles (for PSI and JS)
    std: np.ndarray
    packed: np.ndarray
    e_off: np.ndarray
    m: np.ndarray
    lo: np.ndarray
    inv: np.ndarray
    table: np.ndarray
    t_off: np.ndarray
    size: np.ndarray  # lookup cells per feature
    cells: np.ndarray
    c_off: np.ndarray
    steps: np.ndarray  # most edges a value can be above past its lookup cell: the scan's fixed length

    @classmethod
    def of(cls, baseline: Baseline, names: Sequence[str]) -> NumericEdges:
        profile = baseline.profile
        index = {f.name: j for j, f in enumerate(profile.numeric_features)}
        idx = [index[n] for n in names]
        sketch = profile.sketch.select(idx)
        sv, cw, total = sketch.sorted_cdf()
        quantiles = sketch.quantiles(DECILES)
        edges, cdfs, deciles, tables = [], [], [], []
        lo, inv, steps = np.zeros(len(idx)), np.zeros(len(idx)), np.zeros(len(idx), dtype=np.int64)
        for j in range(len(idx)):
            values, cum = sv[j], cw[j]
            present = ~np.isnan(values)
            values, cum = values[present], cum[present]
            if len(values) and total[j] > 0:
                last_of_run = np.append(values[1:] != values[:-1], True)  # among ties only the last is a CDF value
                e, b = values[last_of_run], cum[last_of_run] / total[j]
            else:
                e, b = np.empty(0), np.empty(0)
            edges.append(e)
            cdfs.append(b)
            deciles.append(np.searchsorted(e, quantiles[:, j]))
            finite = e[np.isfinite(e)]
            size = GRID_PER_EDGE * max(1, len(e))
            if len(finite) > 1 and finite[-1] > finite[0]:
                lo[j], inv[j] = finite[0], size / (finite[-1] - finite[0])
                # Cell u starts at lo + u/inv; counting edges below half a cell earlier keeps the start at or
                # below the true position whatever the rounding of (x - lo) * inv.
                starts = lo[j] + (np.arange(size) - 0.5) / inv[j]
                table = np.searchsorted(e, starts, side="left")
                ends = np.append(lo[j] + (np.arange(1, size) + 0.5) / inv[j], np.inf)
                steps[j] = int(np.max(np.searchsorted(e, ends, side="right") - table))
            else:
                table = np.zeros(size, dtype=np.int64)
                steps[j] = len(e) + 1
            tables.append(table.astype(np.int32))
        m = np.array([len(e) for e in edges], dtype=np.int64)
        e_off = np.concatenate([[0], np.cumsum(m + 1)[:-1]]).astype(np.int64)
        packed = np.full(int((m + 1).sum()), np.nan)
        for j, e in enumerate(edges):
            packed[e_off[j] : e_off[j] + len(e)] = e
        t_len = np.array([len(t) for t in tables], dtype=np.int64)
        cells = 2 * m + 1
        return cls(
            names=list(names),
            edges=edges,
            base_cdf=cdfs,
            deciles=deciles,
            std=profile.moments.std()[idx],
            packed=packed,
            e_off=e_off,
            m=m,
            lo=lo,
            inv=inv,
            table=np.concatenate(tables) if tables else np.zeros(0, dtype=np.int32),
            t_off=np.concatenate([[0], np.cumsum(t_len)[:-1]]).astype(np.int64),
            size=t_len,
            cells=cells,
            c_off=np.concatenate([[0], np.cumsum(cells)[:-1]]).astype(np.int64),
            steps=steps,
        )


def _bin_kernel(data, packed, e_off, m, lo, inv, table, t_off, size, steps, c_off, counts, sums, want_sums, nans):  # type: ignore[no-untyped-def]
    """numba kernel (compiled on first use): one pass over each column, columns spread over the cores.

    The scan has a fixed length per column and compares without branching (a mispredicted branch per value
    would cost more than the whole lookup); NaN padding after each column's edges stops it, and the
    NaN before column 0's edges (packed[-1]) makes the "equal to the edge below" test false at c = 0.
    """
    for j in prange(data.shape[0]):
        eo, co, to, top = e_off[j], c_off[j], t_off[j], size[j] - 1
        lo_j, inv_j, k, mj = lo[j], inv[j], steps[j], m[j]
        binary = k > MAX_SCAN
        nan = 0
        for i in range(data.shape[1]):
            x = data[j, i]
            if x != x:
                nan += 1
                continue
            if binary:
                a, b = 0, mj
                while a < b:
                    mid = (a + b) >> 1
                    if x >= packed[eo + mid]:
                        a = mid + 1
                    else:
                        b = mid
                c = a
            else:
                u = (x - lo_j) * inv_j
                if not u >= 0.0:  # also NaN from inf * 0
                    u = 0.0
                elif u > top:
                    u = top
                c = table[to + int(u)]
                for _ in range(k):
                    c += x >= packed[eo + c]
            cell = 2 * c - (packed[eo + c - 1] == x)
            counts[co + cell] += 1
            if want_sums[j] and x - x == 0.0:  # finite values only
                sums[co + cell] += x
        nans[j] += nan


_KERNEL = None
# numba (and its ~0.3 s import) is loaded on first use, so `kanari` commands that never compare do not pay for
# it; the kernel reads `prange` as a global at compile time, numba's parallel range once numba is loaded.
prange = range


def _kernel():  # type: ignore[no-untyped-def]
    global _KERNEL, prange
    if _KERNEL is None:
        import numba

        prange = numba.prange
        numba.set_num_threads(WORKERS)
        _KERNEL = numba.njit(parallel=True, cache=True, nogil=True)(_bin_kernel)
    return _KERNEL


@dataclass
class _Schema:
    """Schema checks accumulated over chunks (the same violations compare.schema_violations reports)."""

    non_numeric: dict[str, int] = field(default_factory=dict)
    non_numeric_examples: dict[str, list[str]] = field(default_factory=dict)
    fractional: set[str] = field(default_factory=set)
    unseen: dict[str, int] = field(default_factory=dict)
    unseen_examples: dict[str, list[str]] = field(default_factory=dict)
    present: dict[str, int] = field(default_factory=dict)


class CurrentBins:
    """Current data binned against a baseline, chunk by chunk; `report` gives the DriftReport."""

    def __init__(self, baseline: Baseline, columns: Sequence[str], method: str | None = None):
        self.baseline = baseline
        self.method = method
        self.columns = [str(c) for c in columns]
        present = set(self.columns)
        self.compared = [f for f in baseline.profile.features if f.name in present]
        self.methods = {f.name: method_for(baseline, f, method) for f in self.compared}
        numeric = [f.name for f in self.compared if f.numeric]
        self.edges = NumericEdges.of(baseline, numeric)
        self.numeric = {name: j for j, name in enumerate(numeric)}
        self.counts = np.zeros(int(self.edges.cells.sum()), dtype=np.int64)
        self.want_sums = np.array([self.methods[n] == "wasserstein" for n in numeric], dtype=np.bool_)
        self.sums = np.zeros(len(self.counts) if self.want_sums.any() else 0)
        self.nans = np.zeros(len(numeric), dtype=np.int64)
        # Bounded as a profile's are (past 1000 distinct values the rest pool under OTHER): the same values, bounded memory.
        self.categories = {f.name: CategoryCounter() for f in self.compared if not f.numeric}
        self.schema = _Schema(present={f.name: 0 for f in self.compared})
        self._kind = {f.name: f.inferred_type for f in self.compared}
        self.rows = 0

    @property
    def needed(self) -> list[str]:
        return [f.name for f in self.compared]

    # ------------------------------------------------------------------------------------------ intake
    def add_frame(self, df: pd.DataFrame) -> None:
        """Add a chunk (a DataFrame with some or all of the columns given at construction)."""
        names = self.edges.names
        if names:
            self._bin(self._matrix(df, names))
        for f in self.compared:
            if not f.numeric:
                self._categorical(f, df[f.name])
        self.rows += len(df)

    def add_batch(self, batch: Any) -> None:
        """Add an Arrow RecordBatch: numeric columns go to the kernel straight from Arrow's buffers (one copy
        into the kernel's matrix, no DataFrame); a batch whose numeric features Arrow did not type as numbers
        goes through pandas (and the schema checks) instead."""
        import pyarrow as pa

        names = self.edges.names
        types = {n: batch.schema.field(n).type for n in names}
        if not all(pa.types.is_floating(t) or pa.types.is_integer(t) for t in types.values()):
            self.add_frame(batch.to_pandas())
            return
        if names:
            data = np.empty((len(names), batch.num_rows))
            for j, n in enumerate(names):
                data[j] = batch.column(n).to_numpy(zero_copy_only=False)  # nulls become NaN
                if pa.types.is_floating(types[n]) and self._kind[n] == "Integral":
                    self._check_whole(n, data[j])
            self._bin(data)
        categorical = [f for f in self.compared if not f.numeric]
        if categorical:
            frame = batch.select([f.name for f in categorical]).to_pandas()
            for f in categorical:
                self._categorical(f, frame[f.name])
        self.rows += batch.num_rows

    def _matrix(self, df: pd.DataFrame, names: list[str]) -> np.ndarray:
        """The numeric columns as one (features, rows) C-ordered float64 array: pandas' own block, uncopied,
        when the columns are float64 and stored column by column (as Arrow and Parquet give them)."""
        if all(df[n].dtype == np.float64 for n in names):
            frame = df if list(df.columns) == names else df[names]
            self._integral_checks(frame, names)
            return np.ascontiguousarray(frame.to_numpy(dtype=np.float64).T)
        out = np.empty((len(names), len(df)))
        for j, name in enumerate(names):
            out[j] = self._numeric(df[name])
        return out

    def _integral_checks(self, df: pd.DataFrame, names: list[str]) -> None:
        for name in names:
            if self._kind[name] == "Integral":
                self._check_whole(name, df[name].to_numpy(dtype=np.float64, na_value=np.nan))

    def _bin(self, data: np.ndarray) -> None:
        e = self.edges
        before = self.nans.copy()
        _kernel()(
            data, e.packed, e.e_off, e.m, e.lo, e.inv, e.table, e.t_off, e.size, e.steps, e.c_off,
            self.counts, self.sums if len(self.sums) else np.zeros(1), self.want_sums, self.nans,
        )
        for j, name in enumerate(e.names):
            self.schema.present[name] += data.shape[1] - int(self.nans[j] - before[j])

    def _numeric(self, series: pd.Series) -> np.ndarray:
        name = str(series.name)
        feature = next(f for f in self.compared if f.name == name)
        if pd.api.types.is_float_dtype(series.dtype):
            values = series.to_numpy(dtype=np.float64, na_value=np.nan)
            if feature.inferred_type == "Integral":
                self._check_whole(name, values)
            return values
        if pd.api.types.is_bool_dtype(series.dtype) or pd.api.types.is_integer_dtype(series.dtype):
            return series.to_numpy(dtype=np.float64, na_value=np.nan)
        coerced = pd.to_numeric(series, errors="coerce")
        bad = series.notna() & coerced.isna()
        if bad.any():
            self.schema.non_numeric[name] = self.schema.non_numeric.get(name, 0) + int(bad.sum())
            seen = self.schema.non_numeric_examples.setdefault(name, [])
            for v in series[bad].astype(str).unique():
                if len(seen) >= MAX_EXAMPLES:
                    break
                if v not in seen:
                    seen.append(v)
        elif feature.inferred_type == "Integral" and pd.api.types.is_float_dtype(coerced.dtype):
            self._check_whole(name, coerced.to_numpy(dtype=np.float64, na_value=np.nan))
        return coerced.to_numpy(dtype=np.float64, na_value=np.nan)

    def _check_whole(self, name: str, values: np.ndarray) -> None:
        """An Integral feature with fractional values is a type mismatch."""
        if name not in self.schema.fractional:
            finite = values[np.isfinite(values)]
            if len(finite) and not np.array_equal(finite, np.round(finite)):
                self.schema.fractional.add(name)

    def _categorical(self, feature: Feature, series: pd.Series) -> None:
        codes, uniques = pd.factorize(series, use_na_sentinel=True)
        if not len(uniques):
            return
        counts = np.bincount(codes[codes >= 0], minlength=len(uniques))
        names = categorical_strings(pd.Series(uniques))
        self.categories[feature.name].add((str(n) for n in names), (int(c) for c in counts))
        self.schema.present[feature.name] += int(counts.sum())
        domain = self.baseline.domain(feature.name)
        if domain is not None:
            for n, c in zip(names, counts, strict=True):
                if str(n) not in domain:
                    self.schema.unseen[feature.name] = self.schema.unseen.get(feature.name, 0) + int(c)
                    seen = self.schema.unseen_examples.setdefault(feature.name, [])
                    if len(seen) < MAX_EXAMPLES and str(n) not in seen:
                        seen.append(str(n))

    # ------------------------------------------------------------------------------------------ output
    def numeric_value(self, j: int) -> float:
        """The chosen method's value for numeric feature j (NaN when either side has no values)."""
        e = self.edges
        lo, hi = e.c_off[j], e.c_off[j] + e.cells[j]
        counts = self.counts[lo:hi]
        n = counts.sum()
        if not e.m[j] or n == 0:
            return float("nan")
        cum = np.cumsum(counts) / n
        at = cum[1::2]  # current CDF at e_i (<=)
        before = cum[0::2][:-1]  # current CDF just below e_i (<)
        b = e.base_cdf[j]
        method = self.methods[e.names[j]]
        if method == "linf":
            prev = np.concatenate([[0.0], b[:-1]])  # the baseline CDF just below e_i
            return float(max(np.max(np.abs(b - at)), np.max(np.abs(prev - before))))
        if method in ("psi", "js"):
            d = e.deciles[j]
            pc = np.clip(np.diff(np.concatenate([[0.0], at[d], [1.0]])), 0.0, 1.0)[:, None]
            pb = np.clip(np.diff(np.concatenate([[0.0], b[d], [1.0]])), 0.0, 1.0)[:, None]
            return float((psi_of(pb, pc) if method == "psi" else js_of(pb, pc))[0])
        if method == "wasserstein":
            return self._wasserstein(j, counts, self.sums[lo:hi], n, at)
        raise ValueError(f"method: {method!r} does not apply to numeric features")

    def _wasserstein(self, j: int, counts: np.ndarray, sums: np.ndarray, n: int, at: np.ndarray) -> float:
        """Integral of |baseline step CDF - current CDF|, per interval between edges; exact except in an
        interval where the two cross, where it is the (smaller) absolute value of the signed integral."""
        x, b = self.edges.edges[j], self.edges.base_cdf[j]
        w1 = (counts[0] * x[0] - sums[0]) / n  # below the first edge the baseline CDF is 0
        w1 += (sums[-1] - counts[-1] * x[-1]) / n  # above the last it is 1
        if len(x) > 1:
            width = np.diff(x)
            inner_c, inner_s = counts[2:-1:2], sums[2:-1:2]  # values strictly between e_i and e_i+1
            integral_c = at[:-1] * width + (inner_c * x[1:] - inner_s) / n
            w1 += float(np.sum(np.abs(b[:-1] * width - integral_c)))
        std = float(self.edges.std[j])
        return float(w1 / (std if std > 0 else 1.0))

    def violations(self) -> list[SchemaViolation]:
        out: list[SchemaViolation] = []
        known = {f.name for f in self.baseline.profile.features}
        present = set(self.columns)
        for f in self.baseline.input_features:
            if f.name not in present:
                out.append(SchemaViolation("missing_column", f.name, "in the baseline, not in the data"))
        for col in self.columns:
            if col not in known:
                out.append(SchemaViolation("extra_column", col, "in the data, not in the baseline"))
        s = self.schema
        for f in self.compared:
            if f.name in s.non_numeric:
                examples = ", ".join(repr(v) for v in s.non_numeric_examples[f.name])
                out.append(
                    SchemaViolation(
                        "type_mismatch",
                        f.name,
                        f"{s.non_numeric[f.name]} non-numeric values in a {f.inferred_type} feature: {examples}",
                    )
                )
            elif f.name in s.fractional:
                out.append(SchemaViolation("type_mismatch", f.name, "fractional values in an Integral feature"))
            if f.name in s.unseen:
                examples = ", ".join(repr(v) for v in s.unseen_examples[f.name])
                out.append(
                    SchemaViolation(
                        "unseen_category", f.name, f"{s.unseen[f.name]} values outside the baseline's domain: {examples}"
                    )
                )
            if self.baseline.profile.present(f.name) == 0 and s.present[f.name]:
                out.append(SchemaViolation("baseline_empty", f.name,
                                           f"the baseline has no values for this feature, the data has {s.present[f.name]}"))
            required = float(self.baseline.constraint(f.name).get("completeness", 0.0))
            # A non-numeric value in a numeric feature is present (and a type mismatch), as the frame check counts it.
            filled = s.present[f.name] + s.non_numeric.get(f.name, 0)
            completeness = filled / self.rows if self.rows else 1.0
            if completeness < required:
                out.append(
                    SchemaViolation(
                        "completeness",
                        f.name,
                        f"{completeness:.4f} of values present, the baseline requires {required:.4f}",
                    )
                )
        return out

    def current_profile(self) -> Profile:
        """The current data as a Profile, exactly: each cell's count is written in binary across the
        sketch's levels (an item on level h weighs 2**h), at the cell's value (an edge, or the mean of the
        values between two edges when tracked, else the midpoint). What the false-alarm p-values read."""
        e = self.edges
        numeric = [f for f in self.compared if f.numeric]
        levels: list[list[list[float]]] = []
        for j in range(len(numeric)):
            lo, hi = e.c_off[j], e.c_off[j] + e.cells[j]
            counts = self.counts[lo:hi]
            x = e.edges[j]
            if not len(x):
                values = np.zeros(len(counts))
            else:
                between = (x[:-1] + x[1:]) / 2 if len(x) > 1 else np.empty(0)
                spread = float(x[-1] - x[0]) if len(x) > 1 else 1.0
                values = np.empty(len(counts))
                values[1::2] = x
                values[2:-1:2] = between
                values[0], values[-1] = x[0] - spread / len(x), x[-1] + spread / len(x)
                if len(self.sums) and self.want_sums[j]:
                    sums = self.sums[lo:hi]
                    with np.errstate(invalid="ignore", divide="ignore"):
                        means = np.where(counts > 0, sums / np.maximum(counts, 1), values)
                    values[0::2] = means[0::2]
            for h in range(int(counts.max()).bit_length() if len(counts) and counts.max() > 0 else 0):
                while len(levels) <= h:
                    levels.append([[] for _ in numeric])
                levels[h][j] = values[(counts >> h) & 1 == 1].tolist()
        sketch = KllSketch(len(numeric))
        if levels:
            sketch.levels = []
            for per_feature in levels:
                width = max(len(v) for v in per_feature)
                arr = np.full((len(numeric), width), np.nan)
                for j, v in enumerate(per_feature):
                    arr[j, : len(v)] = v
                sketch.levels.append(arr)
        profile = Profile.empty(self.compared)
        profile.sketch = sketch
        profile.categories = {name: counter for name, counter in self.categories.items()}
        profile.rows = self.rows
        present = {f.name: self.schema.present[f.name] for f in self.compared}
        profile.missing = {name: self.rows - n for name, n in present.items()}
        return profile

    def report(
        self, *, min_samples: int = DEFAULT_MIN_SAMPLES, false_alarm_rate: float | None | Literal["baseline"] = "baseline"
    ) -> DriftReport:
        base = self.baseline.profile
        raw: dict[str, float] = {}
        for f in self.compared:
            m = self.methods[f.name]
            if f.numeric:
                raw[f.name] = self.numeric_value(self.numeric[f.name])
            else:
                raw[f.name] = categorical_drift(base.categories[f.name], self.categories[f.name], (m,))[m]
        violations = self.violations() if self.baseline.evaluate_constraints else []
        return finish_report(
            self.baseline, self.current_profile(), self.compared, self.methods, raw, violations, self.rows,
            min_samples=min_samples, false_alarm_rate=false_alarm_rate, current_exact=True,
        )


def compare_chunks(
    baseline: Baseline, columns: Sequence[str], chunks: Iterable[pd.DataFrame], method: str | None = None,
    **judging: Any,
) -> DriftReport:
    """Compare a stream of DataFrame chunks (all with `columns`, or only the ones the baseline has).
    `judging`: min_samples and false_alarm_rate, as compare.finish_report takes them."""
    bins = CurrentBins(baseline, columns, method)
    for chunk in chunks:
        bins.add_frame(chunk)
    return bins.report(**judging)


def compare_frame_fast(baseline: Baseline, df: pd.DataFrame, method: str | None = None, **judging: Any) -> DriftReport:
    if not all(isinstance(c, str) for c in df.columns):
        df = df.rename(columns=str)
    return compare_chunks(baseline, list(df.columns), [df], method, **judging)


# -------------------------------------------------------------------------------------------- files
def compare_file(
    baseline: Baseline, path: str | os.PathLike[str], method: str | None = None, chunk_values: int = CHUNK_VALUES,
    **judging: Any,
) -> DriftReport:
    """Compare a CSV/TSV/Parquet file, reading only the columns the baseline has, in chunks of about
    `chunk_values` values: memory is bounded by the chunk (and a Parquet file's row group), not the file."""
    from kanari.cli.tables import DataError, table_columns

    columns = table_columns(path)
    wanted = [f.name for f in baseline.profile.features if f.name in set(columns)]
    bins = CurrentBins(baseline, columns, method)
    try:
        for chunk in iter_table(path, wanted, baseline, chunk_values):
            if isinstance(chunk, pd.DataFrame):
                bins.add_frame(chunk)
            else:
                bins.add_batch(chunk)
    except DataError:
        raise
    except (OSError, ValueError) as exc:
        raise DataError(f"{Path(path)}: cannot read: {exc}") from None
    if bins.rows == 0:
        raise DataError(f"{Path(path)}: no rows")
    return bins.report(**judging)


def iter_table(
    path: str | os.PathLike[str], columns: Sequence[str], baseline: Baseline, chunk_values: int = CHUNK_VALUES
) -> Iterator[Any]:
    """The file's `columns` in chunks of about `chunk_values` values: Arrow RecordBatches, or DataFrames where
    pandas reads on after Arrow gave up on a CSV."""
    import pyarrow

    p = Path(path)
    name = p.name.lower()
    rows = max(1000, chunk_values // max(1, len(columns)))
    if name.endswith((".parquet", ".pq")):
        import pyarrow.parquet as pq

        # pre_buffer off: with it Arrow keeps every column chunk it read ahead (the whole file, in effect).
        yield from pq.ParquetFile(p, pre_buffer=False).iter_batches(batch_size=rows, columns=list(columns))
        return
    import pyarrow.csv as pacsv

    # String features stay text as pandas would keep them (Arrow would otherwise parse dates and numbers);
    # a feature whose baseline values are true/false was a bool column, which Arrow reads as pandas does.
    strings = {
        f.name: pyarrow.string()
        for f in baseline.profile.features
        if not f.numeric and f.name in set(columns) and not set(baseline.profile.categories[f.name].counts) <= {"true", "false"}
    }
    try:
        reader = pacsv.open_csv(
            p,
            read_options=pacsv.ReadOptions(block_size=max(1 << 20, rows * len(columns) * 12)),
            parse_options=pacsv.ParseOptions(delimiter="\t" if name.endswith(".tsv") else ","),
            convert_options=pacsv.ConvertOptions(include_columns=list(columns), column_types=strings),
        )
        batches = iter(reader)
        first = next(batches, None)
    except pyarrow.ArrowInvalid:
        first, batches = None, None
    if batches is None:
        yield from _pandas_chunks(p, columns, rows)
        return
    done = 0
    try:
        if first is not None:
            yield first
            done += first.num_rows
        for batch in batches:
            yield batch
            done += batch.num_rows
    except pyarrow.ArrowInvalid:
        # Arrow fixes column types from the first block; a later block that breaks them (a stray string
        # in a numeric column) is read on by pandas, which keeps it as text for the schema check.
        yield from _pandas_chunks(p, columns, rows, skip=done)


def _pandas_chunks(p: Path, columns: Sequence[str], rows: int, skip: int = 0) -> Iterator[pd.DataFrame]:
    sep = "\t" if p.name.lower().endswith(".tsv") else ","
    skiprows = range(1, skip + 1) if skip else None
    yield from pd.read_csv(p, sep=sep, usecols=list(columns), chunksize=rows, skiprows=skiprows)
