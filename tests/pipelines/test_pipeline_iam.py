"""`kanari iam policy`: each role's policy grants exactly the AWS calls its code makes (found by scanning the
source), scoped by the flags, plus the implied actions with their reasons; trust policies for IRSA and
for SageMaker; the documents are valid IAM JSON a user can paste."""

from __future__ import annotations

import ast
import functools
import json
import pickle
import subprocess
import sys
from pathlib import Path

import boto3
import pytest
from kanari.cli import iam
from kanari.cli.main import main

ROOT = Path(__file__).resolve().parents[2]
KNOWN_SERVICES = ("s3", "sagemaker", "logs", "ecr", "sts")
TRANSFER = {"download_file": ("s3", "GetObject"), "upload_file": ("s3", "PutObject")}
PROMETHEUS_PATHS = {"/api/v1/query": "QueryMetrics", "/api/v1/query_range": "QueryMetrics",
                    "/api/v1/series": "GetSeries", "/api/v1/labels": "GetLabels", "/api/v1/metadata": "GetMetricMetadata"}


def role_files(role: str) -> list[Path]:
    excludes = iam.SOURCE_EXCLUDES.get(role, ())
    files = []
    for source in iam.SOURCES[role]:
        for path in sorted((ROOT / source).rglob("*.py")):
            rel = str(path.relative_to(ROOT))
            if not any(rel == e or rel.startswith(e) for e in excludes if e.endswith("/") or e.endswith(".py")):
                files.append(path)
    return files


def operations(service: str) -> dict[str, str]:
    return dict(boto3.client(service, region_name="us-east-1").meta.method_to_api_mapping)


def parse(paths: list[Path]) -> list[ast.Module]:
    """The files' syntax trees, parsed in a process of their own: CPython 3.11 keeps one AST-construction depth
    counter per interpreter, so an ast.parse racing another thread's (werkzeug compiles its URL rules with
    ast.parse in moto's request threads; 3.11's traceback module parses to place its carets) fails with
    "SystemError: AST constructor recursion depth mismatch" (python/cpython#106905)."""
    code = "import ast, pickle, sys; sys.stdout.buffer.write(pickle.dumps([ast.parse(open(p).read()) for p in sys.argv[1:]]))"
    out = subprocess.run([sys.executable, "-c", code, *map(str, paths)], capture_output=True, check=True, timeout=60)
    return pickle.loads(out.stdout)


@functools.cache
def scan(role: str) -> frozenset[tuple[str, str]]:
    """Every (service, API operation) the role's code calls through boto3 (and SigV4-signed AMP queries)."""
    calls: set[tuple[str, str]] = set()
    files = role_files(role)
    trees = dict(zip(files, parse(files), strict=True))
    services: set[str] = set()
    for tree in trees.values():
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and node.args:
                name = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
                if name == "client" and getattr(node.args[0], "value", None) in KNOWN_SERVICES:
                    services.add(node.args[0].value)
                if name == "SigV4Auth" and len(node.args) > 1 and getattr(node.args[1], "value", None) == "aps":
                    services.add("aps")
    by_name: dict[str, set[tuple[str, str]]] = {}
    for service in services - {"aps"}:
        for method, api in operations(service).items():
            by_name.setdefault(method, set()).add((service, api))
    for path, tree in trees.items():
        modules = {alias.asname or alias.name.split(".")[0] for node in ast.walk(tree)
                   if isinstance(node, ast.Import | ast.ImportFrom) for alias in node.names}
        for node in ast.walk(tree):
            if "aps" in services and isinstance(node, ast.Constant) and node.value in PROMETHEUS_PATHS:
                calls.add(("aps", PROMETHEUS_PATHS[node.value]))
            if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
                continue
            receiver = node.func.value
            if isinstance(receiver, ast.Name) and receiver.id in modules:
                continue  # re.search(), json.dumps(): a module's function, not a client's operation
            name = node.func.attr
            if name == "get_paginator" and node.args and isinstance(node.args[0], ast.Constant):
                name = node.args[0].value
            if name in TRANSFER and "s3" in services:
                calls.add(TRANSFER[name])
            found = by_name.get(name, set())
            assert len(found) <= 1, f"{path}: {name} is an operation of several services: {found}"
            calls |= found
    return frozenset(calls)


@pytest.mark.parametrize("role", ["controller", "pipeline", "receiver", "monitor"])
def test_each_role_is_granted_exactly_the_calls_its_code_makes(role: str) -> None:
    called = {a for s, op in scan(role) if (a := iam.iam_action(s, op))}
    granted = {a for g in iam.GRANTS[role] for a in g.actions}
    implied = set(iam.IMPLIED.get(role, {}))
    assert called - granted == set(), f"{role}: calls its code makes that the policy does not grant"
    assert granted - called - implied == set(), f"{role}: grants no code of the role uses"
    assert implied <= granted


