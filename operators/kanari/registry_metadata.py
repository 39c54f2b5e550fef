"""The keys of a model package's CustomerMetadataProperties in the SageMaker Model Registry, spelled once.

The pipeline's register step writes them, the controller reads the lineage and the baseline back into
status, `kanari models list` and the demo show them. `read_calibration` is the one reader of the score
calibration the pipeline registers with a binary classifier (for CBPE's label-free estimates): the drift
monitor reads it through here too, with the URI and digest the controller copies from the package into
status (ModelRef.calibrationUri, ModelRef.calibrationSha256), so a file changed after registration is refused.
"""

from __future__ import annotations

import hashlib
import json
import math
import urllib.parse
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # numpy stays out of the CLI's import path until a calibration is read
    from kanari.judging.cbpe import Calibration

PREFIX = "kanari:"
GIT_SHA = "kanari:git-sha"
DATASET_URI = "kanari:dataset-uri"
DATASET_VERSION = "kanari:dataset-version"
PIPELINE_RUN = "kanari:pipeline-run-id"
TRAINING_JOB = "kanari:training-job-arn"
TRAINING_IMAGE = "kanari:training-image"
IMAGE_DIGEST = "kanari:image-digest"
SOURCE_DIGEST = "kanari:source-digest"
REASON = "kanari:reason"
MODEL_NAME = "kanari:model-name"
GATE = "kanari:gate"
SERVING_ACCELERATOR = "kanari:serving-accelerator"
NEURON_COMPILE_JOB = "kanari:neuron-compile-job-arn"  # the SageMaker job that compiled the artifact (Neuron builds)
BASELINE_URI = "kanari:baseline-uri"
DRIFT_ALERT = "kanari:drift-alert"
DRIFT_ALERT_FINGERPRINT = "kanari:drift-alert-fingerprint"
DRIFT_ALERT_STARTS_AT = "kanari:drift-alert-starts-at"
METRIC_PREFIX = "kanari:metric."
# The holdout calibration (kanari.judging.cbpe's calibration.json beside the model) and the SHA-256 of its
# bytes. A reference, not the document: CustomerMetadataProperties values are at most 256 characters of
# [letters digits spaces _.:/=+-@] (botocore's CustomerMetadataMap), so no JSON fits; the digest ties the
# package to the exact file it was registered with.
CALIBRATION_URI = "kanari:calibration-uri"
CALIBRATION_SHA256 = "kanari:calibration-sha256"
MAX_CALIBRATION_BYTES = 1 << 20  # an isotonic map of a few hundred points is a few kB
# The demo's fault-injection model says so in its registry metadata (devstack only).
FAULT_INJECTION = "kanari:fault-injection"

# status.lineage field -> the keys it is read from: Kanari's, then the un-prefixed spelling other tools write.
LINEAGE = {
    "trainingJob": (TRAINING_JOB, "TrainingJobArn"),
    "pipelineRun": (PIPELINE_RUN, "PipelineRunId"),
    "datasetUri": (DATASET_URI, "DatasetUri"),
    "gitSha": (GIT_SHA, "GitSha"),
    "imageDigest": (IMAGE_DIGEST, "ImageDigest"),
    "datasetVersion": (DATASET_VERSION, "DatasetVersion"),
    "driftAlert": (DRIFT_ALERT, "DriftAlert"),
    "driftAlertFingerprint": (DRIFT_ALERT_FINGERPRINT, "DriftAlertFingerprint"),
    "driftAlertStartsAt": (DRIFT_ALERT_STARTS_AT, "DriftAlertStartsAt"),
}
BASELINE = (BASELINE_URI, "BaselineUri")


