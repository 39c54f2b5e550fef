"""Training data: load, check the schema, guard against leakage, split.

The split happens here, before anything resamples rows (train.py oversamples the positive class of
its train channel only), so no test row can reach training. Checks fail with the parameter to fix.
"""

from __future__ import annotations

import hashlib
import io
import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from kfp_pipelines import aws
from kfp_pipelines.errors import InputError, StepFailed

log = logging.getLogger("kanari.pipeline")

# A real tabular dataset shipped inside scikit-learn (no download): Wisconsin breast cancer, with the
# malignant class as the positive label, thinned deterministically so positives are rare.
BUILTIN_DATASET = "sklearn://breast_cancer"
BUILTIN_TARGET = "label"
BUILTIN_KEEP_POSITIVE = 0.3
BUILTIN_SEED = 20240607

MIN_CLASS_ROWS = 10
LEAK_CORRELATION = 0.999


@dataclass(frozen=True)
class Dataset:
    frame: pd.DataFrame
    uri: str
    version: str


@dataclass(frozen=True)
class Split:
    train: pd.DataFrame
    validation: pd.DataFrame
    test: pd.DataFrame
    duplicates_dropped: int


def imbalance(frame: pd.DataFrame, target: str, keep_positive: float, seed: int) -> pd.DataFrame:
    """Keep a seeded fraction of the positive rows and all negatives; row order is preserved."""
    rng = np.random.default_rng(seed)
    positive = frame.index[frame[target] == 1]
    keep = set(rng.choice(positive, size=round(len(positive) * keep_positive), replace=False).tolist())
    mask = (frame[target] == 0) | frame.index.isin(keep)
    return frame[mask].reset_index(drop=True)


def builtin_breast_cancer() -> pd.DataFrame:
    from sklearn.datasets import load_breast_cancer

    bunch = load_breast_cancer(as_frame=True)
    frame = bunch.frame.drop(columns=["target"])
    # scikit-learn codes malignant as 0; the positive (rare, interesting) class is malignant.
    frame[BUILTIN_TARGET] = (bunch.frame["target"] == 0).astype(int)
    return imbalance(frame, BUILTIN_TARGET, BUILTIN_KEEP_POSITIVE, BUILTIN_SEED)


def frame_digest(frame: pd.DataFrame) -> str:
    return hashlib.sha256(frame.to_csv(index=False).encode()).hexdigest()[:12]


def load(uri: str, s3: Any) -> Dataset:
    if uri == BUILTIN_DATASET:
        import sklearn

        frame = builtin_breast_cancer()
        return Dataset(frame, uri, f"sklearn-{sklearn.__version__}-{frame_digest(frame)}")
    if not uri.startswith("s3://"):
        raise InputError("dataset_uri", f"expected {BUILTIN_DATASET} or an s3:// CSV/Parquet object, got {uri!r}")
    loc = aws.S3Uri.parse(uri, "dataset_uri")
    suffix = loc.key.lower().rsplit(".", 1)[-1] if "." in loc.key else ""
    if suffix not in ("csv", "parquet"):
        raise InputError("dataset_uri", f"{uri} must end in .csv or .parquet")
    try:
        obj = s3.get_object(Bucket=loc.bucket, Key=loc.key)
    except aws.ClientError as exc:
        if aws.error_code(exc) in ("NoSuchKey", "404", "NoSuchBucket"):
            raise InputError("dataset_uri", f"{uri} does not exist") from None
        raise StepFailed(f"cannot read {uri}: {aws.error_message(exc)}") from exc
    body = obj["Body"].read()
    try:
        frame = pd.read_csv(io.BytesIO(body)) if suffix == "csv" else pd.read_parquet(io.BytesIO(body))
    except Exception as exc:  # a parser's error is the user's file being unreadable
        raise InputError("dataset_uri", f"{uri} is not a readable {suffix}: {exc}") from None
    # A versioned bucket gives the object version; otherwise the ETag pins the content.
    version = f"s3-version:{obj['VersionId']}" if obj.get("VersionId") not in (None, "null") else (
        f"etag:{str(obj.get('ETag', '')).strip(chr(34))}"
    )
    return Dataset(frame, uri, version)


def validate(frame: pd.DataFrame, target: str) -> list[str]:
    """Schema and leakage checks; returns the feature columns."""
    if frame.empty:
        raise InputError("dataset_uri", "the dataset has no rows")
    if target not in frame.columns:
        raise InputError("target", f"no column {target!r} in the dataset (columns: {', '.join(map(str, frame.columns))})")
    labels = frame[target]
    if labels.isna().any():
        raise InputError("target", f"{int(labels.isna().sum())} rows have no {target!r} value")
    values = set(pd.unique(labels))
    if not values <= {0, 1}:
        raise InputError("target", f"{target!r} must be binary 0/1, found {sorted(map(str, values))[:5]}")
    features = [str(c) for c in frame.columns if c != target]
    if not features:
        raise InputError("dataset_uri", "no feature columns besides the target")
    non_numeric = [c for c in features if not pd.api.types.is_numeric_dtype(frame[c])]
    if non_numeric:
        raise InputError("dataset_uri", f"non-numeric feature columns: {', '.join(non_numeric)}")
    missing = [c for c in features if frame[c].isna().any()]
    if missing:
        raise InputError("dataset_uri", f"missing values in feature columns: {', '.join(missing)}")
    counts = labels.astype(int).value_counts()
    for cls in (0, 1):
        if int(counts.get(cls, 0)) < MIN_CLASS_ROWS:
            raise InputError(
                "dataset_uri", f"only {int(counts.get(cls, 0))} rows of class {cls}; need at least {MIN_CLASS_ROWS}"
            )
    y = labels.astype(float)
    for c in features:
        x = frame[c].astype(float)
        if x.std() == 0:
            continue
        if abs(float(np.corrcoef(x, y)[0, 1])) >= LEAK_CORRELATION:
            raise InputError("dataset_uri", f"feature {c!r} reproduces the target {target!r}: a leaked label")
    return features


def split(frame: pd.DataFrame, target: str, seed: int, test_fraction: float = 0.25,
          validation_fraction: float = 0.2) -> Split:
    """Stratified train/validation/test split of the raw rows, before any resampling."""
    from sklearn.model_selection import train_test_split

    features = [c for c in frame.columns if c != target]
    # A feature vector seen twice would otherwise land on both sides of the split.
    deduped = frame.drop_duplicates(subset=features, keep="first").reset_index(drop=True)
    dropped = len(frame) - len(deduped)
    rest, test = train_test_split(deduped, test_size=test_fraction, stratify=deduped[target], random_state=seed)
    train, validation = train_test_split(
        rest, test_size=validation_fraction, stratify=rest[target], random_state=seed
    )
    out = Split(train.reset_index(drop=True), validation.reset_index(drop=True), test.reset_index(drop=True), dropped)
    assert_disjoint(out, target)
    return out


def _row_keys(frame: pd.DataFrame, target: str) -> set[int]:
    return set(pd.util.hash_pandas_object(frame.drop(columns=[target]), index=False).tolist())


def assert_disjoint(parts: Split, target: str) -> None:
    """The leakage guard: no feature row of the test or validation split also appears in training."""
    train = _row_keys(parts.train, target)
    for name, frame in (("test", parts.test), ("validation", parts.validation)):
        shared = len(train & _row_keys(frame, target))
        if shared:
            raise StepFailed(f"leakage guard: {shared} {name} rows also appear in the train split")


def to_csv(frame: pd.DataFrame) -> bytes:
    return frame.to_csv(index=False).encode()
