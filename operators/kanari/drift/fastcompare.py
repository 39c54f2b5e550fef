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
cell, the remaining steps are branch-free, and features are spread over both cores (a small file is binned by
sorting instead, which needs no numba: see SORT_BELOW_VALUES). Input is accumulated
chunk by chunk (`CurrentBins.add_frame`), so memory is bounded by the chunk, not the file.
Categorical values are counted by integer codes (pandas.factorize) and only the distinct values are
turned into strings.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from kanari.drift.compare import (
    DEFAULT_MIN_SAMPLES,
    DriftReport,
    SchemaCheck,
    SchemaViolation,
    finish_report,
    method_for,
)
from kanari.drift.methods import DECILES, categorical_drift, js_of, psi_of
from kanari.drift.model_monitor import Baseline
from kanari.drift.profile import Feature, Profile
from kanari.drift.sketch import CategoryCounter, KllSketch

if TYPE_CHECKING:
    import pandas as pd

CHUNK_VALUES = 1_000_000  # values per chunk read from a file: 8 MB of float64, whatever the width (bigger chunks cost
# more in fresh pages than they save in calls: a one-shot process pays a page fault for every new page)
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


# A file with fewer numeric values than this is binned by sorting each column (numpy's sort, both cores) instead of
# the kernel: loading numba and the cached kernel costs ~0.4 s of CPU, sorting 10M values ~0.15 s. Past it the
# kernel's one pass wins (sorting costs ~13 ns a value, the kernel a few). Same counts either way (tested).
SORT_BELOW_VALUES = 30_000_000


def sorted_bins(
    data: np.ndarray, edges: NumericEdges, counts: np.ndarray, sums: np.ndarray, want_sums: np.ndarray, nans: np.ndarray
) -> None:
    """The kernel's cell counts (and per-cell sums of finite values), from a sorted copy of each column: the cells
    "below e0, equal to e0, between e0 and e1, ..., above the last edge" are the gaps between the positions where
    the edges fall (searchsorted left and right), so a value lands where the kernel puts it, ±inf and ties included."""
    from kanari.drift.sketch import sort_rows

    ordered = np.array(data, dtype=np.float64, order="C", copy=True)
    sort_rows(ordered)  # NaNs last
    missing = np.isnan(ordered).sum(axis=1)
    for j in range(ordered.shape[0]):
        values = ordered[j, : ordered.shape[1] - int(missing[j])]
        m, lo = int(edges.m[j]), int(edges.c_off[j])
        e = edges.packed[edges.e_off[j] : edges.e_off[j] + m]
        bounds = np.empty(2 * m + 2, dtype=np.int64)
        bounds[0], bounds[-1] = 0, len(values)
        bounds[1:-1:2] = np.searchsorted(values, e, side="left")
        bounds[2:-1:2] = np.searchsorted(values, e, side="right")
        counts[lo : lo + 2 * m + 1] += np.diff(bounds)
        if len(sums) and want_sums[j]:
            running = np.concatenate([[0.0], np.cumsum(np.where(np.isfinite(values), values, 0.0))])
            sums[lo : lo + 2 * m + 1] += running[bounds[1:]] - running[bounds[:-1]]
        nans[j] += int(missing[j])


_KERNEL = None
_KERNEL_LOCK = threading.Lock()
# numba (and its ~0.3 s import) is loaded on first use, so `kanari` commands that never compare do not pay for
# it; the kernel reads `prange` as a global at compile time, numba's parallel range once numba is loaded.
prange = range


def _kernel():  # type: ignore[no-untyped-def]
    global _KERNEL, prange
    with _KERNEL_LOCK:
        if _KERNEL is None:
            import numba

            prange = numba.prange
            numba.set_num_threads(WORKERS)
            _KERNEL = _compile(numba)
    return _KERNEL


