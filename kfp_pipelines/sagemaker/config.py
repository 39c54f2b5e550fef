"""What a SageMaker training job is: the typed config, its checks, and the requests built from it.

Pure: no AWS calls. Every check that SageMaker would reject (or that would waste a Trainium hour)
fails here, before anything is submitted, naming the component parameter to fix.
"""

from __future__ import annotations

import hashlib
import json
import re
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from kfp_pipelines.errors import InputError

# Trainium (training) instance types SageMaker offers; the default image is built for these.
TRAINIUM_INSTANCE_TYPES = ("ml.trn1.2xlarge", "ml.trn1.32xlarge", "ml.trn1n.32xlarge", "ml.trn2.48xlarge")
# CPU/GPU types accepted with a non-Neuron image (e.g. a CPU smoke run of the same script).
OTHER_INSTANCE_TYPES = (
    "ml.m5.large", "ml.m5.xlarge", "ml.m5.2xlarge", "ml.m5.4xlarge", "ml.m5.12xlarge",
    "ml.c5.xlarge", "ml.c5.2xlarge", "ml.c5.4xlarge", "ml.c5.9xlarge",
    "ml.g5.xlarge", "ml.g5.2xlarge", "ml.g5.12xlarge", "ml.p4d.24xlarge", "ml.p5.48xlarge",
)
DEFAULT_INSTANCE_TYPE = "ml.trn1.2xlarge"

# The PyTorch Neuron training DLC (aws/deep-learning-containers, pytorch-training-neuronx).
NEURON_IMAGE_REPOSITORY = "pytorch-training-neuronx"
NEURON_IMAGE_TAG = "2.8.0-neuronx-py311-sdk2.26.1-ubuntu22.04"
DLC_ACCOUNT = "763104351884"
# The Deep Learning Containers are published from a different ECR account in opt-in, China and GovCloud
# regions (aws/deep-learning-containers available_images.md; the SageMaker Python SDK's
# image_uri_config/framework-region-registry.json). Regions not listed use DLC_ACCOUNT.
DLC_ACCOUNTS = {
    "af-south-1": "626614931356",
    "ap-east-1": "871362719292",
    "ap-east-2": "975050140332",
    "ap-northeast-3": "364406365360",
    "ap-south-2": "772153158452",
    "ap-southeast-3": "907027046896",
    "ap-southeast-4": "457447274322",
    "ap-southeast-5": "550225433462",
    "ap-southeast-7": "590183813437",
    "ca-west-1": "204538143572",
    "cn-north-1": "727897471807",
    "cn-northwest-1": "727897471807",
    "eu-central-2": "380420809688",
    "eu-south-1": "692866216735",
    "eu-south-2": "503227376785",
    "il-central-1": "780543022126",
    "me-central-1": "914824155844",
    "me-south-1": "217643126080",
    "mx-central-1": "637423239942",
    "us-gov-east-1": "446045086412",
    "us-gov-west-1": "442386744353",
}

DISTRIBUTED_HP = "sagemaker_torch_distributed_enabled"
CHECKPOINT_LOCAL_PATH = "/opt/ml/checkpoints"
CODE_CHANNEL_PATH = "/opt/ml/input/data/code/sourcedir.tar.gz"
MAX_RUNTIME_LIMIT = 28 * 24 * 3600

# Matched against the script's log lines by SageMaker (train.py prints them every epoch).
METRIC_DEFINITIONS = [
    {"Name": "train:loss", "Regex": r"train_loss=([0-9.eE+-]+)"},
    {"Name": "validation:pr_auc", "Regex": r"validation_pr_auc=([0-9.eE+-]+)"},
]

ROLE_ARN = r"^arn:aws[a-z-]*:iam::\d{12}:role/?[a-zA-Z_0-9+=,.@\-/]+$"
CHANNEL_NAME = r"^[A-Za-z0-9.\-_]+$"
JOB_NAME_MAX = 63
DIGEST_LEN = 16


