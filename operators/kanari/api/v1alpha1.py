"""The ModelDeployment API, kanari.dev/v1alpha1.

These pydantic models are the single source of truth: the CRD's openAPIV3Schema (with its CEL rules)
is generated from them by `kanari.api.crd`, and the controller parses every object through them, so
the cluster and the controller can never disagree about what a valid spec is. Field names are the
camelCase names users write in YAML.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from typing import Annotated, Any, Literal, Self, get_args

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    JsonValue,
    ValidationError,
    model_validator,
)

from kanari.api.duration import Duration, parse_duration

GROUP = "kanari.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
KIND = "ModelDeployment"
PLURAL = "modeldeployments"
SINGULAR = "modeldeployment"
SHORT_NAMES = ["md"]

# Annotation through which operators act on a rollout without editing the spec (GitOps-safe).
# Value: "<action>" or "<action>/<nonce>"; the controller records the last value it consumed in status.
ACTION_ANNOTATION = f"{GROUP}/action"
ACTIONS = ("promote", "promote-full", "abort", "pause", "resume", "retry")

MODEL_PACKAGE_ARN = r"^arn:aws[a-z-]*:sagemaker:[a-z0-9-]+:[0-9]{12}:model-package/[A-Za-z0-9-]{1,63}(/[0-9]+)?$"
STORAGE_URI = r"^(s3|gs|pvc|oci|hf|https?|file)://.+"

Weight = Annotated[int, Field(ge=0, le=100)]


def _rule(rule: str, message: str, field_path: str | None = None) -> dict[str, JsonValue]:
    out: dict[str, JsonValue] = {"rule": rule, "message": message}
    if field_path:
        out["fieldPath"] = field_path
    return out


class _Model(BaseModel):
    # Unknown fields are errors: a typo in a GitOps repo must not silently become a default.
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


# ---------------------------------------------------------------------------------------------- model
ModelFormat = Literal[
    "pytorch-neuronx",  # torch-neuronx traced model, served on Inferentia by Kanari's Neuron runtime
    "huggingface-neuronx",  # optimum-neuron / transformers-neuronx model on Inferentia
    "pytorch",
    "huggingface",
    "sklearn",
    "xgboost",
    "lightgbm",
    "onnx",
    "tensorflow",
]


class ModelSource(_Model):
    """Which model to serve: a SageMaker Model Registry package, or a plain storage URI."""

    modelPackageArn: str | None = Field(
        default=None,
        pattern=MODEL_PACKAGE_ARN,
        description="SageMaker model package (versioned). Resolved to its S3 artifact and image through the registry.",
    )
    storageUri: str | None = Field(default=None, pattern=STORAGE_URI, description="Model artifact location (s3://...).")
    format: ModelFormat = Field(default="pytorch-neuronx", description="Model format; the serving runtime is chosen from it.")
    runtime: str | None = Field(
        default=None,
        pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$",
        max_length=63,
        description="Explicit ServingRuntime name; by default chosen from format and accelerator.",
    )
    requireApproval: bool = Field(
        default=True, description="Serve a model package only when its registry status is Approved."
    )
    version: str | None = Field(
        default=None, max_length=63, description="Display label for this model version (default: package version)."
    )

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "x-kubernetes-validations": [
                _rule(
                    "has(self.modelPackageArn) != has(self.storageUri)",
                    "exactly one of modelPackageArn and storageUri must be set",
                )
            ]
        },
    )

    @model_validator(mode="after")
    def _one_source(self) -> ModelSource:
        if (self.modelPackageArn is None) == (self.storageUri is None):
            raise ValueError("modelPackageArn: exactly one of modelPackageArn and storageUri must be set")
        return self

    def display_version(self) -> str:
        if self.version:
            return self.version
        if self.modelPackageArn:
            name, _, ver = self.modelPackageArn.split("model-package/", 1)[1].partition("/")
            return f"{name}/{ver}" if ver else name
        assert self.storageUri
        parts = [p for p in self.storageUri.split("://", 1)[-1].split("/") if p]
        # s3://bucket/fraud/v3/model.tar.gz is version v3: the file name says nothing about the version.
        if len(parts) > 2 and "." in parts[-1]:
            parts = parts[:-1]
        return parts[-1][:63]


# -------------------------------------------------------------------------------------------- serving
class AutoscalingSpec(_Model):
    """Scale replicas on NeuronCore utilisation (neuron-monitor) instead of request concurrency.

    Rendered as KServe's own predictor `autoScaling` with an External Prometheus metric, scaled by KEDA
    (annotation serving.kserve.io/autoscalerClass: keda): RawDeployment only. Serverless revisions are
    scaled by Knative's autoscaler, which knows concurrency and requests per second, not NeuronCores.
    """

    neuronCoreUtilization: float = Field(
        gt=0, le=1, description="Target average utilisation of a replica's NeuronCores (0..1], e.g. 0.7."
    )
    prometheusUrl: str | None = Field(
        default=None, pattern=r"^https?://.+",
        description="Prometheus KEDA queries; default: the operator's (KANARI_PROMETHEUS_URL).",
    )


class ServingSpec(_Model):
    """Where and how the model runs."""

    accelerator: Literal["inferentia2", "gpu", "cpu"] = "inferentia2"
    instanceType: str | None = Field(
        default=None,
        pattern=r"^[a-z][a-z0-9-]*\.[a-z0-9]+$",
        description="EC2 instance type to select nodes by (node.kubernetes.io/instance-type), e.g. inf2.xlarge.",
    )
    neuronCores: int | None = Field(
        default=None, ge=1, le=192, description="NeuronCores per replica (aws.amazon.com/neuroncore)."
    )
    neuronDevices: int | None = Field(
        default=None, ge=1, le=12, description="Whole Neuron devices per replica (aws.amazon.com/neuron)."
    )
    gpus: int | None = Field(default=None, ge=1, le=8, description="nvidia.com/gpu per replica.")
    cpu: str = Field(default="2", pattern=r"^[0-9]+(\.[0-9]+)?m?$")
    memory: str = Field(default="8Gi", pattern=r"^[0-9]+(\.[0-9]+)?(Ki|Mi|Gi|Ti|k|M|G|T)?$")
    minReplicas: int = Field(default=1, ge=0, le=1000)
    maxReplicas: int = Field(default=1, ge=1, le=1000)
    deploymentMode: Literal["Serverless", "RawDeployment"] = "Serverless"
    schedulerName: str | None = Field(
        default=None, description="Pod scheduler, e.g. my-scheduler for the Neuron scheduler extension."
    )
    serviceAccountName: str | None = Field(default=None, description="Predictor service account (IRSA for S3 reads).")
    nodeSelector: dict[str, str] = Field(default_factory=dict, description="Extra node labels to select.")
    capacityPolicy: Literal["Surge", "Replace"] = Field(
        default="Surge",
        description=(
            "Where a canary's NeuronCores come from. Surge: free capacity, the stable fleet stays whole. "
            "Replace (RawDeployment): stable replicas are given up as the canary grows, never below capacityFloor."
        ),
    )
    autoscaling: AutoscalingSpec | None = Field(
        default=None, description="Scale on NeuronCore utilisation (RawDeployment on inferentia2)."
    )
    capacityFloor: int | None = Field(
        default=None, ge=0, le=1000,
        description="Replicas the traffic needs (Replace never serves with fewer); default: the running stable fleet.",
    )

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "x-kubernetes-validations": [
                _rule("self.maxReplicas >= self.minReplicas", "maxReplicas must be >= minReplicas", ".maxReplicas"),
                _rule(
                    "!has(self.autoscaling) || (self.deploymentMode == 'RawDeployment' && self.accelerator == 'inferentia2')",
                    "autoscaling on NeuronCore utilisation needs deploymentMode RawDeployment and accelerator inferentia2",
                    ".autoscaling",
                ),
                _rule(
                    "self.capacityPolicy != 'Replace' || self.deploymentMode == 'RawDeployment'",
                    "capacityPolicy Replace needs deploymentMode RawDeployment (Knative sizes Serverless revisions)",
                    ".capacityPolicy",
                ),
                _rule(
                    "!(has(self.neuronCores) && has(self.neuronDevices))",
                    "set neuronCores or neuronDevices, not both",
                ),
                _rule(
                    "self.accelerator == 'inferentia2' || (!has(self.neuronCores) && !has(self.neuronDevices))",
                    "neuronCores/neuronDevices need accelerator inferentia2",
                ),
                _rule("self.accelerator == 'gpu' || !has(self.gpus)", "gpus needs accelerator gpu", ".gpus"),
                _rule(
                    "self.accelerator != 'inferentia2' || !has(self.instanceType) || self.instanceType.startsWith('inf2.')",
                    "instanceType must be an inf2 type on accelerator inferentia2",
                    ".instanceType",
                ),
            ]
        },
    )

    @model_validator(mode="after")
    def _consistent(self) -> ServingSpec:
        if self.maxReplicas < self.minReplicas:
            raise ValueError(f"maxReplicas: {self.maxReplicas} must be >= minReplicas ({self.minReplicas})")
        if self.neuronCores is not None and self.neuronDevices is not None:
            raise ValueError("neuronDevices: set neuronCores or neuronDevices, not both")
        if self.accelerator != "inferentia2" and (self.neuronCores is not None or self.neuronDevices is not None):
            field = "neuronCores" if self.neuronCores is not None else "neuronDevices"
            raise ValueError(f"{field}: needs accelerator inferentia2, not {self.accelerator}")
        if self.accelerator != "gpu" and self.gpus is not None:
            raise ValueError(f"gpus: needs accelerator gpu, not {self.accelerator}")
        if self.accelerator == "inferentia2" and self.instanceType and not self.instanceType.startswith("inf2."):
            raise ValueError(f"instanceType: {self.instanceType} is not an inf2 type (accelerator inferentia2)")
        if self.autoscaling is not None and (self.deploymentMode != "RawDeployment" or self.accelerator != "inferentia2"):
            raise ValueError(
                "autoscaling: NeuronCore utilisation scaling needs deploymentMode RawDeployment and accelerator "
                "inferentia2 (Knative scales Serverless revisions on concurrency)"
            )
        if self.capacityPolicy == "Replace" and self.deploymentMode != "RawDeployment":
            raise ValueError(
                "capacityPolicy: Replace needs deploymentMode RawDeployment (Knative sizes Serverless revisions)"
            )
        return self


# -------------------------------------------------------------------------------------------- rollout
class Pause(_Model):
    duration: Duration | None = Field(default=None, description="How long to pause; absent: until resumed.")


class StepAnalysis(_Model):
    """Run the rollout's analysis metrics at this step (one AnalysisRun) before moving on."""

    count: int | None = Field(
        default=None, ge=1, le=1000, description="Judged measurements per metric (default: metric or analysis count)."
    )


