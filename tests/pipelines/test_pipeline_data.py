"""Training data: the bundled imbalanced dataset, schema checks naming the parameter, the leakage guard
(split before resampling, no row on both sides), and S3 CSV/Parquet inputs with their version."""

from __future__ import annotations

import io

import numpy as np
import pandas as pd
import pytest

from kfp_pipelines import data
from kfp_pipelines.errors import InputError, StepFailed


def test_builtin_dataset_is_real_imbalanced_and_deterministic() -> None:
    a, b = data.builtin_breast_cancer(), data.builtin_breast_cancer()
    pd.testing.assert_frame_equal(a, b)
    rate = a[data.BUILTIN_TARGET].mean()
    assert 0.1 < rate < 0.2  # malignant thinned to ~30% of its 212 rows among 357 benign
    assert len(a) == 357 + round(212 * data.BUILTIN_KEEP_POSITIVE)
    assert "mean radius" in a.columns
    assert data.validate(a, data.BUILTIN_TARGET) == [c for c in a.columns if c != data.BUILTIN_TARGET]


def test_split_is_stratified_disjoint_and_happens_on_raw_rows() -> None:
    frame = data.builtin_breast_cancer()
    parts = data.split(frame, data.BUILTIN_TARGET, seed=7)
    assert len(parts.train) + len(parts.validation) + len(parts.test) == len(frame)
    for part in (parts.train, parts.validation, parts.test):
        assert abs(part[data.BUILTIN_TARGET].mean() - frame[data.BUILTIN_TARGET].mean()) < 0.03
    # Resampling is train.py's, on the train channel only: no split contains a repeated row.
    for part in (parts.train, parts.validation, parts.test):
        assert not part.duplicated().any()


def test_duplicate_feature_rows_are_removed_before_the_split() -> None:
    frame = data.builtin_breast_cancer()
    doubled = pd.concat([frame, frame.iloc[:40]], ignore_index=True)
    parts = data.split(doubled, data.BUILTIN_TARGET, seed=7)
    assert parts.duplicates_dropped == 40
    data.assert_disjoint(parts, data.BUILTIN_TARGET)


def test_leakage_guard_catches_rows_on_both_sides() -> None:
    parts = data.split(data.builtin_breast_cancer(), data.BUILTIN_TARGET, seed=7)
    leaky = data.Split(pd.concat([parts.train, parts.test.iloc[:3]]), parts.validation, parts.test, 0)
    with pytest.raises(StepFailed, match="3 test rows also appear in the train split"):
        data.assert_disjoint(leaky, data.BUILTIN_TARGET)


@pytest.mark.parametrize(
    ("mutate", "parameter", "fragment"),
    [
        (lambda f: f.drop(columns=["label"]), "target", "no column 'label'"),
        (lambda f: f.assign(label=f["label"] * 2), "target", "must be binary 0/1"),
        (lambda f: f.assign(leak=f["label"] * 3.0 + 1), "dataset_uri", "feature 'leak' reproduces the target"),
        (lambda f: f.assign(city="Lisbon"), "dataset_uri", "non-numeric feature columns: city"),
        (lambda f: f.assign(**{"mean radius": np.where(f.index == 3, np.nan, f["mean radius"])}), "dataset_uri",
         "missing values in feature columns: mean radius"),
        (lambda f: f[f["label"] == 0].head(100).pipe(lambda g: pd.concat([g, f[f["label"] == 1].head(4)])),
         "dataset_uri", "only 4 rows of class 1"),
    ],
)
def test_bad_data_names_the_parameter(mutate, parameter: str, fragment: str) -> None:
    with pytest.raises(InputError) as err:
        data.validate(mutate(data.builtin_breast_cancer()), "label")
    assert err.value.parameter == parameter
    assert fragment in err.value.message


def test_s3_csv_and_parquet_with_their_versions(aws) -> None:
    frame = data.builtin_breast_cancer()
    aws.s3.put_bucket_versioning(Bucket=aws.bucket, VersioningConfiguration={"Status": "Enabled"})
    aws.s3.put_object(Bucket=aws.bucket, Key="in/data.csv", Body=frame.to_csv(index=False).encode())
    buf = io.BytesIO()
    frame.to_parquet(buf, index=False)
    aws.s3.put_object(Bucket=aws.bucket, Key="in/data.parquet", Body=buf.getvalue())
    csv = data.load(f"s3://{aws.bucket}/in/data.csv", aws.s3)
    parquet = data.load(f"s3://{aws.bucket}/in/data.parquet", aws.s3)
    assert csv.version.startswith("s3-version:") and parquet.version.startswith("s3-version:")
    assert np.allclose(csv.frame.to_numpy(), frame.to_numpy())
    pd.testing.assert_frame_equal(parquet.frame, frame)
    with pytest.raises(InputError, match="does not exist") as err:
        data.load(f"s3://{aws.bucket}/in/missing.csv", aws.s3)
    assert err.value.parameter == "dataset_uri"
    with pytest.raises(InputError, match=r"\.csv or \.parquet"):
        data.load(f"s3://{aws.bucket}/in/data.json", aws.s3)