HYPERPARAMETER_KEY_MAX = 256
HYPERPARAMETER_VALUE_MAX = 2500  # SageMaker's HyperParameters value limit (the key limit is 256)
HYPERPARAMETERS_MAX = 100


def dlc_image(region: str, repository: str, tag: str) -> str:
    """A Deep Learning Container image in `region`, from the ECR account that publishes it there."""
    if not re.fullmatch(r"[a-z]{2}(-[a-z]+)+-\d", region or ""):
        raise InputError("region", f"{region!r} is not an AWS region (set AWS_REGION / AWS_DEFAULT_REGION)")
    domain = "amazonaws.com.cn" if region.startswith("cn-") else "amazonaws.com"
    return f"{DLC_ACCOUNTS.get(region, DLC_ACCOUNT)}.dkr.ecr.{region}.{domain}/{repository}:{tag}"


def default_image(region: str) -> str:
    return dlc_image(region, NEURON_IMAGE_REPOSITORY, NEURON_IMAGE_TAG)


def is_neuron_image(image: str) -> bool:
    return "neuronx" in image.rsplit("/", 1)[-1]


class TrainingJobConfig(BaseModel):
    """The training component's parameters, checked as one object (field names = parameter names)."""

    model_config = ConfigDict(extra="forbid")

    channels: dict[str, str]
    output_s3_uri: str
    role_arn: str
    image_uri: str
    instance_type: str = DEFAULT_INSTANCE_TYPE
    instance_count: int = Field(default=1, ge=1, le=64)
    volume_size_gb: int = Field(default=50, ge=1, le=16384)
    max_runtime_seconds: int = Field(default=24 * 3600, ge=1, le=MAX_RUNTIME_LIMIT)
    hyperparameters: dict[str, Any] = Field(default_factory=dict)
    entry_point: str = "train.py"
    use_spot: bool = False
    max_wait_seconds: int = Field(default=0, ge=0, le=MAX_RUNTIME_LIMIT)
    checkpoint_s3_uri: str = ""
    subnets: list[str] = Field(default_factory=list, max_length=16)
    security_group_ids: list[str] = Field(default_factory=list, max_length=5)
    volume_kms_key_id: str = ""
    output_kms_key_id: str = ""
    enable_network_isolation: bool = False
    enable_inter_container_traffic_encryption: bool = False
    # The label column the validate step checked; the training script is told the same one.
    target: str = ""
    # "compile": the Neuron compile job (kfp_pipelines.neuron): its input is the trained model (channel "model"),
    # and it runs as one process (the compiler), not one training worker per NeuronCore.
    purpose: Literal["train", "compile"] = "train"

    @model_validator(mode="after")
    def _checks(self) -> TrainingJobConfig:
        check(self)
        return self


