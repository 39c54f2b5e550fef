"""Baselines on Spark, for training sets that do not fit one machine.

Each partition is profiled by the same code as the local engine (a Profile: KLL sketches, moments, category
counts), inside `mapInPandas`, so rows travel to Python as Arrow batches; the partition profiles come back to
the driver pickled (a few hundred KB each, whatever the partition's size) and are merged there. The merged
profile writes the same statistics.json / constraints.json as `kanari drift baseline`: counts, missing values
and category counts are exact, moments equal to floating-point rounding, and every numeric feature's CDF
within the sketches' stated rank error (sketch.RANK_ERROR_C / k) of the local engine's.

Feature types follow the local engine's rule (pandas' dtype): integer columns are Integral, floating columns
Integral when every finite value is a whole number, else Fractional; booleans and everything else String.

Paths: anything Spark reads (local paths, s3:// on EMR or SageMaker's Spark container, s3a:// with
hadoop-aws on the classpath). Format from the suffix (.parquet/.pq or a directory of Parquet parts, .csv,
.tsv), or `fmt`.
"""

from __future__ import annotations

import os
import pickle
import sys
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

from kanari.drift.profile import Feature, InferredType, Profile

if TYPE_CHECKING:
    import pandas as pd
    from pyspark.sql import DataFrame, SparkSession

PROFILE_COLUMN = "profile"


def spark_feature_types(schema: Sequence[tuple[str, str]], whole: dict[str, bool]) -> list[Feature]:
    """Features from a Spark schema ((name, simpleString type) pairs) and, for floating columns, whether
    every finite value is a whole number. Pure: the local engine's infer_type, on Spark's types."""
    out = []
    for name, spark_type in schema:
        t = spark_type.lower()
        kind: InferredType
        if t in ("tinyint", "smallint", "int", "bigint") or t.startswith("decimal(") and t.endswith(",0)"):
            kind = "Integral"
        elif t in ("float", "double") or t.startswith("decimal("):
            kind = "Integral" if whole.get(name, False) else "Fractional"
        else:
            kind = "String"
        out.append(Feature(name, kind))
    return out


def read_dataset(spark: SparkSession, path: str, fmt: str | None = None) -> DataFrame:
    fmt = fmt or _format_of(path)
    reader = spark.read
    if fmt == "parquet":
        return reader.parquet(path)
    if fmt in ("csv", "tsv"):
        return reader.options(header=True, inferSchema=True, sep="\t" if fmt == "tsv" else ",").csv(path)
    raise ValueError(f"data: {path}: unknown format {fmt!r}; use .parquet, .csv or .tsv (or --format)")


def _format_of(path: str) -> str:
    name = path.rstrip("/").lower()
    if name.endswith((".csv", ".csv.gz")):
        return "csv"
    if name.endswith(".tsv"):
        return "tsv"
    # A Parquet dataset is usually a directory of part files with no suffix.
    return "parquet"