def _compile(numba: Any) -> Any:
    """The kernel, cached on disk so that a process loads it instead of compiling it (~3 s of CPU).

    numba keeps the cache in the first writable place of: NUMBA_CACHE_DIR (the images set it to /tmp, an
    emptyDir in the cluster), the __pycache__ beside this file, the user's cache directory. Where none is
    writable (a read-only root filesystem, HOME unwritable) numba refuses to decorate at all; then a private
    directory in the temp dir is used, and failing that the kernel is compiled per process: slower, never broken.
    """
    options = {"parallel": True, "nogil": True}
    try:
        return numba.njit(cache=True, **options)(_bin_kernel)
    except RuntimeError:  # "cannot cache function ...: no locator available"
        pass
    private = private_cache_dir()
    if private is not None:
        numba.config.CACHE_DIR = private
        try:
            return numba.njit(cache=True, **options)(_bin_kernel)
        except RuntimeError:
            pass
    return numba.njit(**options)(_bin_kernel)


def private_cache_dir() -> str | None:
    """<temp dir>/kanari-numba-<uid>, used only if it is a real directory this user owns and nobody else can
    write to: a cache is machine code that gets loaded, so a directory someone else prepared is refused."""
    import stat
    import tempfile

    try:
        path = os.path.join(tempfile.gettempdir(), f"kanari-numba-{os.getuid()}")
        os.makedirs(path, mode=0o700, exist_ok=True)
        info = os.lstat(path)
    except OSError:
        return None
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid() or info.st_mode & 0o022:
        return None
    return path


def _load_kernel(edges: NumericEdges) -> None:
    """Load (or compile) the kernel for the types `CurrentBins._bin` passes, without launching it: safe to run
    while the main thread reads the input (or bins a chunk)."""
    import numba

    kernel = _kernel()
    args = (
        np.empty((len(edges.names), 0)), edges.packed, edges.e_off, edges.m, edges.lo, edges.inv, edges.table,
        edges.t_off, edges.size, edges.steps, edges.c_off, np.zeros(1, dtype=np.int64), np.zeros(1),
        np.zeros(len(edges.names), dtype=np.bool_), np.zeros(len(edges.names), dtype=np.int64),
    )
    kernel.compile(tuple(numba.typeof(a) for a in args))


def warm_up(edges: NumericEdges) -> threading.Thread | None:
    """Load numba and the kernel on another thread while the caller reads its input: imports are most of a
    short comparison's time, and Arrow reads the file without the GIL, so the two overlap on two cores.
    Errors are left to the main thread, which does the same work again."""
    if not edges.names:
        return None

    def run() -> None:
        with contextlib.suppress(Exception):  # the main thread's own call reports it
            _load_kernel(edges)

    thread = threading.Thread(target=run, name="kanari-warm-up", daemon=True)
    thread.start()
    return thread