def check(cfg: TrainingJobConfig) -> None:
    required = "train" if cfg.purpose == "train" else "model"
    if not cfg.channels:
        raise ValueError(f"channels: no input channels; the script reads at least a '{required}' channel")
    if required not in cfg.channels:
        raise ValueError(f"channels: no '{required}' channel (got {', '.join(sorted(cfg.channels))})")
    for name, uri in cfg.channels.items():
        if not re.fullmatch(CHANNEL_NAME, name) or name == "code":
            raise ValueError(f"channels: invalid channel name {name!r}")
        if not uri.startswith("s3://") or len(uri) <= len("s3://"):
            raise ValueError(f"channels.{name}: expected an s3:// prefix, got {uri!r}")
    if not cfg.output_s3_uri.startswith("s3://"):
        raise ValueError(f"output_s3_uri: expected an s3:// URI, got {cfg.output_s3_uri!r}")
    if not re.fullmatch(ROLE_ARN, cfg.role_arn):
        raise ValueError(f"role_arn: {cfg.role_arn!r} is not an IAM role ARN")
    known = TRAINIUM_INSTANCE_TYPES + OTHER_INSTANCE_TYPES
    if cfg.instance_type not in known:
        raise ValueError(
            f"instance_type: unknown SageMaker training instance type {cfg.instance_type!r} "
            f"(Trainium: {', '.join(TRAINIUM_INSTANCE_TYPES)})"
        )
    if is_neuron_image(cfg.image_uri) and cfg.instance_type not in TRAINIUM_INSTANCE_TYPES:
        raise ValueError(
            f"instance_type: the PyTorch Neuron image needs a Trainium instance "
            f"({', '.join(TRAINIUM_INSTANCE_TYPES)}), not {cfg.instance_type}"
        )
    if not cfg.entry_point.endswith(".py") or "/" in cfg.entry_point:
        raise ValueError(f"entry_point: expected a .py file name in the source directory, got {cfg.entry_point!r}")
    # Managed spot training: SageMaker's rules, plus a checkpoint location so an interrupted job resumes.
    if cfg.use_spot:
        if cfg.max_wait_seconds == 0:
            raise ValueError("max_wait_seconds: required with use_spot (time to wait for spot capacity plus runtime)")
        if cfg.max_wait_seconds < cfg.max_runtime_seconds:
            raise ValueError(
                f"max_wait_seconds: {cfg.max_wait_seconds} must be >= max_runtime_seconds ({cfg.max_runtime_seconds})"
            )
        if not cfg.checkpoint_s3_uri:
            raise ValueError("checkpoint_s3_uri: required with use_spot, so an interrupted job resumes from it")
    elif cfg.max_wait_seconds:
        raise ValueError("max_wait_seconds: only valid with use_spot (SageMaker rejects it for on-demand jobs)")
    if cfg.checkpoint_s3_uri and not cfg.checkpoint_s3_uri.startswith("s3://"):
        raise ValueError(f"checkpoint_s3_uri: expected an s3:// URI, got {cfg.checkpoint_s3_uri!r}")
    if bool(cfg.subnets) != bool(cfg.security_group_ids):
        missing = "security_group_ids" if cfg.subnets else "subnets"
        raise ValueError(f"{missing}: a VPC config needs both subnets and security_group_ids")
    for s in cfg.subnets:
        if not s.startswith("subnet-"):
            raise ValueError(f"subnets: {s!r} is not a subnet id")
    for g in cfg.security_group_ids:
        if not g.startswith("sg-"):
            raise ValueError(f"security_group_ids: {g!r} is not a security group id")
    if len(cfg.hyperparameters) > HYPERPARAMETERS_MAX - 10:
        raise ValueError(f"hyperparameters: SageMaker accepts at most {HYPERPARAMETERS_MAX}, including the "
                         "framework's own")
    for k, v in cfg.hyperparameters.items():
        if len(k) > HYPERPARAMETER_KEY_MAX:
            raise ValueError(f"hyperparameters.{k[:40]}: keys are limited to {HYPERPARAMETER_KEY_MAX} characters")
        if len(json.dumps(v)) > HYPERPARAMETER_VALUE_MAX:
            raise ValueError(f"hyperparameters.{k}: JSON-encoded values are limited to {HYPERPARAMETER_VALUE_MAX} "
                             "characters")
    if cfg.target:
        given = cfg.hyperparameters.get("target")
        if given is not None and given != cfg.target:
            raise ValueError(f"hyperparameters.target: {given!r} contradicts the pipeline's target {cfg.target!r}")


M = TypeVar("M", bound=BaseModel)


def parse_config(**params: Any) -> TrainingJobConfig:
    return parse_parameters(TrainingJobConfig, params)


def parse_parameters(model: type[M], params: dict[str, Any], names: dict[str, str] | None = None) -> M:
    """The job's settings, or an InputError naming the pipeline parameter (`names`: field -> parameter where
    they differ) and what is wrong with it."""
    try:
        return model(**params)
    except ValidationError as exc:
        err = exc.errors()[0]
        msg = str(err["msg"]).removeprefix("Value error, ")
        m = re.match(r"^([a-z_][a-z0-9_.]*): (.*)$", msg, re.S)
        if m and err["type"] == "value_error":
            raise InputError(m.group(1), m.group(2)) from None
        loc = ".".join(str(p) for p in err["loc"]) or "parameters"
        raise InputError((names or {}).get(loc, loc), msg) from None