class CanaryStep(_Model):
    setWeight: Weight | None = None
    pause: Pause | None = None
    analysis: StepAnalysis | None = None

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "x-kubernetes-validations": [
                _rule(
                    "(has(self.setWeight) ? 1 : 0) + (has(self.pause) ? 1 : 0) + (has(self.analysis) ? 1 : 0) == 1",
                    "each step has exactly one of setWeight, pause, analysis",
                )
            ]
        },
    )

    @model_validator(mode="after")
    def _one_kind(self) -> CanaryStep:
        kinds = [k for k in ("setWeight", "pause", "analysis") if getattr(self, k) is not None]
        if len(kinds) != 1:
            raise ValueError(f"each step has exactly one of setWeight, pause, analysis (got {kinds or 'none'})")
        return self


class LinearSpec(_Model):
    stepWeight: int = Field(default=10, ge=1, le=100)
    maxWeight: Weight = 100
    interval: Duration = "1m"

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "x-kubernetes-validations": [
                _rule("self.stepWeight <= self.maxWeight", "stepWeight must be <= maxWeight", ".stepWeight")
            ]
        },
    )

    @model_validator(mode="after")
    def _bounded(self) -> LinearSpec:
        if self.stepWeight > self.maxWeight:
            raise ValueError(f"stepWeight: {self.stepWeight} must be <= maxWeight ({self.maxWeight})")
        return self