def registered_metrics(metadata: Mapping[str, str]) -> dict[str, float]:
    """The test metrics registered with a package (kanari:metric.<name>), finite numbers only: a figure that
    does not read as one is left out, so nothing is ever compared with a made-up number."""
    out: dict[str, float] = {}
    for key, raw in metadata.items():
        if not key.startswith(METRIC_PREFIX) or not key[len(METRIC_PREFIX):]:
            continue
        try:
            value = float(raw)
        except (TypeError, ValueError):
            continue
        if math.isfinite(value):
            out[key[len(METRIC_PREFIX):]] = value
    return out


class CalibrationError(ValueError):
    """A package's calibration reference or document is malformed: the message names the key or field."""


class CalibrationUnavailable(RuntimeError):
    """The calibration document could not be fetched (retry later; never read as 'no calibration')."""


def read_calibration(metadata: Mapping[str, str], fetch: Callable[[str], bytes] | None = None) -> Calibration | None:
    """The calibration registered with a model package, from its CustomerMetadataProperties.

    None when the package records none (not a binary classifier, or registered before calibration was
    added): CBPE then has nothing to estimate from. `fetch(uri) -> bytes` reads the document (default:
    S3 through kanari.awsclient). Raises CalibrationError when the reference, the digest or the
    document is malformed, CalibrationUnavailable when the document cannot be fetched.
    """
    from kanari.judging.cbpe import Calibration

    uri = metadata.get(CALIBRATION_URI)
    digest = metadata.get(CALIBRATION_SHA256)
    if uri is None and digest is None:
        return None
    if not uri or not digest:
        missing = CALIBRATION_URI if not uri else CALIBRATION_SHA256
        raise CalibrationError(f"{missing}: missing or empty (a calibration needs both {CALIBRATION_URI} and "
                               f"{CALIBRATION_SHA256})")
    parsed = urllib.parse.urlparse(uri)
    if not ((parsed.scheme == "s3" and parsed.netloc and parsed.path.strip("/"))
            or (parsed.scheme == "file" and parsed.path.strip("/"))):
        raise CalibrationError(f"{CALIBRATION_URI}: {uri!r} is not an s3://bucket/key URI (or file:///path, for "
                               "installs without S3)")
    if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
        raise CalibrationError(f"{CALIBRATION_SHA256}: {digest!r} is not a lowercase hex SHA-256")
    try:
        body = (fetch or _fetch)(uri)
    except CalibrationError:
        raise
    except Exception as exc:  # noqa: BLE001 (any client failure is "not available now", reported, not None)
        raise CalibrationUnavailable(f"{CALIBRATION_URI} {uri}: cannot be read ({type(exc).__name__})") from exc
    if len(body) > MAX_CALIBRATION_BYTES:
        raise CalibrationError(f"{CALIBRATION_URI} {uri}: larger than {MAX_CALIBRATION_BYTES} bytes")
    if hashlib.sha256(body).hexdigest() != digest:
        raise CalibrationError(f"{CALIBRATION_URI} {uri}: its content does not match {CALIBRATION_SHA256} "
                               "(changed after registration)")
    try:
        doc = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CalibrationError(f"{CALIBRATION_URI} {uri}: not JSON ({exc})") from None
    if not isinstance(doc, dict):
        raise CalibrationError(f"{CALIBRATION_URI} {uri}: not a JSON object")
    try:
        return Calibration.from_dict(doc)
    except (ValueError, OverflowError) as exc:  # OverflowError: an integer too large for a float
        raise CalibrationError(f"{CALIBRATION_URI} {uri}: {exc}") from None


def _fetch(uri: str) -> bytes:
    """The document's bytes, read no further than one byte past the bound (the bound is checked by the caller)."""
    parsed = urllib.parse.urlparse(uri)
    if parsed.scheme == "file":
        with open(urllib.parse.unquote(parsed.path), "rb") as f:
            return f.read(MAX_CALIBRATION_BYTES + 1)
    from kanari import awsclient

    body = awsclient.client("s3").get_object(Bucket=parsed.netloc, Key=parsed.path.lstrip("/"))["Body"]
    return bytes(body.read(MAX_CALIBRATION_BYTES + 1))
