"""`kanari drift baseline|compare|monitor|receiver`."""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from kanari.drift.compare import DriftReport

EXIT_OK = 0
EXIT_DRIFT = 1
EXIT_BAD_INPUT = 2
# Spelled here for the parser (importing kanari.drift.methods costs numpy); a test keeps them equal.
METHODS = ("linf", "psi", "js", "wasserstein", "chi2")
EXIT_INCONCLUSIVE = 3  # too few rows to judge: neither "no drift" nor "drift"


def register(subparsers: argparse._SubParsersAction) -> None:
    drift = subparsers.add_parser("drift", help="data drift: baselines, comparisons, the monitor and the retrain trigger")
    sub = drift.add_subparsers(dest="drift_command", metavar="SUBCOMMAND")
    drift.set_defaults(func=lambda _args: _usage(drift))

    p = sub.add_parser("baseline", help="write statistics.json, constraints.json and samples.jsonl (warm-up request "
                                        "bodies) for a training data file")
    p.add_argument("--data", required=True, help="training data (.csv, .tsv or .parquet)")
    p.add_argument("--out", "--output-dir", dest="out", required=True, metavar="DIR",
                   help="directory to write the baseline into")
    p.add_argument("--target", help="label column (profiled for prediction drift, not expected in requests)")
    p.add_argument(
        "--engine",
        choices=("local", "spark"),
        default="local",
        help="spark: profile partitions on Spark and merge them (data beyond one machine; local or s3:// paths)",
    )
    p.add_argument("--spark-master", help="Spark master URL (default: spark-submit's, else local[*])")
    p.add_argument("--format", choices=("parquet", "csv", "tsv"), dest="data_format",
                   help="spark: the data's format when the path does not say (a directory of part files is Parquet)")
    p.set_defaults(func=_baseline)

    p = sub.add_parser(
        "compare",
        help="compare a data file with a baseline (exit 0: no drift, 1: drift or schema violations, 2: bad input, "
        "3: inconclusive, too few rows)",
    )
    p.add_argument("--baseline", required=True, help="directory holding statistics.json and constraints.json")
    p.add_argument("--data", required=True, help="current data (.csv, .tsv or .parquet)")
    p.add_argument("-o", "--output", choices=("json", "yaml"), default=None,
                   help="json|yaml (default: a table)")
    p.add_argument(
        "--method",
        metavar="{" + ",".join(METHODS) + "}",
        help="drift method (default: the baseline's, L-infinity as SageMaker); numeric-only or categorical-only "
        "methods apply to the features they fit",
    )
    p.add_argument("--plot", metavar="PNG", help="draw baseline vs current for the most drifted features")
    p.add_argument(
        "--min-samples", type=_positive_int, default=100,
        help="features with fewer current values are inconclusive (exit 3), as in the drift monitor (default 100)",
    )
    p.add_argument(
        "--false-alarm-rate", type=_rate, default=None, metavar="RATE",
        help="probability of flagging any feature when nothing drifted (default: the baseline's kanari.false_alarm_rate); "
        "0 judges by the fixed thresholds alone",
    )
    p.set_defaults(func=_compare)

    from kanari.monitor.settings import monitor_arguments
    from kanari.retrain.settings import receiver_arguments

    p = sub.add_parser("monitor", help="run the drift monitor (KServe payload-logger sink, Prometheus metrics)")
    monitor_arguments(p)
    p.set_defaults(func=_service("kanari.monitor.server"))

    p = sub.add_parser("receiver", help="run the retraining trigger (Alertmanager webhook receiver)")
    receiver_arguments(p)
    p.set_defaults(func=_service("kanari.retrain.receiver"))


def _service(name: str) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        # Imported on use: the services pull in aiohttp, kfp and the kubernetes client.
        module = importlib.import_module(name)
        return int(module.run(args))

    return run


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} must be at least 1")
    return value