# --------------------------------------------------------------------------------------- requests
def hyperparameters(cfg: TrainingJobConfig, submit_directory: str, region: str) -> dict[str, str]:
    """As the SageMaker Python SDK sends them: JSON-encoded values, plus the framework container's keys."""
    hps: dict[str, Any] = {}
    if cfg.instance_type in TRAINIUM_INSTANCE_TYPES and cfg.purpose == "train":
        # The Neuron DLC starts one worker per NeuronCore through torchrun.
        hps[DISTRIBUTED_HP] = True
    hps.update(cfg.hyperparameters)
    if cfg.target:
        hps["target"] = cfg.target
    hps.update({
        "sagemaker_program": cfg.entry_point,
        "sagemaker_submit_directory": submit_directory,
        "sagemaker_region": region,
    })
    return {k: json.dumps(v) for k, v in sorted(hps.items())}


def _channel(name: str, uri: str, content_type: str | None) -> dict[str, Any]:
    out: dict[str, Any] = {
        "ChannelName": name,
        "DataSource": {
            "S3DataSource": {"S3DataType": "S3Prefix", "S3Uri": uri, "S3DataDistributionType": "FullyReplicated"}
        },
        "InputMode": "File",
    }
    if content_type:
        out["ContentType"] = content_type
    return out


def build_request(cfg: TrainingJobConfig, *, source_uri: str, region: str) -> dict[str, Any]:
    """The CreateTrainingJob request, without TrainingJobName and Tags (those come from its hash)."""
    inputs = [_channel(name, uri, "text/csv") for name, uri in sorted(cfg.channels.items())]
    if cfg.enable_network_isolation:
        # An isolated container cannot fetch its code from S3; SageMaker mounts it as the "code" channel.
        inputs.append(_channel("code", source_uri.rsplit("/", 1)[0] + "/", None))
        submit = CODE_CHANNEL_PATH
    else:
        submit = source_uri
    req: dict[str, Any] = {
        "AlgorithmSpecification": {
            "TrainingImage": cfg.image_uri,
            "TrainingInputMode": "File",
            "MetricDefinitions": METRIC_DEFINITIONS,
        },
        "RoleArn": cfg.role_arn,
        "HyperParameters": hyperparameters(cfg, submit, region),
        "InputDataConfig": inputs,
        "OutputDataConfig": {"S3OutputPath": cfg.output_s3_uri.rstrip("/")},
        "ResourceConfig": {
            "InstanceType": cfg.instance_type,
            "InstanceCount": cfg.instance_count,
            "VolumeSizeInGB": cfg.volume_size_gb,
        },
        "StoppingCondition": {"MaxRuntimeInSeconds": cfg.max_runtime_seconds},
        "EnableNetworkIsolation": cfg.enable_network_isolation,
        "EnableInterContainerTrafficEncryption": cfg.enable_inter_container_traffic_encryption,
        "EnableManagedSpotTraining": cfg.use_spot,
    }
    if cfg.output_kms_key_id:
        req["OutputDataConfig"]["KmsKeyId"] = cfg.output_kms_key_id
    if cfg.volume_kms_key_id:
        req["ResourceConfig"]["VolumeKmsKeyId"] = cfg.volume_kms_key_id
    if cfg.use_spot:
        req["StoppingCondition"]["MaxWaitTimeInSeconds"] = cfg.max_wait_seconds
    if cfg.checkpoint_s3_uri:
        req["CheckpointConfig"] = {"S3Uri": cfg.checkpoint_s3_uri, "LocalPath": CHECKPOINT_LOCAL_PATH}
    if cfg.subnets:
        req["VpcConfig"] = {"Subnets": list(cfg.subnets), "SecurityGroupIds": list(cfg.security_group_ids)}
    return req


