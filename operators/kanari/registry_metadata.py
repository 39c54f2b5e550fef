"""The keys of a model package's CustomerMetadataProperties in the SageMaker Model Registry, spelled once.

The pipeline's register step writes them, the controller reads the lineage and the baseline back into
status, `kanari models list` and the demo show them.
"""

from __future__ import annotations

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
# Where the isotonic calibration fitted on the holdout lives (calibration.json, kanari.judging.cbpe): CBPE
# estimates need it and report "unavailable" without it.
CALIBRATION_URI = "kanari:calibration-uri"
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