def spark_profile(df: DataFrame, seed: int = 0) -> Profile:
    """Profile a Spark DataFrame: one Profile per partition, merged on the driver."""
    from pyspark.sql import functions as F

    columns = [str(c) for c in df.columns]
    if not columns:
        raise ValueError("data: no columns")
    if len(set(columns)) != len(columns):
        raise ValueError("data: column names must be unique")
    schema = [(f.name, f.dataType.simpleString()) for f in df.schema.fields]
    floating = [n for n, t in schema if t in ("float", "double") or (t.startswith("decimal(") and not t.endswith(",0)"))]
    whole: dict[str, bool] = {}
    if floating:
        # One pass: a floating column is Integral if no finite value has a fractional part; and how many
        # ±inf it holds (refused, as the local engine refuses them).
        inf = F.lit(float("inf"))
        checks = []
        for i, n in enumerate(floating):
            c = _double(n)
            checks.append(F.max(F.when(~F.isnan(c) & (F.abs(c) != inf) & (c != F.floor(c)), 1).otherwise(0)).alias(f"w{i}"))
            checks.append(F.sum(F.when(F.abs(c) == inf, 1).otherwise(0)).alias(f"i{i}"))
        row = df.agg(*checks).first()
        whole = {n: not (row[f"w{i}"] or 0) for i, n in enumerate(floating)} if row is not None else {}
        infinite = {n: int(row[f"i{i}"] or 0) for i, n in enumerate(floating)} if row is not None else {}
        if any(infinite.values()):
            raise ValueError(_infinities(df, {n: k for n, k in infinite.items() if k}))
    features = spark_feature_types(schema, whole)
    blob = pickle.dumps((features, seed))

    def profile_partition(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        import pandas as pd
        from pyspark import TaskContext

        feats, base_seed = pickle.loads(blob)
        ctx = TaskContext.get()
        part = ctx.partitionId() if ctx is not None else 0
        profile = Profile.empty(feats, seed=base_seed + part)
        for batch in batches:
            profile.add_frame(batch)
        yield pd.DataFrame({PROFILE_COLUMN: [pickle.dumps(profile, protocol=pickle.HIGHEST_PROTOCOL)]})

    parts = df.mapInPandas(profile_partition, schema=f"{PROFILE_COLUMN} binary").collect()
    merged = Profile.empty(features, seed=seed)
    for r in parts:
        merged.merge(pickle.loads(r[PROFILE_COLUMN]))
    if merged.rows == 0:
        raise ValueError("data: no rows")
    return merged


def _infinities(df: DataFrame, counts: dict[str, int]) -> str:
    """The local engine's refusal, with each column's first rows (0-based, in the order Spark reads the data:
    a file's own order; part files in Spark's listing order). Runs only when there is something to refuse."""
    import math

    from kanari.drift.model_monitor import INFINITE_ROWS_SHOWN, infinite_values_message

    found = []
    for name, count in counts.items():
        rows = (
            df.select(_double(name)).rdd.zipWithIndex()
            .filter(lambda t: t[0][0] is not None and math.isinf(t[0][0]))
            .map(lambda t: t[1])
            .take(INFINITE_ROWS_SHOWN)
        )
        found.append((name, count, [int(r) for r in rows]))
    return infinite_values_message("data", found)


def _double(name: str) -> Any:
    """The column as a double, its name quoted (a name may hold dots or spaces, which F.col would parse)."""
    from pyspark.sql import functions as F

    return F.col("`" + name.replace("`", "``") + "`").cast("double")


def session(master: str | None = None) -> SparkSession:
    """The Spark session: the one spark-submit (or SageMaker's Spark container) set up, else local."""
    from pyspark.sql import SparkSession

    builder = SparkSession.builder.appName("kanari-drift-baseline")
    if master is None and "SPARK_HOME" not in os.environ and "PYSPARK_SUBMIT_ARGS" not in os.environ:
        master = "local[*]"
    if master:
        builder = builder.master(master)
    if master and master.startswith("local"):
        # Local workers must run this interpreter (where Kanari and pandas are installed), not the first
        # `python3` on PATH; a cluster's own setting (spark-submit, SageMaker's container) is left alone.
        os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    return builder.getOrCreate()


def spark_baseline(
    spark: SparkSession, path: str, out_dir: str | os.PathLike[str], *, target: str | None = None, fmt: str | None = None
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Profile `path` on Spark and write statistics.json, constraints.json and samples.jsonl into out_dir."""
    from kanari.drift.model_monitor import SAMPLE_LIMIT, profile_documents, write_documents, write_samples

    df = read_dataset(spark, path, fmt)
    if target is not None and target not in df.columns:
        raise ValueError(f"target: column {target!r} is not in the data (columns: {', '.join(df.columns)})")
    statistics, constraints = profile_documents(spark_profile(df), target=target)
    write_documents(statistics, constraints, out_dir)
    # The warm-up gate's request bodies: from the first rows only (a bounded read, not a pass over the data).
    write_samples(df.limit(SAMPLE_LIMIT * 50).toPandas(), out_dir, target=target)
    return statistics, constraints