class PreviewTrafficSpec(_Model):
    """Traffic for a BlueGreen preview, which has no user traffic at 0%: the drift monitor replays the stable
    model's recently logged requests to the preview's URL, so the preview's analysis has samples."""

    replay: bool = Field(default=True, description="Replay recently logged stable requests to the preview "
                                                   "(needs monitoring.enabled and Serverless mode).")
    ratePerSecond: float = Field(default=5.0, gt=0, le=50, description="Replayed requests per second, at most.")


class BlueGreenSpec(_Model):
    previewTraffic: PreviewTrafficSpec = Field(default_factory=PreviewTrafficSpec,
                                               description="What feeds the preview while it is analysed.")
    prePromotionAnalysis: bool = Field(default=True, description="Analyse the preview before switching traffic.")
    previewDuration: Duration = Field(default="5m", description="How long the preview is analysed.")
    bakeDuration: Duration = Field(default="10m", description="How long the old version stays warm after the switch.")
    autoPromote: bool = Field(default=True, description="Switch without a manual promote once the preview passes.")


class ThresholdRange(_Model):
    min: float | None = None
    max: float | None = None

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "x-kubernetes-validations": [
                _rule("has(self.min) || has(self.max)", "thresholdRange needs min or max"),
                _rule("!has(self.min) || !has(self.max) || self.min <= self.max", "min must be <= max", ".min"),
            ]
        },
    )

    @model_validator(mode="after")
    def _bounds(self) -> ThresholdRange:
        if self.min is None and self.max is None:
            raise ValueError("needs min or max")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"min: {self.min} is above max ({self.max})")
        return self


TemplateName = Literal[
    "request-success-rate",
    "request-latency-p99",
    "request-rate",
    "canary-vs-stable-psi",
    "prediction-drift",
    "cost-per-1k-inferences",  # USD per 1,000 inferences (Neuron: held NeuronCore-seconds x price / requests)
    "cost-per-1k-regression",  # percent the canary's cost per 1,000 is above the stable's
    "cold-start-seconds",  # pod scheduled -> first successful inference, worst pod of the revision
    "estimated-f1-drop",  # the canary package's registered F1 less the canary's CBPE estimate of it
    "estimated-roc-auc-drop",  # the same for ROC-AUC
]
BUILTIN_TEMPLATES: tuple[str, ...] = get_args(TemplateName)


class JudgeSpec(_Model):
    """Judge the canary against the stable version over the same window by a statistical test
    (kanari.judging): no fixed threshold, a tolerated degradation and a false-rollback rate instead."""

    kind: Literal["errorRate", "latency"] = Field(
        description="errorRate: share of failed requests; latency: the request latency histogram."
    )
    maxDegradation: float = Field(
        gt=0, lt=1,
        description="Tolerated degradation: errorRate, added error rate (0.01 = one point); latency, relative "
        "slowdown of the latency distribution (0.1 = every quantile up to 10% slower). Smaller needs more traffic.",
    )
    alpha: float = Field(
        default=0.05, gt=0, le=0.2,
        description="Probability of rolling back a canary that is no worse, over all looks of the analysis step.",
    )


class MetricSpec(_Model):
    """One measurement: a built-in template or custom PromQL judged by a threshold or a condition, or a
    statistical canary-vs-stable judge."""

    name: str = Field(pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", max_length=63)
    template: TemplateName | None = Field(default=None, description="Built-in query.")
    query: str | None = Field(
        default=None,
        description="Custom PromQL; variables: {{namespace}} {{name}} {{canaryRevision}} {{stableRevision}} {{interval}}.",
    )
    thresholdRange: ThresholdRange | None = None
    successCondition: str | None = Field(
        default=None,
        pattern=r"^\s*result\s*(<=|>=|<|>|==|!=)\s*-?[0-9.eE+-]+(\s*(&&|and)\s*result\s*(<=|>=|<|>|==|!=)\s*-?[0-9.eE+-]+)*\s*$",
        description="Alternative to thresholdRange, e.g. 'result >= 0.99 && result <= 1'.",
    )
    failureCondition: str | None = Field(
        default=None,
        pattern=r"^\s*result\s*(<=|>=|<|>|==|!=)\s*-?[0-9.eE+-]+(\s*(&&|and)\s*result\s*(<=|>=|<|>|==|!=)\s*-?[0-9.eE+-]+)*\s*$",
        description=(
            "A measurement meeting it is Failed. With it, a value meeting neither the success condition "
            "(thresholdRange/successCondition) nor this one is Inconclusive: a band between pass and fail."
        ),
    )
    sampleQuery: str | None = Field(
        default=None, description="PromQL counting the samples behind a custom query (for minSampleCount)."
    )
    minSampleCount: int | None = Field(
        default=None, ge=0,
        description="Overrides analysis.minSampleCount; 0 opts this metric out of the sample check (stated in status).",
    )
    judge: JudgeSpec | None = Field(default=None, description="Statistical canary-vs-stable judge (no threshold).")
    interval: Duration | None = Field(default=None, description="Overrides analysis.interval for this metric.")
    initialDelay: Duration | None = Field(
        default=None, description="Wait before the first measurement of a run (default: one interval)."
    )
    count: int | None = Field(default=None, ge=1, le=1000, description="Judged measurements per run.")
    failureLimit: int | None = Field(default=None, ge=0)
    inconclusiveLimit: int | None = Field(default=None, ge=0)
    consecutiveErrorLimit: int | None = Field(default=None, ge=0)
    dryRun: bool = Field(default=False, description="Measured and shown, never gating the rollout.")

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "x-kubernetes-validations": [
                _rule(
                    "(has(self.template) ? 1 : 0) + (has(self.query) ? 1 : 0) + (has(self.judge) ? 1 : 0) == 1",
                    "exactly one of template, query and judge must be set",
                ),
                _rule(
                    "has(self.judge) != (has(self.thresholdRange) || has(self.successCondition))",
                    "a metric needs thresholdRange or successCondition, except a judge metric, which takes neither",
                ),
            ]
        },
    )

    @model_validator(mode="after")
    def _judged(self) -> MetricSpec:
        if sum(x is not None for x in (self.template, self.query, self.judge)) != 1:
            raise ValueError(f"template: metric {self.name} needs exactly one of template, query and judge")
        judged = self.thresholdRange is not None or self.successCondition is not None
        if self.judge is not None and judged:
            raise ValueError(f"judge: metric {self.name} is judged statistically; remove thresholdRange/successCondition")
        if self.judge is None and not judged:
            raise ValueError(f"thresholdRange: metric {self.name} needs thresholdRange or successCondition")
        return self


