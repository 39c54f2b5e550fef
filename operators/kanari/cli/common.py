"""What every `kanari` command shares: kubectl's global flags, `-o`, exit codes and one-line errors.

Kept free of heavy imports (no kubernetes, boto3, pydantic at import): building the parser is what
`kanari --help` costs.

Flags are accepted before and after the sub-command (`kubectl kanari status x --context c -n ns`: kubectl
passes everything after the plugin name through), so the sub-command copies use SUPPRESS defaults and never
overwrite a value given earlier.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from typing import Any

# Exit codes (documented in the README; scripts may rely on them).
OK = 0
FAILED = 1  # the command ran and the answer is "no": invalid spec, drift found, rollout rolled back
USAGE = 2  # bad flags or unreadable input
GATE_REJECTED = 3  # `pipeline run`: the quality gate rejected the model
NOT_FOUND = 4
FORBIDDEN = 5  # authenticated, but RBAC / IAM says no
NO_CREDENTIALS = 6  # no kubeconfig or context, 401, no AWS credentials
UNREACHABLE = 7  # the API server or the AWS endpoint could not be reached
NO_REGION = 8  # no AWS region (AWS_REGION, --region, or the ARN's)
INTERRUPTED = 130

EXIT_CODES = {
    OK: "success",
    FAILED: "the check failed: invalid spec, drift found, rollout rolled back or failed",
    USAGE: "bad flags, unreadable input, or an optional extra that is not installed",
    GATE_REJECTED: "pipeline run: the quality gate rejected the model",
    NOT_FOUND: "the object does not exist",
    FORBIDDEN: "not allowed (Kubernetes RBAC or AWS IAM)",
    NO_CREDENTIALS: "no credentials: no kubeconfig or context, rejected token, no AWS credentials",
    UNREACHABLE: "the Kubernetes API server or the AWS endpoint is unreachable",
    NO_REGION: "no AWS region",
    INTERRUPTED: "interrupted",
}

OUTPUT_FORMATS = ("json", "yaml", "wide", "name")
# Modules of the optional extras (pyproject.toml), and the extra that brings each: the operator image has none.
EXTRAS = {"kfp": "pipelines", "kfp_pipelines": "pipelines", "sklearn": "pipelines", "pyarrow": "cli",
          "matplotlib": "cli", "kserve": "serve", "torch": "train", "devstack": "demo", "kmock": "demo",
          "moto": "demo"}


class CliError(Exception):
    """An everyday failure: printed as one line on stderr, the process exits with `code`."""

    def __init__(self, message: str, code: int = FAILED):
        super().__init__(message)
        self.code = code


def add_cluster_flags(parser: argparse.ArgumentParser, *, all_namespaces: bool = False, top: bool = False) -> None:
    """--kubeconfig, --context, -n/--namespace (and -A where a command can span namespaces)."""
    d: Any = None if top else argparse.SUPPRESS
    g = parser.add_argument_group("cluster (as kubectl)")
    g.add_argument("--kubeconfig", default=d, metavar="PATH", help="kubeconfig file (default: $KUBECONFIG, ~/.kube/config)")
    g.add_argument("--context", default=d, help="kubeconfig context (default: the current context)")
    g.add_argument("-n", "--namespace", default=d, help="namespace (default: the context's)")
    if all_namespaces:
        g.add_argument("-A", "--all-namespaces", action="store_true", default=d, help="every namespace")


def add_verbose(parser: argparse.ArgumentParser, *, top: bool = False) -> None:
    parser.add_argument("-v", "--verbose", action="store_true", default=False if top else argparse.SUPPRESS,
                        help="show tracebacks and more detail")


def add_output(parser: argparse.ArgumentParser, formats: tuple[str, ...] = OUTPUT_FORMATS, what: str = "") -> None:
    parser.add_argument("-o", "--output", choices=formats, default=None,
                        help=f"output format: {'|'.join(formats)} (default: a human-readable table{what})")


def connect(args: argparse.Namespace) -> tuple[Any, str]:
    """An ApiClient for the flags' kubeconfig/context, and the namespace to use (-n, else the context's)."""
    from kanari.kubeclient import KubeConfigError, connect

    try:
        conn = connect(getattr(args, "kubeconfig", None), getattr(args, "context", None))
    except KubeConfigError as exc:
        raise CliError(str(exc), NO_CREDENTIALS) from None
    return conn.api_client, getattr(args, "namespace", None) or conn.namespace


def dump(doc: Any, fmt: str) -> str:
    if fmt == "json":
        return json.dumps(doc, indent=2)
    import yaml

    return yaml.safe_dump(doc, sort_keys=False).rstrip()


def table(rows: list[list[str]], indent: str = "") -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return [indent + "   ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]


def api_error(exc: Any, what: str, namespace: str | None = None) -> CliError:
    """A Kubernetes ApiException as one line and its exit code."""
    where = f" in namespace {namespace}" if namespace else ""
    status = int(getattr(exc, "status", 0) or 0)
    reason = str(getattr(exc, "reason", "") or "")
    with contextlib.suppress(ValueError, TypeError, AttributeError):
        reason = json.loads(exc.body or "{}").get("message", reason)
    if status == 404:
        return CliError(f"{what} not found{where}", NOT_FOUND)
    if status == 403:
        return CliError(f"{what}{where}: forbidden: {reason}", FORBIDDEN)
    if status == 401:
        return CliError(f"{what}: unauthorized: the API server rejected the credentials", NO_CREDENTIALS)
    if status == 0:
        return CliError(f"{what}: API server unreachable: {reason}", UNREACHABLE)
    return CliError(f"{what}: API error {status}: {reason}", FAILED)


def classify(exc: BaseException) -> CliError | None:
    """Everyday failures raised below the commands (network, credentials, region) as one line and a code."""
    if isinstance(exc, CliError):
        return exc
    if isinstance(exc, ModuleNotFoundError) and (exc.name or "").split(".")[0] in EXTRAS:
        extra = EXTRAS[(exc.name or "").split(".")[0]]
        return CliError(f"this command needs the {extra!r} extra: pip install 'kanari[{extra}]'", USAGE)
    module = type(exc).__module__ or ""
    name = type(exc).__name__
    if module.startswith("kubernetes") and name == "ApiException":
        return api_error(exc, "Kubernetes API")
    if module.startswith("urllib3") or isinstance(exc, ConnectionError):
        return CliError(f"Kubernetes API server unreachable: {_short(exc)}", UNREACHABLE)
    if module.startswith("kanari.kubeclient") and name == "KubeConfigError":
        return CliError(str(exc), NO_CREDENTIALS)
    if module.startswith("botocore"):
        return _aws(exc)
    return None


def _aws(exc: BaseException) -> CliError | None:
    name = type(exc).__name__
    if name == "NoRegionError":
        return CliError("no AWS region: set AWS_REGION (or pass --region)", NO_REGION)
    if name in ("NoCredentialsError", "PartialCredentialsError", "CredentialRetrievalError"):
        return CliError(f"no AWS credentials: {exc}", NO_CREDENTIALS)
    if name in ("EndpointConnectionError", "ConnectTimeoutError", "ReadTimeoutError", "ConnectionClosedError"):
        return CliError(f"AWS endpoint unreachable: {exc}", UNREACHABLE)
    if name == "ClientError":
        err = getattr(exc, "response", {}).get("Error", {})
        code, msg = str(err.get("Code", "")), str(err.get("Message", ""))
        if code in ("AccessDenied", "AccessDeniedException", "403"):
            return CliError(f"AWS: access denied: {msg}", FORBIDDEN)
        if code in ("UnrecognizedClientException", "InvalidClientTokenId", "ExpiredToken", "ExpiredTokenException"):
            return CliError(f"AWS: credentials rejected: {msg}", NO_CREDENTIALS)
        if code.startswith("ResourceNotFound") or code in ("404", "NoSuchKey", "NoSuchBucket") or (
            code == "ValidationException" and "not exist" in msg.lower()
        ):
            return CliError(f"AWS: not found: {msg}", NOT_FOUND)
        return CliError(f"AWS: {code}: {msg}", FAILED)
    return None


def _short(exc: BaseException) -> str:
    text = str(getattr(exc, "reason", None) or exc)
    return text.splitlines()[0][:300] if text else type(exc).__name__


def fail(err: CliError, prog: str = "kanari") -> int:
    print(f"{prog}: error: {err}", file=sys.stderr)
    return err.code