def inputs_hash(request: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(request, sort_keys=True).encode()).hexdigest()


def job_name(base: str, run_id: str, task: str, request_hash: str, attempt: int = 0) -> str:
    """Deterministic per (pipeline run, task, inputs, attempt): a restarted step finds its own job again.

    A job that ended Failed or Stopped is never waited on again: the step moves to the next attempt's
    name, so a capacity error can be retried within the same run. Lower-case and DNS-1123 compatible,
    so the same name serves as the ACK TrainingJob's name.
    """
    seed = f"{run_id}\n{task}\n{request_hash}" + (f"\n{attempt}" if attempt else "")
    digest = hashlib.sha256(seed.encode()).hexdigest()[:DIGEST_LEN]
    prefix = re.sub(r"[^a-z0-9]+", "-", base.lower()).strip("-") or "kanari"
    prefix = prefix[: JOB_NAME_MAX - DIGEST_LEN - 1].rstrip("-")
    return f"{prefix}-{digest}"


def checkpoint_uri(base: str, name: str) -> str:
    """The job's own checkpoint prefix under checkpoint_s3_uri.

    SageMaker restores CheckpointConfig.S3Uri into the container when a job starts, so a prefix shared
    between runs would make a new run resume an old one (and ship its weights). Per job name, only the
    same job restarted after a spot interruption finds its checkpoints.
    """
    return f"{base.rstrip('/')}/{name}/"


RUN_TAG = "kanari.dev/pipeline-run"


def run_label(run_id: str) -> str:
    """The pipeline run as a Kubernetes label value (at most 63 characters of [-A-Za-z0-9_.])."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", run_id)[:63].strip("-_.") or "unknown"


def tags(run_id: str, task: str, request_hash: str, backend: str) -> list[dict[str, str]]:
    return [
        {"Key": RUN_TAG, "Value": run_id[:256]},
        {"Key": "kanari.dev/task", "Value": task[:256]},
        {"Key": "kanari.dev/inputs-hash", "Value": request_hash},
        {"Key": "kanari.dev/backend", "Value": backend},
    ]


# ------------------------------------------------------------------------------------------- ACK
# ACK spells some acronyms in capitals (roleARN, kmsKeyID, s3URI); everything else is lowerCamel.
_ACK_KEYS = {
    "RoleArn": "roleARN",
    "KmsKeyId": "kmsKeyID",
    "VolumeKmsKeyId": "volumeKMSKeyID",
    "S3Uri": "s3URI",
    "SecurityGroupIds": "securityGroupIDs",
}
_VERBATIM = {"HyperParameters", "Environment"}  # user keys inside are data, not field names


def _ack_key(key: str) -> str:
    return _ACK_KEYS.get(key) or key[0].lower() + key[1:]


def _ack(value: Any) -> Any:
    if isinstance(value, dict):
        return {_ack_key(k): (dict(v) if k in _VERBATIM else _ack(v)) for k, v in value.items()}
    if isinstance(value, list):
        return [_ack(v) for v in value]
    return value


def _tag(request: dict[str, Any], key: str) -> str:
    return next((t["Value"] for t in request.get("Tags") or [] if t["Key"] == key), "")


def ack_training_job(request: dict[str, Any], namespace: str) -> dict[str, Any]:
    """The ACK TrainingJob (sagemaker.services.k8s.aws/v1alpha1) for a CreateTrainingJob request."""
    name = request["TrainingJobName"]
    return {
        "apiVersion": "sagemaker.services.k8s.aws/v1alpha1",
        "kind": "TrainingJob",
        "metadata": {"name": name, "namespace": namespace, "labels": {
            "app.kubernetes.io/managed-by": "kanari",
            # The exit handler finds the run's TrainingJobs by this label to stop them on cancel.
            RUN_TAG: run_label(_tag(request, RUN_TAG)),
        }},
        "spec": _ack(request),
    }