class BackgroundAnalysis(_Model):
    """Measure the metrics for the whole rollout, pauses included, not only at analysis steps."""

    startingStep: int = Field(default=0, ge=0, description="Step index from which the background run measures.")


class AnalysisSpec(_Model):
    interval: Duration = "1m"
    count: int = Field(default=1, ge=1, le=1000, description="Judged (Successful or Failed) measurements per run.")
    failureLimit: int = Field(default=0, ge=0, description="Failed measurements tolerated; one more rolls back.")
    inconclusiveLimit: int = Field(
        default=2, ge=0, description="Inconclusive measurements tolerated; one more pauses with the canary at 0%."
    )
    consecutiveErrorLimit: int = Field(
        default=4, ge=0,
        description="Errors in a row tolerated (Prometheus down, query rejected); one more rolls back.",
    )
    minSampleCount: int = Field(default=100, ge=0, description="Fewer requests in the window: inconclusive, never a pass.")
    measurementRetention: int = Field(default=10, ge=1, le=100, description="Measurements kept per metric in status.")
    background: BackgroundAnalysis | None = Field(
        default=None, description="Also measure continuously through the whole rollout (one background run)."
    )
    metrics: list[MetricSpec] = Field(default=[], max_length=20)

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "x-kubernetes-validations": [
                _rule(
                    "self.metrics.all(m, self.metrics.filter(n, n.name == m.name).size() == 1)",
                    "metric names must be unique",
                    ".metrics",
                ),
                _rule(
                    "self.metrics.all(m, !has(m.query) || has(m.sampleQuery) || "
                    "(has(m.minSampleCount) ? m.minSampleCount == 0 : self.minSampleCount == 0))",
                    "a custom query needs a sampleQuery, or minSampleCount: 0 to opt out of the sample check",
                    ".metrics",
                ),
            ]
        },
    )

    @model_validator(mode="after")
    def _unique(self) -> AnalysisSpec:
        names = [m.name for m in self.metrics]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"metrics: names must be unique: {', '.join(dupes)}")
        for i, m in enumerate(self.metrics):
            if m.query is not None and m.sampleQuery is None and self.min_samples(m) > 0:
                raise ValueError(
                    f"metrics[{i}].sampleQuery: metric {m.name} has a custom query but no sampleQuery, so "
                    "minSampleCount cannot be checked; add a sampleQuery counting the samples behind it, or set "
                    "minSampleCount: 0 on the metric to opt out"
                )
        return self

    def min_samples(self, metric: MetricSpec) -> int:
        return self.minSampleCount if metric.minSampleCount is None else metric.minSampleCount


class RollbackWindowSpec(_Model):
    """The retro-verdict (kanari.judging.retro): for `duration` after a promotion, the promoted version's realised
    quality from delayed labels (kanari_realised_quality) is checked against the test metric registered with its
    model package; a confident breach rolls back to the previous stable version automatically."""

    duration: Duration = Field(description="How long after a promotion the realised quality can roll it back.")
    metric: Literal["recall", "precision"] = Field(
        default="recall", description="A proportion (the Wilson bound needs one): recall or precision.")
    tolerance: float = Field(default=0.05, ge=0, le=1, description="Tolerated drop below the registered figure.")
    alpha: float = Field(default=0.01, gt=0, lt=0.5, description="Chance per check of rolling back a version that "
                                                                  "meets registered - tolerance.")
    minLabels: int = Field(default=50, ge=1, le=1_000_000, description="Fewer labelled rows than this: no verdict.")
    interval: Duration = Field(default="1m", description="How often the realised figure is read.")


class WarmupSpec(_Model):
    """The warm-up gate: the canary takes traffic only after every one of its pods has answered warm-up
    requests, within a budget. Inputs, first found: `samples`, the drift baseline's samples.jsonl, the drift
    monitor's recently logged requests."""

    requests: int = Field(
        default=3, ge=1, le=50, description="Successful warm-up answers each canary pod must give before it takes traffic."
    )
    timeoutSeconds: int = Field(
        default=120, ge=1, le=1800,
        description="Per warm-up request (a Neuron model's first inference can take minutes); slower is a failed answer.",
    )
    budgetSeconds: int = Field(
        default=1800, ge=10, le=21600,
        description="From the canary's creation to every pod warm (scheduling, model load, Neuron compile, the "
        "warm-up answers). Exceeded: the rollout is rolled back naming the figure.",
    )
    modelName: str | None = Field(
        default=None, pattern=r"^[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$", max_length=128,
        description="Model name in the request path (/v1/models/<name>:predict); default: the ModelDeployment's "
        "name, KServe's own default. Runtimes that name models themselves (TorchServe's model store) need it.",
    )
    samples: list[dict[str, JsonValue]] = Field(
        default=[], max_length=20,
        description="Inline request bodies (KServe v1 `instances` or v2 `inputs`), used before any other source.",
        # Any JSON object: a structural schema says so with preserve-unknown-fields, not an untyped {}.
        json_schema_extra={"items": {"type": "object", "x-kubernetes-preserve-unknown-fields": True}},
    )

    @model_validator(mode="after")
    def _request_bodies(self) -> WarmupSpec:
        for i, body in enumerate(self.samples):
            if not isinstance(body.get("instances"), list) and not isinstance(body.get("inputs"), list):
                raise ValueError(f"samples[{i}]: a request body needs an `instances` list (KServe v1) or an "
                                 "`inputs` list (v2)")
            if len(json.dumps(body)) > 65536:
                raise ValueError(f"samples[{i}]: larger than 64 KiB; warm-up needs a small request")
        return self


