"""The pipeline's calibration step: the classifier's scores calibrated on the holdout, registered with the
model package (a reference and a digest in its CustomerMetadataProperties), read back by the one reader
the monitor uses (kanari.registry_metadata.read_calibration); a non-binary task records none, and a
malformed or altered calibration is a clear error, never a silent "no calibration"."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from kanari import registry_metadata as keys
from kanari.judging.cbpe import Calibration
from pipelines_testlib import trained_model_tarball
from sklearn.isotonic import IsotonicRegression
from test_pipeline_registry_gate import put_documents, register

from kfp_pipelines import data, evaluation, steps
from kfp_pipelines.errors import StepFailed

TARGET = data.BUILTIN_TARGET
# With an alert's five fields too: the package's metadata stays within the registry's limits (strict validation).
ALERT = {"alertname": "KanariFeatureDrift", "fingerprint": "5f3a9c01d2e4b678", "startsAt": "2026-11-30T04:00:00Z",
         "status": "firing", "labels": {"feature": "amount", "severity": "warning"}, "annotations": {}}


def s3_reader(aws: Any):  # noqa: ANN201
    def fetch(uri: str) -> bytes:
        bucket, key = uri.removeprefix("s3://").split("/", 1)
        return bytes(aws.s3.get_object(Bucket=bucket, Key=key)["Body"].read())

    return fetch


def trained(aws: Any, job: str) -> tuple[dict[str, str], pd.DataFrame, str]:
    """A real model (trained here) with its documents, and the holdout it is calibrated on."""
    parts = data.split(data.builtin_breast_cancer(), TARGET, seed=7)
    docs = put_documents(aws, job)
    aws.s3.put_object(Bucket=aws.bucket, Key=f"training/{job}/output/model.tar.gz",
                      Body=trained_model_tarball(parts.train, TARGET, epochs=15))
    aws.s3.put_object(Bucket=aws.bucket, Key=f"{job}/test/test.csv", Body=data.to_csv(parts.test))
    return docs, parts.test, f"s3://{aws.bucket}/{job}/test/"


def test_a_registered_package_carries_a_calibration_that_reproduces_the_holdouts_calibrated_scores(aws) -> None:
    docs, holdout, test_uri = trained(aws, "kanari-cal")
    calibration_uri = steps.calibrate(model_uri=docs["model_uri"], test_uri=test_uri)
    assert calibration_uri == docs["model_uri"].rsplit("/", 1)[0] + "/calibration.json"  # beside the model
    arn, _ = register(aws, docs, calibration_uri=calibration_uri, drift_alert=ALERT)

    meta = aws.sm.describe_model_package(ModelPackageName=arn)["CustomerMetadataProperties"]
    assert meta[keys.CALIBRATION_URI] == calibration_uri
    calibration = keys.read_calibration(meta, s3_reader(aws))
    assert isinstance(calibration, Calibration)

    # Independently: the model's raw scores on the holdout, calibrated by scikit-learn's isotonic regression.
    raw = evaluation.score_holdout(aws.s3, docs["model_uri"], test_uri)
    labels = holdout[TARGET].to_numpy()
    assert np.array_equal(raw.labels, labels)
    expected = IsotonicRegression(y_min=0, y_max=1, out_of_bounds="clip").fit(raw.scores, labels).predict(raw.scores)
    np.testing.assert_allclose(calibration.apply(raw.scores), expected, atol=1e-9)
    # A calibration that does something: the raw scores were not calibrated, the registered map's are (on the
    # holdout an isotonic fit's mean equals the prevalence) and it keeps the ranking.
    assert np.max(np.abs(calibration.apply(raw.scores) - raw.scores)) > 0.01
    assert calibration.apply(raw.scores).mean() == pytest.approx(labels.mean(), abs=1e-9)
    order = np.argsort(raw.scores)
    assert np.all(np.diff(calibration.apply(raw.scores)[order]) >= 0)

    # What the document says beside the map: the threshold CBPE estimates the model's decisions at.
    body = s3_reader(aws)(calibration_uri)
    assert meta[keys.CALIBRATION_SHA256] == hashlib.sha256(body).hexdigest()
    doc = json.loads(body)
    assert doc["threshold"] == 0.5 and doc["rows"] == len(holdout) and doc["fitted_on"] == test_uri


def test_a_non_binary_task_records_no_calibration(aws) -> None:
    docs, holdout, _ = trained(aws, "kanari-reg")
    # The same features with a continuous target (a regression holdout): nothing to calibrate.
    regression = holdout.assign(**{TARGET: np.linspace(0.0, 250.0, len(holdout))})
    aws.s3.put_object(Bucket=aws.bucket, Key="reg/test/test.csv", Body=data.to_csv(regression))
    before = set(aws.object_keys())
    assert steps.calibrate(model_uri=docs["model_uri"], test_uri=f"s3://{aws.bucket}/reg/test/") == ""
    assert set(aws.object_keys()) == before  # no calibration.json written
    arn, _ = register(aws, docs, calibration_uri="")
    meta = aws.sm.describe_model_package(ModelPackageName=arn)["CustomerMetadataProperties"]
    assert keys.CALIBRATION_URI not in meta and keys.CALIBRATION_SHA256 not in meta
    assert keys.read_calibration(meta, s3_reader(aws)) is None

    scores = np.linspace(0, 1, 6)
    assert evaluation.calibration_for(np.array([0, 1, 2, 0, 1, 2]), scores) is None  # multi-class
    assert evaluation.calibration_for(np.array(["a", "b"] * 3), scores) is None
    assert evaluation.calibration_for(np.array([0, 1] * 3), scores * 3) is None  # scores are not probabilities
    assert isinstance(evaluation.calibration_for(np.array([0, 1] * 3), scores), Calibration)


def test_a_malformed_calibration_is_never_registered(aws) -> None:
    docs = put_documents(aws, "kanari-badcal")
    key = "training/kanari-badcal/output/calibration.json"
    uri = f"s3://{aws.bucket}/{key}"
    for body, fragment in ((b"not json", "not JSON"), (json.dumps({"x": [0.2, 0.1], "y": [0, 1]}).encode(),
                                                       "x must be finite and ascending")):
        aws.s3.put_object(Bucket=aws.bucket, Key=key, Body=body)
        with pytest.raises(StepFailed, match=fragment):
            register(aws, docs, calibration_uri=uri)
    with pytest.raises(StepFailed, match="does not exist; nothing was registered"):
        register(aws, docs, calibration_uri=f"s3://{aws.bucket}/nowhere/calibration.json")
    assert aws.packages() == []


GOOD = json.dumps({"method": "isotonic", "x": [0.1, 0.5, 0.9], "y": [0.0, 0.4, 1.0]}).encode()


def refs(body: bytes, **override: str) -> dict[str, str]:
    return {keys.CALIBRATION_URI: "s3://models/fraud/calibration.json",
            keys.CALIBRATION_SHA256: hashlib.sha256(body).hexdigest(), **override}


@pytest.mark.parametrize(
    ("meta", "body", "fragment"),
    [
        ({keys.CALIBRATION_URI: "s3://models/fraud/calibration.json"}, GOOD, f"{keys.CALIBRATION_SHA256}: missing"),
        ({keys.CALIBRATION_SHA256: hashlib.sha256(GOOD).hexdigest()}, GOOD, f"{keys.CALIBRATION_URI}: missing"),
        (refs(GOOD, **{keys.CALIBRATION_URI: "https://models/fraud/calibration.json"}), GOOD, "not an s3://bucket/key"),
        (refs(GOOD, **{keys.CALIBRATION_URI: "s3://models"}), GOOD, "not an s3://bucket/key"),
        (refs(GOOD, **{keys.CALIBRATION_SHA256: "abc"}), GOOD, "not a lowercase hex SHA-256"),
        (refs(GOOD), GOOD.replace(b"0.4", b"0.5"), "does not match kanari:calibration-sha256"),
        (refs(b"{oops"), b"{oops", "not JSON"),
        (refs(b"[1, 2]"), b"[1, 2]", "not a JSON object"),
        (refs(b'{"x": [0.1]}'), b'{"x": [0.1]}', "needs x and y"),
        (refs(b'{"x": [0.1, 0.5], "y": [0.6, 0.2]}'), b'{"x": [0.1, 0.5], "y": [0.6, 0.2]}', "y must be ascending"),
        (refs(b'{"x": [0.1, 0.5], "y": [0.2, 1.6]}'), b'{"x": [0.1, 0.5], "y": [0.2, 1.6]}', "probabilities"),
        (refs(b'{"x": [], "y": []}'), b'{"x": [], "y": []}', "non-zero length"),
    ],
)
def test_a_malformed_calibration_reads_as_a_clear_error(meta: dict[str, str], body: bytes, fragment: str) -> None:
    with pytest.raises(keys.CalibrationError, match=fragment.replace(".", r"\.")):
        keys.read_calibration(meta, lambda _uri: body)


def test_an_unreadable_calibration_is_reported_not_taken_for_none() -> None:
    def down(_uri: str) -> bytes:
        raise ConnectionError("endpoint unreachable")

    with pytest.raises(keys.CalibrationUnavailable, match="cannot be read"):
        keys.read_calibration(refs(GOOD), down)
    assert keys.read_calibration({keys.GIT_SHA: "abc"}, down) is None  # no reference: nothing fetched


@given(st.one_of(st.binary(max_size=200), st.recursive(
    st.none() | st.booleans() | st.floats(allow_nan=True) | st.integers(-(10**400), 10**400) | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.sampled_from(["x", "y", "method"]), inner,
                                                                max_size=3),
    max_leaves=12,
).map(lambda doc: json.dumps(doc).encode())))
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_any_document_reads_as_a_calibration_or_a_calibration_error(body: bytes) -> None:
    try:
        got = keys.read_calibration(refs(body), lambda _uri: body)
    except keys.CalibrationError:
        return
    assert isinstance(got, Calibration)
    # Whatever was accepted is a valid monotone map into [0, 1].
    out = got.apply(np.linspace(0, 1, 11))
    assert np.all((out >= 0) & (out <= 1)) and np.all(np.diff(out) >= 0)


def test_the_calibration_document_round_trips_through_the_reader() -> None:
    rng = np.random.default_rng(3)
    s = rng.uniform(size=400)
    y = (rng.uniform(size=400) < s**2).astype(int)
    cal = evaluation.calibration_for(y, s)
    assert cal is not None
    body = json.dumps(evaluation.calibration_document(cal, 0.4, "s3://b/test/", 400, int(y.sum()))).encode()
    back = keys.read_calibration(refs(body), lambda _uri: body)
    assert back is not None
    np.testing.assert_array_equal(back.apply(s), cal.apply(s))
    # Calibrated on data whose true P(y | s) is s**2: the map recovers it up to sampling error.
    assert np.mean(np.abs(back.apply(s) - s**2)) < 0.08