def _rate(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0 <= value <= 0.5:
        raise argparse.ArgumentTypeError(f"{value} must be between 0 and 0.5")
    return value


def _usage(parser: argparse.ArgumentParser) -> int:
    parser.print_help(sys.stderr)
    return EXIT_BAD_INPUT


# glibc's mallopt parameters (malloc.h).
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3


def one_blas_thread() -> None:
    """Start numpy's OpenBLAS with no worker thread (unless the user chose a number).

    At import OpenBLAS starts a worker per core, which spins waiting for work for its first fraction of a
    second: on 2 cores ~10% of a short `compare`'s samples (perf: blas_thread_server), competing with the
    threads that sort and read, in commands that never call BLAS. Measured, a mean of 5 runs each at 100k x
    100 (2026-11-30): baseline 0.54 -> 0.41 s wall, compare 0.53 -> 0.37 s. Only before numpy's import."""
    if "numpy" not in sys.modules:
        os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")


def reuse_freed_memory() -> None:
    """Have glibc keep what this process frees for its next chunk instead of unmapping it.

    `baseline` and `compare` allocate the same few-MB arrays chunk after chunk. By default glibc maps each big
    array fresh and unmaps it when freed, so the kernel faults in and zeroes new pages for every chunk: a third
    of the baseline's time at 100k x 100 features (perf: clear_page), 0.1-0.5 s of system time a process on
    this machine. Kept in the heap, a chunk's pages are reused (a mean of 5 runs, 2026-11-30: baseline 0.99 ->
    0.76 s wall, compare 0.79 -> 0.58 s). For these one-shot commands only: a long-running service would keep
    its peak for good. A no-op where the C library is not glibc."""
    import ctypes

    try:
        libc = ctypes.CDLL(None)
        libc.mallopt(M_MMAP_THRESHOLD, 1 << 30)
        libc.mallopt(M_TRIM_THRESHOLD, 1 << 30)
    except (OSError, AttributeError):  # musl, macOS: no mallopt; their allocator's defaults stand
        pass


def _baseline(args: argparse.Namespace) -> int:
    if args.engine == "spark":
        return _spark_baseline(args)
    one_blas_thread()
    reuse_freed_memory()
    from kanari.drift.file_baseline import is_parquet
    from kanari.drift.model_monitor import CONSTRAINTS, SAMPLES, STATISTICS

    try:
        if is_parquet(args.data):
            # Streamed from Arrow, numeric columns without pandas: the file is never loaded whole.
            from kanari.drift.file_baseline import write_parquet_baseline

            rows, columns = write_parquet_baseline(args.data, args.out, target=args.target)
        else:
            from kanari.cli.tables import read_table
            from kanari.drift.model_monitor import write_baseline

            df = read_table(args.data)
            write_baseline(df, args.out, target=args.target)
            rows, columns = df.shape
    except (ValueError, OSError) as exc:
        print(f"kanari drift baseline: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    print(f"wrote {args.out}/{STATISTICS}, {args.out}/{CONSTRAINTS} and {args.out}/{SAMPLES} "
          f"({rows} rows, {columns} columns)")
    return EXIT_OK


def _spark_baseline(args: argparse.Namespace) -> int:
    try:
        from pyspark.errors import PySparkException

        from kanari.drift.spark_baseline import session, spark_baseline
    except ImportError:
        print("kanari drift baseline: --engine spark needs pyspark (pip install 'kanari[spark]') and Java 17", file=sys.stderr)
        return EXIT_BAD_INPUT
    spark = session(args.spark_master)
    try:
        statistics, _ = spark_baseline(spark, args.data, args.out, target=args.target, fmt=args.data_format)
    except (ValueError, OSError, PySparkException) as exc:
        print(f"kanari drift baseline: {str(exc).splitlines()[0]}", file=sys.stderr)
        return EXIT_BAD_INPUT
    finally:
        spark.stop()
    rows, columns = statistics["dataset"]["item_count"], len(statistics["features"])
    print(f"wrote {args.out}/statistics.json and {args.out}/constraints.json ({rows} rows, {columns} columns, Spark)")
    return EXIT_OK


def _compare(args: argparse.Namespace) -> int:
    one_blas_thread()
    reuse_freed_memory()
    from kanari.cli.tables import read_table
    from kanari.drift.fastcompare import compare_file
    from kanari.drift.model_monitor import read_baseline

    if args.method is not None and args.method not in METHODS:
        print(f"kanari drift compare: --method {args.method!r}: one of {', '.join(METHODS)}", file=sys.stderr)
        return EXIT_BAD_INPUT
    try:
        baseline = read_baseline(args.baseline)
        # One pass over only the baseline's columns, in bounded chunks: the file is never loaded whole.
        rate: float | None | Literal["baseline"] = (
            "baseline" if args.false_alarm_rate is None else (args.false_alarm_rate or None)
        )
        report = compare_file(baseline, args.data, method=args.method, min_samples=args.min_samples,
                              false_alarm_rate=rate)
    except ValueError as exc:
        print(f"kanari drift compare: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    if args.output == "json":
        print(json.dumps(report.to_dict(), indent=1))
    elif args.output == "yaml":
        import yaml

        print(yaml.safe_dump(report.to_dict(), sort_keys=False).rstrip())
    else:
        print(render_table(report))
    if args.plot:
        try:
            from kanari.cli.drift_plot import plot_report
        except ImportError:
            print("kanari drift compare: --plot needs matplotlib: pip install 'kanari[cli]'", file=sys.stderr)
            return EXIT_BAD_INPUT
        from kanari.drift.compare import profile_current

        try:
            current = profile_current(baseline, read_table(args.data))
            plotted = plot_report(report, baseline, current, args.plot)
        except (ValueError, OSError) as exc:
            print(f"kanari drift compare: --plot: {exc}", file=sys.stderr)
            return EXIT_BAD_INPUT
        print(f"plot: {args.plot} ({', '.join(plotted)})", file=sys.stderr)
    if report.drift:
        return EXIT_DRIFT
    return EXIT_INCONCLUSIVE if report.verdict == "inconclusive" else EXIT_OK


def render_table(report: DriftReport) -> str:
    from kanari.drift.methods import P_VALUE_METHODS

    budget = report.false_alarm_rate is not None
    head: tuple[str, ...] = ("FEATURE", "TYPE", "METHOD", "VALUE", "THRESHOLD")
    rows: list[tuple[str, ...]] = [head + (("P", "ADJ-P") if budget else ()) + ("STATUS",)]
    for f in report.features:
        value = "n/a" if f.value is None else f"{f.value:.4f}"
        op = "<" if f.method in P_VALUE_METHODS else ">"
        row: tuple[str, ...] = (f.feature, f.inferred_type, f.method, value, f"{op}{f.threshold:g}")
        if budget:
            row += tuple("-" if p is None else f"{p:.2g}" for p in (f.p_value, f.adjusted_p_value))
        rows.append((*row, f.status))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    lines.append("")
    if report.violations:
        lines.append("SCHEMA VIOLATIONS")
        lines.extend(f"  {v.kind:<16} {v.feature}: {v.detail}" for v in report.violations)
        lines.append("")
    rule = f"; drift: past the threshold and adjusted p <= {report.false_alarm_rate:g}" if budget else ""
    lines.append(
        f"verdict: {report.verdict} ({len(report.drifted_features)} of {len(report.features)} features drifted, "
        f"{len(report.inconclusive_features)} inconclusive (min-samples {report.min_samples}), "
        f"{len(report.violations)} schema violations; {report.current_rows} rows vs {report.baseline_rows} baseline rows{rule})"
    )
    return "\n".join(lines)