class RolloutSpec(_Model):
    strategy: Literal["Canary", "Linear", "BlueGreen", "AllAtOnce"] = "Canary"
    steps: list[CanaryStep] = Field(default=[], max_length=50, description="Canary steps, in order.")
    linear: LinearSpec | None = None
    blueGreen: BlueGreenSpec | None = None
    analysis: AnalysisSpec | None = None
    progressDeadline: Duration = Field(default="30m", description="A step making no progress this long aborts.")
    rollbackWindow: RollbackWindowSpec | None = None
    warmup: WarmupSpec | None = Field(
        default=None, description="Hold the canary at 0% until its pods answer warm-up requests (cold start gate)."
    )

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "x-kubernetes-validations": [
                _rule(
                    "self.steps.filter(s, has(s.setWeight)).map(s, s.setWeight).isSorted()",
                    "setWeight must not decrease from one step to the next",
                    ".steps",
                ),
                _rule(
                    "!self.steps.exists(s, has(s.analysis)) || (has(self.analysis) && size(self.analysis.metrics) > 0)",
                    "an analysis step needs at least one metric in analysis.metrics",
                    ".analysis",
                ),
                _rule(
                    "self.strategy == 'Canary' || size(self.steps) == 0",
                    "steps are only for strategy Canary",
                    ".steps",
                ),
                _rule(
                    "self.strategy == 'Linear' || !has(self.linear)",
                    "linear is only for strategy Linear",
                    ".linear",
                ),
                _rule(
                    "self.strategy == 'BlueGreen' || !has(self.blueGreen)",
                    "blueGreen is only for strategy BlueGreen",
                    ".blueGreen",
                ),
            ]
        },
    )

    @model_validator(mode="after")
    def _coherent(self) -> RolloutSpec:
        if self.strategy != "Canary" and self.steps:
            raise ValueError(f"steps: only for strategy Canary, not {self.strategy}")
        if self.strategy != "Linear" and self.linear is not None:
            raise ValueError("linear: only for strategy Linear")
        if self.strategy != "BlueGreen" and self.blueGreen is not None:
            raise ValueError("blueGreen: only for strategy BlueGreen")
        weights = [s.setWeight for s in self.steps if s.setWeight is not None]
        for a, b in zip(weights, weights[1:], strict=False):
            if b < a:
                raise ValueError(f"steps: setWeight must not decrease ({b} after {a})")
        if any(s.analysis is not None for s in self.steps) and not (self.analysis and self.analysis.metrics):
            raise ValueError("analysis.metrics: an analysis step needs at least one metric")
        return self

    def effective_steps(self) -> list[CanaryStep]:
        """The steps the engine walks, with strategies other than Canary expressed as steps."""
        analysis = [CanaryStep(analysis=StepAnalysis())] if self.analysis and self.analysis.metrics else []
        if self.strategy == "AllAtOnce":
            return [CanaryStep(setWeight=100)]
        if self.strategy == "Canary":
            return list(self.steps) or [CanaryStep(setWeight=100)]
        if self.strategy == "Linear":
            lin = self.linear or LinearSpec()
            steps: list[CanaryStep] = []
            w = 0
            while w < lin.maxWeight:
                w = min(w + lin.stepWeight, lin.maxWeight)
                steps.append(CanaryStep(setWeight=w))
                steps.extend(analysis or [CanaryStep(pause=Pause(duration=lin.interval))])
            return steps
        bg = self.blueGreen or BlueGreenSpec()
        # Blue-green: the preview gets no user traffic (weight 0) for previewDuration, then takes all of it.
        # With analysis, the preview is measured once an interval for that long; without, it is a timed pause.
        pre: list[CanaryStep] = [CanaryStep(setWeight=0)]
        if bg.prePromotionAnalysis and analysis and self.analysis is not None:
            count = max(1, math.ceil(parse_duration(bg.previewDuration) / parse_duration(self.analysis.interval)))
            pre.append(CanaryStep(analysis=StepAnalysis(count=min(count, 1000))))
        else:
            pre.append(CanaryStep(pause=Pause(duration=bg.previewDuration)))
        if not bg.autoPromote:
            pre.append(CanaryStep(pause=Pause()))
        return [*pre, CanaryStep(setWeight=100)]


# ----------------------------------------------------------------------------------------- monitoring
class DriftSpec(_Model):
    method: Literal["psi", "linf", "js", "wasserstein"] = "psi"
    warn: float = Field(default=0.1, gt=0)
    critical: float = Field(default=0.25, gt=0)
    for_: Duration = Field(default="15m", alias="for", description="How long drift must hold before the alert fires.")
    windowSize: int = Field(default=1000, ge=10, le=1_000_000, description="Samples in the live sliding window.")

    model_config = ConfigDict(
        extra="forbid",
        populate_by_name=True,
        json_schema_extra={
            "x-kubernetes-validations": [_rule("self.critical >= self.warn", "critical must be >= warn", ".critical")]
        },
    )

    @model_validator(mode="after")
    def _order(self) -> DriftSpec:
        if self.critical < self.warn:
            raise ValueError(f"critical: {self.critical} must be >= warn ({self.warn})")
        return self


