"""`kanari pipeline compile|run --local|submit` and `kanari models list|approve|reject`.

The training pipeline itself lives in kfp_pipelines; these commands compile it for a cluster, run it
on this machine through kfp.local, submit it to a Kubeflow Pipelines endpoint, and move registry
versions between approval states (a status change on the package, never a copy).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import asdict
from typing import Any

BUCKET_ENV = "KANARI_BUCKET"
GROUP_ENV = "KANARI_MODEL_PACKAGE_GROUP"
IMAGE_ENV = "KANARI_PIPELINE_IMAGE"
ROOT_ENV = "KANARI_PIPELINE_ROOT"
SERVICE_ACCOUNT_ENV = "KANARI_PIPELINE_SERVICE_ACCOUNT"


def _key_values(items: list[str], option: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise SystemExit(f"kanari: {option} {item!r}: expected NAME=VALUE")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def _required(value: str | None, option: str, env: str) -> str:
    if not value:
        raise SystemExit(f"kanari: {option} is required (or set {env})")
    return value


def _release_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--bucket", default=os.environ.get(BUCKET_ENV),
                   help=f"S3 bucket for data splits, models and baselines (default ${BUCKET_ENV})")
    p.add_argument("--model-package-group", default=os.environ.get(GROUP_ENV),
                   help=f"SageMaker Model Registry group; it must exist (default ${GROUP_ENV})")
    p.add_argument("--dataset-uri", default=None,
                   help="sklearn://breast_cancer (bundled, default) or s3://.../data.csv|.parquet")
    p.add_argument("--target", default=None, help="label column (default: label)")
    p.add_argument("--model-name", default="kanari-classifier", help="ModelDeployment name")
    p.add_argument("--namespace", default="default", help="ModelDeployment namespace")
    p.add_argument("--auto-approve", action="store_true",
                   help="register as Approved (policy); default PendingManualApproval")
    p.add_argument("--reason", default="", help="why this run happened; recorded with the model version")
    p.add_argument("--hyperparameter", action="append", default=[], metavar="NAME=VALUE",
                   help="training hyperparameter, e.g. epochs=10 (repeatable)")
    p.add_argument("--instance-type", default=None, help="SageMaker training instance type (default ml.trn1.2xlarge)")
    p.add_argument("--manifest-dir", default=None, help="GitOps directory for <namespace>/<model-name>.yaml")
    p.add_argument("--apply", action="store_true", help="also apply the ModelDeployment with the Kubernetes client")
    p.add_argument("--git-sha", default=None, help="commit of the training code (default: git rev-parse HEAD)")
    p.add_argument("--role-arn", default=None, help="SageMaker execution role")


def _setting(value: str | None, parameter: str, env: str) -> str:
    from kfp_pipelines.errors import InputError

    if not value:
        raise InputError(parameter, f"required (or set {env})")
    return value


def _compile_options(p: argparse.ArgumentParser, root_from_bucket: bool = False) -> None:
    p.add_argument("--image", default=os.environ.get(IMAGE_ENV),
                   help="the components' image, built from the Dockerfile's `pipeline` target and pushed "
                        f"(REPO:TAG or REPO@sha256:...; default ${IMAGE_ENV})")
    example = "default" if root_from_bucket else "e.g."
    p.add_argument("--pipeline-root", default=os.environ.get(ROOT_ENV),
                   help=f"where KFP stores the steps' output artifacts ({example} s3://BUCKET/kanari/pipeline-root; "
                        f"${ROOT_ENV})")


def _check_up_front(params: dict[str, Any]) -> None:
    """What would otherwise fail after training (the registry's rules for reason, git_sha, ...)."""
    from kfp_pipelines.steps import check_parameters

    check_parameters(model_name=params.get("model_name", "kanari-classifier"),
                     namespace=params.get("namespace", "default"), git_sha=params.get("git_sha") or "unset",
                     reason=params.get("reason", ""), dataset_uri=params.get("dataset_uri", ""),
                     drift_alert=params.get("drift_alert"))
    from kfp_pipelines.errors import InputError
    from kfp_pipelines.neuron import check_parameters as check_neuron

    batch = params.get("neuron_batch_size", 1)
    if not isinstance(batch, int) or isinstance(batch, bool):
        raise InputError("neuron_batch_size", f"{batch!r} is not an integer")
    check_neuron(str(params.get("neuron_target", "")), str(params.get("neuron_compile_instance_type", "ml.trn1.2xlarge")),
                 batch, str(params.get("neuron_compile_image", "")))


def register(subparsers: Any) -> None:
    pipeline = subparsers.add_parser("pipeline", help="the training pipeline (KFP v2)")
    psub = pipeline.add_subparsers(dest="pipeline_command", metavar="COMMAND")

    comp = psub.add_parser("compile", help="compile the pipeline to KFP IR YAML for a cluster")
    comp.add_argument("--out", "--output-file", dest="out", required=True, metavar="FILE",
                      help="where to write the YAML")
    _compile_options(comp)
    comp.set_defaults(func=cmd_compile)

    run = psub.add_parser("run", help="run the whole pipeline on this machine (--local)")
    run.add_argument("--local", action="store_true", help="run through kfp.local with the local training backend")
    _release_options(run)
    run.add_argument("--kubeconfig", default=argparse.SUPPRESS, metavar="PATH",
                     help="with --apply: the kubeconfig (default $KUBECONFIG, ~/.kube/config)")
    run.add_argument("--context", default=argparse.SUPPRESS, help="with --apply: the kubeconfig context (default: the current one)")
    run.add_argument("--workdir", default=None, help="run logs, KFP outputs, default GitOps dir (./.kanari/pipeline)")
    run.add_argument("-o", "--output", choices=("json", "yaml"), default=None, help="json|yaml (default: a summary)")
    run.add_argument("-v", "--verbose", action="store_true", help="also show every line the steps print")
    run.add_argument("--param", action="append", default=[], metavar="NAME=VALUE",
                     help="any other pipeline parameter, e.g. neuron_target=inf2 (repeatable)")
    run.set_defaults(func=cmd_run)

    submit = psub.add_parser("submit", help="upload the pipeline to Kubeflow Pipelines and start a run")
    submit.add_argument("--host", required=True, help="KFP API endpoint, e.g. http://ml-pipeline-ui.kubeflow")
    submit.add_argument("--experiment", default="kanari", help="KFP experiment")
    submit.add_argument("--training-backend", choices=("sagemaker", "ack"), default="sagemaker")
    submit.add_argument("--ack-namespace", default="", help="namespace for ACK TrainingJobs (backend ack)")
    submit.add_argument("--param", action="append", default=[], metavar="NAME=VALUE",
                        help="any other pipeline parameter, e.g. use_spot=true (repeatable)")
    submit.add_argument("--service-account", default=os.environ.get(SERVICE_ACCOUNT_ENV, "kanari-pipeline"),
                        help="Kubernetes service account of the run's pods; IRSA gives it the pipeline's IAM role "
                             f"(default kanari-pipeline, or ${SERVICE_ACCOUNT_ENV})")
    _compile_options(submit, root_from_bucket=True)
    _release_options(submit)
    submit.set_defaults(func=cmd_submit)

    models = subparsers.add_parser("models", help="model versions in the SageMaker Model Registry")
    msub = models.add_subparsers(dest="models_command", metavar="COMMAND")
    ls = msub.add_parser("list", help="versions of a model package group, newest first")
    ls.add_argument("--group", default=os.environ.get(GROUP_ENV), help=f"model package group (default ${GROUP_ENV})")
    ls.add_argument("-o", "--output", choices=("json", "yaml", "wide", "name"), default=None,
                    help="json|yaml|wide|name (default: a table)")
    ls.add_argument("--region", default=None, help="AWS region (default: $AWS_REGION)")
    ls.set_defaults(func=cmd_models_list)
    for name, status in (("approve", "Approved"), ("reject", "Rejected")):
        p = msub.add_parser(name, help=f"set a version's approval status to {status}")
        p.add_argument("model", help="model package ARN, or GROUP/VERSION")
        p.add_argument("--reason", default="", help="recorded as the approval description")
        p.set_defaults(func=cmd_models_set, status=status)

    for parser in (pipeline, models):
        parser.set_defaults(func=lambda args, parser=parser: parser.print_help() or 2)


def cmd_compile(args: argparse.Namespace) -> int:
    from kfp_pipelines.errors import InputError
    from kfp_pipelines.pipeline import compile_pipeline

    try:
        out = compile_pipeline(args.out, image=_setting(args.image, "image", IMAGE_ENV),
                               pipeline_root=_setting(args.pipeline_root, "pipeline_root", ROOT_ENV))
    except InputError as exc:
        print(f"kanari: --{exc.parameter.replace('_', '-')}: {exc.message}", file=sys.stderr)
        return 2
    print(f"wrote {out}")
    return 0


def _pipeline_arguments(args: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {
        "bucket": _required(args.bucket, "--bucket", BUCKET_ENV),
        "model_package_group": _required(args.model_package_group, "--model-package-group", GROUP_ENV),
        "model_name": args.model_name,
        "namespace": args.namespace,
        "auto_approve": args.auto_approve,
        "reason": args.reason,
        "hyperparameters": _key_values(args.hyperparameter, "--hyperparameter"),
        "apply_manifest": args.apply,
    }
    for key in ("dataset_uri", "target", "instance_type", "git_sha", "role_arn", "manifest_dir"):
        if getattr(args, key) is not None:
            out[key] = getattr(args, key)
    return out


def cmd_run(args: argparse.Namespace) -> int:
    if not args.local:
        print("kanari: `pipeline run` runs on this machine and needs --local; use `kanari pipeline submit` "
              "to run on a Kubeflow Pipelines cluster", file=sys.stderr)
        return 2
    from kfp_pipelines.errors import InputError
    from kfp_pipelines.local import PipelineRunError, run_local

    kwargs = _pipeline_arguments(args)
    extra = _key_values(args.param, "--param")
    if "training_backend" in extra:
        print("kanari: --param training_backend: a local run trains with the local backend; use `kanari pipeline "
              "submit` for sagemaker or ack", file=sys.stderr)
        return 2
    try:
        _check_up_front({**kwargs, **extra})
    except InputError as exc:
        print(f"kanari: --{exc.parameter.replace('_', '-')}: {exc.message}", file=sys.stderr)
        return 2
    if extra:
        kwargs["parameters"] = {**kwargs.get("parameters", {}), **extra}
    # The steps run as processes of their own (kfp.local): the connection travels in their environment.
    if getattr(args, "kubeconfig", None):
        os.environ["KUBECONFIG"] = args.kubeconfig
    if getattr(args, "context", None):
        from kanari.kubeclient import CONTEXT_ENV

        os.environ[CONTEXT_ENV] = args.context
    if args.workdir:
        kwargs["workdir"] = args.workdir

    def progress(line: str) -> None:
        if args.verbose or not line.startswith("    [") or "] done:" in line:
            print(line, file=sys.stderr, flush=True)

    try:
        result = run_local(progress=progress, **kwargs)
    except InputError as exc:
        print(f"kanari: {exc.parameter}: {exc.message}", file=sys.stderr)
        return 2
    except PipelineRunError as exc:
        where = f" ({exc.parameter})" if exc.parameter else ""
        print(f"kanari: step {exc.step} failed{where}: {exc.cause}\n  full log: {exc.log_path}", file=sys.stderr)
        return 1
    if args.output:
        print(_dump(asdict(result), args.output))
    else:
        verdict = "PASSED" if result.gate_passed else "REJECTED"
        print(f"quality gate {verdict}: {result.gate_reason}")
        print("metrics: " + ", ".join(f"{k}={result.metrics[k]:.4f}" for k in ("pr_auc", "recall", "precision", "f1")
                                     if k in result.metrics))
        print(f"training job: {result.training_job_arn}")
        if result.model_package_arn:
            print(f"registered: {result.model_package_arn} ({result.approval_status})")
            print(f"drift baseline: {result.baseline_uri}")
            print(f"ModelDeployment: {result.manifest_path}")
        print(f"{result.seconds:.1f}s, {sum(result.api_calls.values())} AWS API calls, log {result.log_path}")
    # A rejected model is a decision, not a crash; scripts still need to tell it apart from a release.
    return 0 if result.gate_passed else 3


def cmd_submit(args: argparse.Namespace) -> int:
    import tempfile

    import kfp

    from kfp_pipelines.deployment import PIPELINE_NAME
    from kfp_pipelines.errors import InputError
    from kfp_pipelines.local import resolve_git_sha
    from kfp_pipelines.pipeline import compile_pipeline

    params = _pipeline_arguments(args)
    params.update(_key_values(args.param, "--param"))
    params["training_backend"] = args.training_backend
    params["ack_namespace"] = args.ack_namespace
    if not params.get("role_arn"):
        print("kanari: --role-arn is required on a cluster (the SageMaker execution role)", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as tmp:
        try:
            params.setdefault("git_sha", resolve_git_sha())
            _check_up_front(params)
            root = args.pipeline_root or f"s3://{params['bucket']}/kanari/pipeline-root"
            image = _setting(args.image, "image", IMAGE_ENV)
            package = str(compile_pipeline(f"{tmp}/{PIPELINE_NAME}.yaml", image=image, pipeline_root=root))
        except InputError as exc:
            print(f"kanari: --{exc.parameter.replace('_', '-')}: {exc.message}", file=sys.stderr)
            return 2
        version = f"{params['git_sha'][:12]}-{time.strftime('%Y%m%d-%H%M%S')}"
        try:
            client = kfp.Client(host=args.host)
            pipeline_id = client.get_pipeline_id(PIPELINE_NAME)
            if pipeline_id is None:
                pipeline_id = client.upload_pipeline(package, pipeline_name=PIPELINE_NAME).pipeline_id
            uploaded = client.upload_pipeline_version(package, version, pipeline_id=pipeline_id)
            experiment = client.create_experiment(args.experiment)
            run = client.run_pipeline(
                experiment.experiment_id, f"{PIPELINE_NAME}-{version}", params=params,
                pipeline_id=pipeline_id, version_id=uploaded.pipeline_version_id,
                pipeline_root=root, service_account=args.service_account,
            )
        except Exception as exc:  # kfp surfaces HTTP and connection failures as many exception types
            print(f"kanari: Kubeflow Pipelines at {args.host} (--host): {type(exc).__name__}: {exc}",
                  file=sys.stderr)
            return 1
    print(f"submitted run {run.run_id} of {PIPELINE_NAME} version {version}")
    return 0


def cmd_models_list(args: argparse.Namespace) -> int:
    from kfp_pipelines import aws, registry_admin
    from kfp_pipelines.errors import InputError
    from kfp_pipelines.gate import check_group

    group = _required(args.group, "--group", GROUP_ENV)
    sm = aws.client("sagemaker", region=args.region)
    try:
        check_group(sm, group)
    except InputError as exc:
        print(f"kanari: --group: {exc.message}", file=sys.stderr)
        return 2
    rows = registry_admin.list_packages(sm, group)
    if args.output in ("json", "yaml"):
        print(_dump([asdict(r) for r in rows], args.output))
        return 0
    if args.output == "name":
        print("\n".join(r.arn for r in rows))
        return 0
    print(f"{'VERSION':<8} {'STATUS':<22} {'CREATED':<20} {'PR_AUC':<8} {'RECALL':<8} {'GIT':<12} TRAINING JOB")
    for r in rows:
        print(f"{r.version:<8} {r.status:<22} {r.created:<20} {r.metrics.get('pr_auc', '-')[:6]:<8} "
              f"{r.metrics.get('recall', '-')[:6]:<8} {r.git_sha[:12]:<12} {r.training_job}")
    return 0


def _dump(doc: Any, fmt: str) -> str:
    from kanari.cli.common import dump

    return dump(doc, fmt) if fmt == "yaml" else json.dumps(doc, indent=2, sort_keys=True)


def cmd_models_set(args: argparse.Namespace) -> int:
    from kfp_pipelines import aws, registry_admin
    from kfp_pipelines.errors import InputError, StepFailed

    sm = aws.client("sagemaker")
    try:
        arn = registry_admin.resolve_arn(sm, args.model)
        status = registry_admin.set_status(sm, arn, args.status, args.reason)
    except InputError as exc:
        print(f"kanari: {exc.parameter}: {exc.message}", file=sys.stderr)
        return 2
    except StepFailed as exc:
        print(f"kanari: {exc}", file=sys.stderr)
        return 1
    print(f"{arn}: {status}")
    return 0