class CurrentBins:
    """Current data binned against a baseline, chunk by chunk; `report` gives the DriftReport."""

    def __init__(self, baseline: Baseline, columns: Sequence[str], method: str | None = None, *, by_sorting: bool = False):
        self.baseline = baseline
        self.method = method
        # See SORT_BELOW_VALUES: the same counts as the kernel's, by numpy's sort, without loading numba.
        self.by_sorting = by_sorting
        self.schema = SchemaCheck.of(baseline, columns)
        self.columns = self.schema.columns
        self.compared = self.schema.compared
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
        self._add_rows(len(df))

    def add_batch(self, batch: Any) -> None:
        """Add an Arrow RecordBatch: numeric columns go to the kernel straight from Arrow's buffers (one copy
        into the kernel's matrix, no DataFrame); a batch whose numeric features Arrow did not type as numbers
        goes through pandas (and the schema checks) instead."""
        import pyarrow as pa

        from kanari.drift.arrow_columns import float_values

        names = self.edges.names
        types = {n: batch.schema.field(n).type for n in names}
        if not all(pa.types.is_floating(t) or pa.types.is_integer(t) for t in types.values()):
            self.add_frame(batch.to_pandas())
            return
        if names:
            data = np.empty((len(names), batch.num_rows))
            for j, n in enumerate(names):
                data[j] = float_values(batch.column(n))  # nulls become NaN
                if pa.types.is_floating(types[n]) and self._kind[n] == "Integral":
                    self.schema.whole(n, data[j])
            self._bin(data)
        categorical = [f for f in self.compared if not f.numeric]
        if categorical:
            frame = batch.select([f.name for f in categorical]).to_pandas()
            for f in categorical:
                self._categorical(f, frame[f.name])
        self._add_rows(batch.num_rows)

    def _add_rows(self, n: int) -> None:
        self.rows += n
        self.schema.add_rows(n)

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
                self.schema.whole(name, df[name].to_numpy(dtype=np.float64, na_value=np.nan))

    def _bin(self, data: np.ndarray) -> None:
        e = self.edges
        before = self.nans.copy()
        if self.by_sorting:
            sorted_bins(data, e, self.counts, self.sums, self.want_sums, self.nans)
        else:
            _kernel()(
                data, e.packed, e.e_off, e.m, e.lo, e.inv, e.table, e.t_off, e.size, e.steps, e.c_off,
                self.counts, self.sums if len(self.sums) else np.zeros(1), self.want_sums, self.nans,
            )
        for j, name in enumerate(e.names):
            self.schema.count_present(name, data.shape[1] - int(self.nans[j] - before[j]))

    def _numeric(self, series: pd.Series) -> np.ndarray:
        name = str(series.name)
        return self.schema.numeric(next(f for f in self.compared if f.name == name), series)

    def _categorical(self, feature: Feature, series: pd.Series) -> None:
        names, counts = self.schema.categorical(feature, series)
        if names:
            self.categories[feature.name].add(names, (int(c) for c in counts))

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
        return self.schema.violations()

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
    import pyarrow

    from kanari.cli.tables import DataError, table_columns

    columns = table_columns(path)
    wanted = [f.name for f in baseline.profile.features if f.name in set(columns)]
    numeric = sum(1 for f in baseline.profile.numeric_features if f.name in set(columns))
    by_sorting = numeric * _rows_at_most(path) < SORT_BELOW_VALUES
    bins = CurrentBins(baseline, columns, method, by_sorting=by_sorting)
    # The sort path never loads numba; the KS p-values need no scipy (thresholds.ks_p_value).
    warming = None if by_sorting else warm_up(bins.edges)
    try:
        for chunk in iter_table(path, wanted, baseline, chunk_values):
            if isinstance(chunk, pyarrow.RecordBatch):  # else a DataFrame, where pandas read on
                bins.add_batch(chunk)
            else:
                bins.add_frame(chunk)
    except DataError:
        raise
    except (OSError, ValueError) as exc:
        raise DataError(f"{Path(path)}: cannot read: {exc}") from None
    finally:
        if warming is not None:
            warming.join()
    if bins.rows == 0:
        raise DataError(f"{Path(path)}: no rows")
    return bins.report(**judging)


def _rows_at_most(path: str | os.PathLike[str]) -> int:
    """A Parquet file's rows (its footer says); for text, a bound from its size (a row takes 2 bytes or more)."""
    p = Path(path)
    if p.name.lower().endswith((".parquet", ".pq")):
        import pyarrow.parquet as pq

        return int(pq.ParquetFile(p).metadata.num_rows)
    return p.stat().st_size // 2


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
        from kanari.drift.arrow_columns import parquet_batches

        yield from parquet_batches(p, columns, rows)
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
    import pandas as pd

    sep = "\t" if p.name.lower().endswith(".tsv") else ","
    skiprows = range(1, skip + 1) if skip else None
    yield from pd.read_csv(p, sep=sep, usecols=list(columns), chunksize=rows, skiprows=skiprows)