class RetrainSpec(_Model):
    pipeline: str = Field(min_length=1, max_length=128, description="Training pipeline to run on a drift alert.")
    cooldown: Duration = Field(default="24h", description="Minimum time between two retraining runs.")
    maxPerDay: int = Field(default=2, ge=1, le=100)
    parameters: dict[str, str] = Field(default_factory=dict, description="Extra pipeline parameters.")


class GroundTruthSpec(_Model):
    """Delayed labels for this model: the drift monitor joins them with the logged predictions by inference id
    (POST /v1/labels/<namespace>/<name> or the S3 label drop) and exports realised quality per revision."""

    task: Literal["binary", "regression"] = "binary"
    threshold: float = Field(default=0.5, ge=0, le=1, description="Binary: the score at or above which the "
                                                                   "model predicts the positive class.")
    ttl: Duration = Field(default="24h", description="How long a prediction waits for its label (and a label for "
                                                     "its prediction).")


class MonitoringSpec(_Model):
    enabled: bool = True
    baselineUri: str | None = Field(
        default=None,
        pattern=r"^(s3|file)://.+",
        description="Directory holding statistics.json/constraints.json; default: next to the model artifact.",
    )
    loggerUrl: str | None = Field(
        default=None, pattern=r"^https?://.+", description="Payload logger sink; default: the Kanari drift monitor."
    )
    logMode: Literal["all", "request", "response"] = "all"
    drift: DriftSpec = Field(default_factory=DriftSpec)
    retrain: RetrainSpec | None = None
    groundTruth: GroundTruthSpec | None = None


# ---------------------------------------------------------------------------------------------- spec
class ModelDeploymentSpec(_Model):
    model: ModelSource
    serving: ServingSpec = Field(default_factory=ServingSpec)
    rollout: RolloutSpec = Field(default_factory=RolloutSpec)
    monitoring: MonitoringSpec | None = None
    suspend: bool = Field(default=False, description="Stop reconciling (the InferenceService is left as it is).")

    def rollout_revision(self) -> str:
        """Identity of what a rollout delivers: the model and how it is served, not its replica counts.

        A change of this hash starts a rollout; scaling alone is applied in place.
        """
        # How capacity is found for a rollout is not what the rollout delivers.
        serving = self.serving.model_dump(
            mode="json", exclude={"minReplicas", "maxReplicas", "capacityPolicy", "capacityFloor", "autoscaling"}
        )
        payload = {"model": self.model.model_dump(mode="json"), "serving": serving}
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:10]


# -------------------------------------------------------------------------------------------- status
Phase = Literal["Pending", "Progressing", "Paused", "Promoting", "Succeeded", "RolledBack", "Failed", "Degraded"]


class Condition(BaseModel):
    model_config = ConfigDict(extra="ignore")
    type: str
    status: Literal["True", "False", "Unknown"]
    reason: str = Field(pattern=r"^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$")
    message: str = ""
    lastTransitionTime: str
    observedGeneration: int | None = None


class ModelRef(BaseModel):
    """A model version as served: what the rollout engine compares and the InferenceService runs."""

    model_config = ConfigDict(extra="ignore")
    revision: str = Field(description="Rollout revision (hash of model and serving spec).")
    version: str = ""
    storageUri: str = ""
    modelPackageArn: str | None = None
    image: str | None = None
    format: str = ""
    # The isotonic calibration the pipeline registered with the package (kanari:calibration-uri): CBPE needs it.
    calibrationUri: str | None = None
    # The SHA-256 of the calibration's bytes as registered (kanari:calibration-sha256): it travels with the URI
    # so the drift monitor refuses a file changed after registration.
    calibrationSha256: str | None = None
    # The test metrics the pipeline registered with the package (kanari:metric.<name>): what the realised-quality
    # alert and the CBPE templates compare this version with, kept with the version (a canary's stable has no
    # package fetched).
    registeredMetrics: dict[str, float] = Field(default_factory=dict)

    def registered(self, metric: str) -> float | None:
        """The figure this version registered for `metric`, or None when it registered none that is a proportion:
        the one reading of it for the quality alert, the retro-verdict and the CBPE templates, none of which may
        compare with a made-up number."""
        value = self.registeredMetrics.get(metric)
        return value if value is not None and 0 <= value <= 1 else None

    @property
    def monitor_revision(self) -> str:
        """The `revision` label the drift monitor exports this model's series under."""
        return self.version or self.revision

    @property
    def label(self) -> str:
        """What a person calls this version: the registry's version, else the rollout revision."""
        return self.version or self.revision


Verdict = Literal["Successful", "Failed", "Inconclusive", "Error"]


def _finite_or_none(value: Any) -> Any:
    # JSON has no NaN or Infinity: the API server refuses a status holding one, and a page cannot draw one.
    return None if isinstance(value, float) and not math.isfinite(value) else value


Figure = Annotated[float | None, BeforeValidator(_finite_or_none)]


class MetricResult(BaseModel):
    """One measurement of one metric as the analysis produced it (what the engine is given)."""

    model_config = ConfigDict(extra="ignore")
    name: str
    value: Figure = None
    stableValue: Figure = None
    threshold: str = ""
    verdict: Verdict
    sampleCount: Figure = None
    query: str = ""
    message: str = ""
    at: str = ""


class Measurement(BaseModel):
    """One measurement as kept in an analysis run (Argo Rollouts' Measurement, with Kanari's figures)."""

    model_config = ConfigDict(extra="ignore")
    phase: Verdict
    value: Figure = None
    stableValue: Figure = None
    sampleCount: Figure = None
    threshold: str = ""
    query: str = ""
    message: str = ""
    startedAt: str = ""
    finishedAt: str = ""


class MetricRun(BaseModel):
    """One metric's counters and recent measurements within an analysis run."""

    model_config = ConfigDict(extra="ignore")
    name: str
    dryRun: bool = False
    count: int = 0
    successful: int = 0
    failed: int = 0
    inconclusive: int = 0
    error: int = 0
    consecutiveError: int = 0
    phase: str = "Pending"  # derived from the counters and limits
    measurements: list[Measurement] = Field(default_factory=list, max_length=100)


