"""`kanari iam policy --role controller|pipeline|training|receiver|monitor`: the least-privilege IAM policy
each Kanari role needs, and (`--trust`) the trust policy that lets it be assumed (IRSA for the pods,
the SageMaker service for the training job's execution role).

GRANTS lists, per role, the IAM actions the role's code calls and the resources they touch. It is
held to the code by tests/pipelines/test_pipeline_iam.py, which scans each role's source for the boto3
calls it makes (API_ACTIONS maps them to IAM actions) and fails if a call is not granted or a grant is
not called. The few actions no boto3 call names (iam:PassRole for CreateTrainingJob, sagemaker:AddTags
for a create with Tags, what SageMaker does as the training role) are in IMPLIED, each with its reason.
Resource ARNs are scoped by --partition/--region/--account/--bucket/--group.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass, field
from typing import Any

ROLES = ("controller", "pipeline", "training", "receiver", "monitor")
TRAINING_LOG_GROUP = "/aws/sagemaker/TrainingJobs"
PROCESSING_LOG_GROUP = "/aws/sagemaker/ProcessingJobs"  # the drift baseline's Spark job (baseline_engine spark)

# Where each role's AWS calls are made (paths relative to the repository / installed packages).
SOURCES = {
    "controller": ("operators/kanari/controller", "operators/kanari/rollout"),
    # The pipeline's steps; not the local runner (kanari pipeline run --local uses the user's own
    # credentials against an emulator), the training script (runs in SageMaker, as the training role)
    # or the registry's approval side (a person's credentials: kanari models approve).
    "pipeline": ("kfp_pipelines",),
    "receiver": ("operators/kanari/retrain",),
    "monitor": ("operators/kanari/monitor",),
}
SOURCE_EXCLUDES = {
    "pipeline": ("kfp_pipelines/local.py", "kfp_pipelines/sagemaker/local_runner.py", "kfp_pipelines/training/",
                 "kfp_pipelines/registry_admin.py"),
}
# Default IRSA subjects (namespace, service account) of each role's pods.
SERVICE_ACCOUNTS = {
    "controller": ("kanari-system", "kanari-controller"),
    "pipeline": ("kubeflow", "kanari-pipeline"),
    "receiver": ("kanari-system", "kanari-alert-receiver"),
    "monitor": ("kanari-system", "kanari-drift-monitor"),
}

# boto3 call (service, API operation) -> the IAM action that authorises it (None: needs none).
API_ACTIONS: dict[tuple[str, str], str | None] = {
    ("s3", "HeadObject"): "s3:GetObject",
    ("s3", "GetObject"): "s3:GetObject",
    ("s3", "PutObject"): "s3:PutObject",
    ("s3", "HeadBucket"): "s3:ListBucket",
    ("s3", "ListObjectsV2"): "s3:ListBucket",
    ("sts", "GetCallerIdentity"): None,
}
SERVICE_PREFIX = {"sagemaker": "sagemaker", "s3": "s3", "logs": "logs", "ecr": "ecr", "aps": "aps"}


def iam_action(service: str, operation: str) -> str | None:
    if (service, operation) in API_ACTIONS:
        return API_ACTIONS[(service, operation)]
    return f"{SERVICE_PREFIX[service]}:{operation}"


@dataclass(frozen=True)
class Grant:
    sid: str
    actions: tuple[str, ...]
    resources: tuple[str, ...]
    condition: dict[str, Any] = field(default_factory=dict)


P, R, A = "{partition}", "{region}", "{account}"
SM = f"arn:{P}:sagemaker:{R}:{A}"
GRANTS: dict[str, tuple[Grant, ...]] = {
    "controller": (
        Grant("ResolveRegistryPackages", ("sagemaker:DescribeModelPackage",), (f"{SM}:model-package/{{group}}/*",)),
        Grant("CanaryAnalysis", ("aps:QueryMetrics",), (f"arn:{P}:aps:{R}:{A}:workspace/{{workspace}}",)),
        # The warm-up gate's inputs: samples.jsonl beside each drift baseline (kanari.controller.warmup).
        Grant("ReadWarmupSamples", ("s3:GetObject",), (f"arn:{P}:s3:::{{bucket}}/*/baseline/samples.jsonl",)),
    ),
    "pipeline": (
        Grant("Data", ("s3:GetObject", "s3:PutObject"), (f"arn:{P}:s3:::{{bucket}}/*",)),
        Grant("DataBucket", ("s3:ListBucket",), (f"arn:{P}:s3:::{{bucket}}",)),
        Grant("TrainingJobs", ("sagemaker:CreateTrainingJob", "sagemaker:DescribeTrainingJob",
                               "sagemaker:StopTrainingJob", "sagemaker:AddTags"), (f"{SM}:training-job/*",)),
        Grant("BaselineProcessingJobs", ("sagemaker:CreateProcessingJob", "sagemaker:DescribeProcessingJob",
                                         "sagemaker:StopProcessingJob", "sagemaker:AddTags", "sagemaker:ListTags"),
              (f"{SM}:processing-job/*",)),
        # Search and ListModelPackages/ListArtifacts/ListProcessingJobs support no resource-level permissions.
        Grant("FindJobsAndVersions", ("sagemaker:Search", "sagemaker:ListModelPackages", "sagemaker:ListArtifacts",
                                      "sagemaker:ListProcessingJobs"),
              ("*",)),
        Grant("Registry", ("sagemaker:DescribeModelPackageGroup", "sagemaker:CreateModelPackage",
                           "sagemaker:DescribeModelPackage"),
              (f"{SM}:model-package-group/{{group}}", f"{SM}:model-package/{{group}}/*")),
        Grant("Lineage", ("sagemaker:CreateArtifact", "sagemaker:AddAssociation", "sagemaker:DescribeTrialComponent"),
              (f"{SM}:artifact/*", f"{SM}:experiment-trial-component/*")),
        Grant("TrainingLogs", ("logs:FilterLogEvents",),
              (f"arn:{P}:logs:{R}:{A}:log-group:{TRAINING_LOG_GROUP}:*",)),
        Grant("ImageDigests", ("ecr:DescribeImages",), (f"arn:{P}:ecr:{R}:*:repository/*",)),
        Grant("PassExecutionRole", ("iam:PassRole",), ("{execution_role}",),
              {"StringEquals": {"iam:PassedToService": "sagemaker.amazonaws.com"}}),
    ),
    # The SageMaker execution role: what SageMaker does on the job's behalf (Kanari code running as it: train.py,
    # which makes no AWS calls, and the Spark baseline job, which reads the train split and, through SageMaker's
    # output upload, writes the baseline: the S3 grants below).
    "training": (
        Grant("ReadChannelsAndCode", ("s3:GetObject",), (f"arn:{P}:s3:::{{bucket}}/*",)),
        Grant("ListChannels", ("s3:ListBucket",), (f"arn:{P}:s3:::{{bucket}}",)),
        Grant("WriteModelAndCheckpoints", ("s3:PutObject",), (f"arn:{P}:s3:::{{bucket}}/*",)),
        Grant("JobLogs", ("logs:CreateLogGroup", "logs:CreateLogStream", "logs:PutLogEvents", "logs:DescribeLogStreams"),
              (f"arn:{P}:logs:{R}:{A}:log-group:{TRAINING_LOG_GROUP}:*",
               f"arn:{P}:logs:{R}:{A}:log-group:{PROCESSING_LOG_GROUP}:*")),
        Grant("JobMetrics", ("cloudwatch:PutMetricData",), ("*",),
              {"StringEquals": {"cloudwatch:namespace": ["/aws/sagemaker/TrainingJobs", "/aws/sagemaker/ProcessingJobs"]}}),
        Grant("PullImages", ("ecr:GetAuthorizationToken",), ("*",)),
        Grant("PullImageLayers", ("ecr:BatchGetImage", "ecr:GetDownloadUrlForLayer", "ecr:BatchCheckLayerAvailability"),
              (f"arn:{P}:ecr:{R}:*:repository/*",)),
    ),
    "receiver": (),
    "monitor": (
        Grant("ReadBaselines", ("s3:GetObject",), (f"arn:{P}:s3:::{{bucket}}/*/baseline/*",)),
        # CBPE's calibration, registered with the model package (kanari:calibration-uri).
        Grant("ReadCalibrations", ("s3:GetObject",), (f"arn:{P}:s3:::{{bucket}}/*/calibration.json",)),
        # The S3 label drop (--labels-s3-uri): list and read under its prefix only.
        Grant("ReadLabelDrop", ("s3:GetObject",), (f"arn:{P}:s3:::{{labels_bucket}}/{{labels_prefix}}*",)),
        Grant("ListLabelDrop", ("s3:ListBucket",), (f"arn:{P}:s3:::{{labels_bucket}}",),
              {"StringLike": {"s3:prefix": "{labels_prefix}*"}}),
    ),
}
# Granted though no boto3 call in the role's code names them.
IMPLIED: dict[str, dict[str, str]] = {
    "pipeline": {
        "iam:PassRole": "CreateTrainingJob and CreateProcessingJob pass the execution role to SageMaker",
        "sagemaker:AddTags": "CreateTrainingJob, CreateProcessingJob and CreateModelPackage with Tags need it",
    },
    "training": {a: "SageMaker acts as this role for the job" for g in GRANTS["training"] for a in g.actions},
}


def policy(role: str, values: dict[str, str]) -> dict[str, Any] | None:
    statements = []
    for g in GRANTS[role]:
        st: dict[str, Any] = {"Sid": g.sid, "Effect": "Allow", "Action": sorted(g.actions),
                              "Resource": [r.format(**values) for r in g.resources]}
        if len(st["Resource"]) == 1:
            st["Resource"] = st["Resource"][0]
        if g.condition:
            st["Condition"] = {op: {k: v.format(**values) for k, v in kv.items()} for op, kv in g.condition.items()}
        statements.append(st)
    return {"Version": "2012-10-17", "Statement": statements} if statements else None


def trust_policy(role: str, values: dict[str, str], namespace: str | None, service_account: str | None) -> dict[str, Any]:
    if role == "training":
        statement: dict[str, Any] = {"Effect": "Allow", "Principal": {"Service": "sagemaker.amazonaws.com"},
                                     "Action": "sts:AssumeRole",
                                     "Condition": {"StringEquals": {"aws:SourceAccount": values["account"]}}}
    else:
        ns, sa = SERVICE_ACCOUNTS[role]
        issuer = values["oidc_provider"]
        statement = {
            "Effect": "Allow",
            "Principal": {"Federated": f"arn:{values['partition']}:iam::{values['account']}:oidc-provider/{issuer}"},
            "Action": "sts:AssumeRoleWithWebIdentity",
            "Condition": {"StringEquals": {f"{issuer}:sub": f"system:serviceaccount:{namespace or ns}:{service_account or sa}",
                                           f"{issuer}:aud": "sts.amazonaws.com"}},
        }
    return {"Version": "2012-10-17", "Statement": [statement]}


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    iam = subparsers.add_parser("iam", help="IAM policies for Kanari's roles")
    isub = iam.add_subparsers(dest="iam_command", metavar="COMMAND")
    p = isub.add_parser("policy", help="the least-privilege policy of a role (or its trust policy, --trust)")
    p.add_argument("--role", required=True, choices=ROLES)
    p.add_argument("--account", required=True, help="AWS account id (12 digits)")
    p.add_argument("--region", default="*", help="AWS region (default: any)")
    p.add_argument("--partition", default="aws", help="aws, aws-cn or aws-us-gov")
    p.add_argument("--bucket", default="*", help="S3 bucket for data, models and baselines")
    p.add_argument("--group", default="*", help="SageMaker model package group")
    p.add_argument("--labels-bucket", default=None, help="the S3 label drop's bucket (monitor; default: --bucket)")
    p.add_argument("--labels-prefix", default="kanari-labels/",
                   help="the S3 label drop's prefix (monitor; the chart's labels.s3.uri)")
    p.add_argument("--workspace", default="*", help="Amazon Managed Prometheus workspace id (controller)")
    p.add_argument("--execution-role-arn", default=None,
                   help="the SageMaker execution role the pipeline passes (default ...:role/kanari-sagemaker-execution)")
    p.add_argument("--trust", action="store_true", help="print the trust policy (IRSA, or SageMaker for training)")
    p.add_argument("--oidc-provider", default=None,
                   help="the cluster's OIDC issuer without https://, e.g. oidc.eks.REGION.amazonaws.com/id/ID (--trust)")
    p.add_argument("--namespace", default=None, help="namespace of the role's service account (--trust)")
    p.add_argument("--service-account", default=None, help="the role's service account (--trust)")
    p.set_defaults(func=cmd_policy)
    iam.set_defaults(func=lambda args: iam.print_help() or 2)


def cmd_policy(args: argparse.Namespace) -> int:
    import re

    if not re.fullmatch(r"\d{12}", args.account):
        print(f"kanari: --account: {args.account!r} is not a 12-digit AWS account id", file=sys.stderr)
        return 2
    values = {"partition": args.partition, "region": args.region, "account": args.account, "bucket": args.bucket,
              "group": args.group, "workspace": args.workspace, "labels_bucket": args.labels_bucket or args.bucket,
              "labels_prefix": args.labels_prefix, "oidc_provider": args.oidc_provider or "",
              "execution_role": args.execution_role_arn
              or f"arn:{args.partition}:iam::{args.account}:role/kanari-sagemaker-execution"}
    if args.trust:
        if args.role != "training" and not args.oidc_provider:
            print("kanari: --oidc-provider is required for an IRSA trust policy "
                  "(aws eks describe-cluster --query cluster.identity.oidc.issuer)", file=sys.stderr)
            return 2
        values["oidc_provider"] = values["oidc_provider"].removeprefix("https://")
        print(json.dumps(trust_policy(args.role, values, args.namespace, args.service_account), indent=2))
        return 0
    doc = policy(args.role, values)
    if doc is None:
        print(f"kanari: the {args.role} makes no AWS calls; give its service account no IAM role", file=sys.stderr)
        return 0
    print(json.dumps(doc, indent=2))
    return 0