def test_the_scan_finds_what_the_pipeline_really_calls() -> None:
    # A guard against a scanner that finds nothing and so "proves" any policy.
    calls = scan("pipeline")
    assert {("sagemaker", "CreateTrainingJob"), ("sagemaker", "StopTrainingJob"), ("sagemaker", "Search"),
            ("sagemaker", "CreateModelPackage"), ("s3", "PutObject"), ("s3", "ListObjectsV2"),
            ("logs", "FilterLogEvents"), ("sagemaker", "AddAssociation")} <= calls
    # The drift baseline's Spark job (baseline_engine spark).
    assert {("sagemaker", "CreateProcessingJob"), ("sagemaker", "DescribeProcessingJob"),
            ("sagemaker", "StopProcessingJob"), ("sagemaker", "ListProcessingJobs"), ("sagemaker", "ListTags")} <= calls
    assert ("sagemaker", "UpdateModelPackage") not in calls  # approval is a person's act, not the pipeline's
    assert {("sagemaker", "DescribeModelPackage"), ("aps", "QueryMetrics")} <= scan("controller")


def test_the_pipeline_policy_is_scoped_by_the_flags(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["iam", "policy", "--role", "pipeline", "--account", "123456789012", "--region", "eu-west-1",
                 "--bucket", "ml-artifacts", "--group", "fraud-models"]) == 0
    doc = json.loads(capsys.readouterr().out)
    by_sid = {s["Sid"]: s for s in doc["Statement"]}
    assert by_sid["Data"]["Resource"] == "arn:aws:s3:::ml-artifacts/*"
    assert by_sid["Registry"]["Resource"] == ["arn:aws:sagemaker:eu-west-1:123456789012:model-package-group/fraud-models",
                                              "arn:aws:sagemaker:eu-west-1:123456789012:model-package/fraud-models/*"]
    assert by_sid["PassExecutionRole"]["Resource"] == "arn:aws:iam::123456789012:role/kanari-sagemaker-execution"
    assert by_sid["PassExecutionRole"]["Condition"] == {"StringEquals": {"iam:PassedToService": "sagemaker.amazonaws.com"}}
    assert all(s["Effect"] == "Allow" and s["Action"] for s in doc["Statement"])
    assert "*" not in [a for s in doc["Statement"] for a in s["Action"]]


def test_the_monitor_reads_the_label_drop_under_its_prefix_only(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["iam", "policy", "--role", "monitor", "--account", "123456789012", "--bucket", "ml-artifacts",
                 "--labels-bucket", "ml-labels", "--labels-prefix", "fraud/labels/"]) == 0
    by_sid = {s["Sid"]: s for s in json.loads(capsys.readouterr().out)["Statement"]}
    assert by_sid["ReadLabelDrop"]["Resource"] == "arn:aws:s3:::ml-labels/fraud/labels/*"
    assert by_sid["ListLabelDrop"] == {"Sid": "ListLabelDrop", "Effect": "Allow", "Action": ["s3:ListBucket"],
                                       "Resource": "arn:aws:s3:::ml-labels",
                                       "Condition": {"StringLike": {"s3:prefix": "fraud/labels/*"}}}
    assert by_sid["ReadCalibrations"]["Resource"] == "arn:aws:s3:::ml-artifacts/*/calibration.json"
    assert ("s3", "ListObjectsV2") in scan("monitor")  # the label drop's listing is what the scan found


def test_trust_policies(capsys: pytest.CaptureFixture[str]) -> None:
    issuer = "oidc.eks.eu-west-1.amazonaws.com/id/ABCDEF0123456789"
    assert main(["iam", "policy", "--role", "pipeline", "--account", "123456789012", "--trust",
                 "--oidc-provider", f"https://{issuer}"]) == 0
    st = json.loads(capsys.readouterr().out)["Statement"][0]
    assert st["Principal"]["Federated"] == f"arn:aws:iam::123456789012:oidc-provider/{issuer}"
    assert st["Condition"]["StringEquals"][f"{issuer}:sub"] == "system:serviceaccount:kubeflow:kanari-pipeline"
    assert main(["iam", "policy", "--role", "training", "--account", "123456789012", "--trust"]) == 0
    st = json.loads(capsys.readouterr().out)["Statement"][0]
    assert st["Principal"] == {"Service": "sagemaker.amazonaws.com"} and st["Action"] == "sts:AssumeRole"
    assert main(["iam", "policy", "--role", "controller", "--account", "123456789012", "--trust"]) == 2
    assert "--oidc-provider is required" in capsys.readouterr().err
    assert main(["iam", "policy", "--role", "controller", "--account", "12345"]) == 2
    assert "--account" in capsys.readouterr().err
    assert main(["iam", "policy", "--role", "receiver", "--account", "123456789012"]) == 0
    out = capsys.readouterr()
    assert out.out == "" and "makes no AWS calls" in out.err