class AnalysisRun(BaseModel):
    """An analysis run of the current rollout: one per analysis step reached, plus "background"."""

    model_config = ConfigDict(extra="ignore")
    name: str
    revision: str
    step: int | None = None
    phase: str = "Pending"  # derived from its metrics
    message: str = ""
    startedAt: str = ""
    metrics: list[MetricRun] = Field(default_factory=list)


class PauseCondition(BaseModel):
    model_config = ConfigDict(extra="ignore")
    reason: str
    startTime: str
    message: str = ""


class RolloutState(BaseModel):
    """Bookkeeping the engine needs to resume after a restart (times and the last consumed action)."""

    model_config = ConfigDict(extra="ignore")
    revision: str | None = None
    startedAt: str | None = None
    stepStartedAt: str | None = None
    lastProgressAt: str | None = None
    lastAction: str | None = None
    bakeUntil: str | None = None
    deploying: bool = False  # a first deployment not yet seen serving (nothing to protect with a canary)
    stableReadyAt: str | None = None  # when the first deployment was seen serving
    deployFailed: str | None = None  # a first deployment that missed its progressDeadline (the message)
    # The steps this rollout walks (Argo Rollouts' currentStepHash): edited mid-rollout, they restart at step 0,
    # so a shorter list cannot end a rollout past the analysis it was in.
    stepsHash: str | None = None


class Lineage(BaseModel):
    model_config = ConfigDict(extra="ignore")
    modelPackageArn: str | None = None
    trainingJob: str | None = None
    pipelineRun: str | None = None
    datasetUri: str | None = None
    gitSha: str | None = None
    imageDigest: str | None = None
    datasetVersion: str | None = Field(default=None, description="Version of the training data (S3 object version or ETag).")
    # The drift alert that started the retraining run, when one did (structured, from the registry).
    driftAlert: str | None = Field(default=None, description="Alert name that triggered the retraining run.")
    driftAlertFingerprint: str | None = None
    driftAlertStartsAt: str | None = None


class RetrainRecord(BaseModel):
    model_config = ConfigDict(extra="ignore")
    at: str
    alert: str
    fingerprint: str = ""
    run: str = ""
    outcome: str = ""
    startsAt: str = ""  # the alert's startsAt: with fingerprint, what a redelivered alert is recognised by


class PreviewTrafficStatus(BaseModel):
    """What fed the BlueGreen preview (written by the drift monitor's replayer, which owns this field)."""

    model_config = ConfigDict(extra="ignore")
    source: Literal["replay"] = "replay"
    revision: str = Field(default="", description="The preview revision the requests went to.")
    ratePerSecond: float = 0.0
    sent: int = Field(default=0, description="Replayed requests the preview answered or refused.")
    errors: int = Field(default=0, description="Of them: a non-2xx answer, a timeout or no connection.")
    available: int = Field(default=0, description="Logged stable requests held to replay from.")
    startedAt: str | None = None
    updatedAt: str | None = None
    active: bool = Field(default=False, description="Replaying now (false: the preview ended, or nothing to send).")
    message: str = ""


class InferenceServiceRef(BaseModel):
    model_config = ConfigDict(extra="ignore")
    name: str = ""
    ready: bool = False
    health: str = ""
    url: str | None = None
    message: str = ""


class CapacityStatus(BaseModel):
    """The NeuronCore plan of the current rollout (kanari.capacity): facts the InferenceService is sized by."""

    model_config = ConfigDict(extra="ignore")
    revision: str = Field(description="Canary revision this plan is for; a plan for another revision is void.")
    canaryReplicas: int = 0
    reservedReplicas: int = Field(
        default=0, description="Canary replicas the rollout was admitted for (its peak, with Surge); others leave room."
    )
    stableReplicas: int | None = None
    coresPerReplica: int = 0
    neededCores: int = 0
    freeCores: int = 0
    limitCores: int | None = None
    pending: bool = False
    message: str = ""


class RevisionCost(BaseModel):
    """What a served revision costs (kanari.capacity.cost), measured over `window` by the controller."""

    model_config = ConfigDict(extra="ignore")
    revision: str
    role: Literal["stable", "canary"]
    costPer1kInferences: float | None = Field(default=None, description="USD per 1,000 inferences; none: not known.")
    neuronCoreSeconds: float | None = None
    requests: float | None = None
    window: str = ""
    measuredAt: str = ""
    message: str = ""


class RetroFacts(BaseModel):
    """What the retro-verdict needs after a promotion: what was promoted when, and what it replaced."""

    model_config = ConfigDict(extra="ignore")
    revision: str  # the promoted revision
    promotedAt: str
    previousStable: ModelRef | None = None


class WarmupPod(BaseModel):
    """One canary pod's warm-up, as observed."""

    name: str
    scheduledAt: str | None = None  # the pod's PodScheduled condition
    firstSuccessAt: str | None = None  # its first successful warm-up answer
    answered: int = 0  # successful warm-up answers
    failed: int = 0  # errors, timeouts, 5xx and unreadable answers: never counted as answered
    latencySeconds: float | None = None  # slowest successful answer
    lastError: str = ""


class WarmupStatus(BaseModel):
    """Facts of the warm-up gate for one canary revision (a record for another revision is void)."""

    revision: str
    # The revision as the analysis templates name it: Knative's revision name (Serverless), else `revision`.
    servingRevision: str = ""
    startedAt: str
    budgetSeconds: int = 0
    succeededAt: str | None = None
    failedAt: str | None = None
    answered: int = 0
    failed: int = 0
    latencySeconds: float | None = None  # slowest successful warm-up answer of any pod
    coldStartSeconds: float | None = None  # worst pod: scheduled -> first successful answer
    source: str = ""  # where the warm-up inputs came from
    message: str = ""
    pods: list[WarmupPod] = Field(default_factory=list, max_length=50)


class ModelDeploymentStatus(BaseModel):
    """Facts are stored; `phase` and `message` are derived from them last and never read to decide."""

    model_config = ConfigDict(extra="ignore")
    phase: Phase = "Pending"
    message: str = ""
    observedGeneration: int | None = None
    stableModel: ModelRef | None = None
    canaryModel: ModelRef | None = None
    canaryWeight: int = 0
    currentStep: int = 0
    pauseConditions: list[PauseCondition] = Field(default_factory=list)
    abortedRevision: str | None = None
    analysisRuns: list[AnalysisRun] = Field(default_factory=list, max_length=60)
    previewUrl: str | None = Field(default=None, description="Where a BlueGreen preview answers (KServe tag URL).")
    previewTraffic: PreviewTrafficStatus | None = Field(
        default=None, description="The traffic a BlueGreen preview was fed (the drift monitor's replay).")
    conditions: list[Condition] = Field(default_factory=list)
    rollout: RolloutState = Field(default_factory=RolloutState)
    retro: RetroFacts | None = None

    inferenceService: InferenceServiceRef | None = None
    lineage: Lineage | None = None
    retraining: list[RetrainRecord] = Field(default_factory=list, max_length=20)
    driftRule: str | None = Field(default=None, description="The PrometheusRule the controller owns for drift alerts.")
    qualityRule: str | None = Field(
        default=None, description="The PrometheusRule the controller owns for realised-quality alerts."
    )
    capacity: CapacityStatus | None = None
    cost: list[RevisionCost] = Field(default_factory=list, max_length=2)
    warmup: WarmupStatus | None = None

    @model_validator(mode="before")
    @classmethod
    def _from_v0(cls, data: Any) -> Any:
        """Read a status written before the rollout rework: its aborted revision and pause carry over (a
        rolled-back revision must not be retried, nor a paused rollout resumed, by an operator upgrade)."""
        if not isinstance(data, dict) or not isinstance(data.get("rollout"), dict):
            return data
        old = data["rollout"]
        if old.get("abortedRevision") and "abortedRevision" not in data:
            data = {**data, "abortedRevision": old["abortedRevision"]}
        if old.get("pausedReason") and "pauseConditions" not in data:
            since = old.get("stepStartedAt") or old.get("lastProgressAt") or "1970-01-01T00:00:00Z"
            data = {**data, "pauseConditions": [{"reason": old["pausedReason"], "startTime": since}]}
        return data

    @classmethod
    def lenient(cls, raw: Any) -> Self:
        """The status as stored, dropping only the fields that do not read (hand-edited, another writer, an older
        version), never the whole status: rebuilding it from nothing forgets the stable model, and the spec's
        model would then be deployed outright as if it were the first, skipping its canary."""
        if not isinstance(raw, dict):
            return cls()
        try:
            return cls.model_validate(raw)
        except ValidationError as exc:
            bad = {e["loc"][0] for e in exc.errors() if e.get("loc")}
            try:
                return cls.model_validate({k: v for k, v in raw.items() if k not in bad})
            except ValidationError:
                return cls()


# -------------------------------------------------------------------------------------- whole object
class ObjectMeta(BaseModel):
    model_config = ConfigDict(extra="allow")
    name: str = Field(pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", max_length=45)
    namespace: str = "default"
    uid: str | None = None
    generation: int | None = None
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)


class ModelDeployment(BaseModel):
    model_config = ConfigDict(extra="ignore")
    apiVersion: Literal["kanari.dev/v1alpha1"] = "kanari.dev/v1alpha1"
    kind: Literal["ModelDeployment"] = "ModelDeployment"
    metadata: ObjectMeta
    spec: ModelDeploymentSpec
    status: ModelDeploymentStatus = Field(default_factory=ModelDeploymentStatus)


class SpecError(ValueError):
    """A spec that cannot be served; `field` is the dotted path a user edits (e.g. spec.serving.maxReplicas)."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


def _loc_to_path(loc: tuple[Any, ...]) -> str:
    parts: list[str] = []
    for p in loc:
        if isinstance(p, int):
            parts[-1:] = [f"{parts[-1]}[{p}]"] if parts else [f"[{p}]"]
        elif isinstance(p, str) and not re.fullmatch(r"function-after\[.*\]|[a-z-]+\[.*\]", p):
            parts.append("for" if p == "for_" else p)
    return ".".join(parts)


def format_validation_error(exc: ValidationError, prefix: str = "") -> list[SpecError]:
    """pydantic errors as field-named messages, the way kubectl reports schema errors."""
    out = []
    for err in exc.errors():
        path = _loc_to_path(tuple(err["loc"]))
        path = ".".join(p for p in (prefix, path) if p)
        msg = err["msg"].removeprefix("Value error, ")
        # Cross-field validators name the field they blame as "field: message".
        m = re.match(r"^([A-Za-z][A-Za-z0-9_.\[\]]*): (.*)$", msg, re.S)
        if m and err["type"] == "value_error":
            path = ".".join(p for p in (path, m.group(1)) if p)
            msg = m.group(2)
        if err["type"] == "extra_forbidden":
            msg = "unknown field"
        out.append(SpecError(path or prefix or "spec", msg))
    return out


def parse_model_deployment(obj: dict[str, Any]) -> ModelDeployment:
    """Parse a whole object; raises SpecError naming the first bad field."""
    if not isinstance(obj, dict):
        raise SpecError("(document)", "expected a mapping")
    if obj.get("apiVersion") != API_VERSION or obj.get("kind") != KIND:
        raise SpecError("apiVersion/kind", f"expected {API_VERSION} {KIND}, got {obj.get('apiVersion')} {obj.get('kind')}")
    try:
        return ModelDeployment.model_validate(obj)
    except ValidationError as exc:
        raise format_validation_error(exc)[0] from None


def parse_spec(spec: Any) -> ModelDeploymentSpec:
    if not isinstance(spec, dict):
        raise SpecError("spec", "expected a mapping")
    try:
        return ModelDeploymentSpec.model_validate(spec)
    except ValidationError as exc:
        raise format_validation_error(exc, "spec")[0] from None
