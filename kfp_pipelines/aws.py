"""boto3 clients and S3 helpers shared by the pipeline steps.

Clients come from Kanari's one factory (kanari.awsclient: AWS_REGION, AWS_ENDPOINT_URL as with LocalStack
or a moto server, botocore's retry modes with AWS_RETRY_MODE / AWS_MAX_ATTEMPTS); a request that still
fails raises.
Every API call is counted, so a step can report how many calls it made (polling must back off).
"""

from __future__ import annotations

import collections
import io
import json
import tarfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
from botocore.exceptions import ClientError
from kanari import awsclient

from kfp_pipelines.errors import InputError, StepFailed

_calls: collections.Counter[str] = collections.Counter()
_calls_lock = threading.Lock()
_session: boto3.session.Session | None = None


def _count_call(event_name: str, **kwargs: Any) -> None:
    # event_name: "before-call.<service>.<Operation>"
    _, service, operation = event_name.split(".", 2)
    with _calls_lock:
        _calls[f"{service}.{operation}"] += 1


def api_calls() -> dict[str, int]:
    with _calls_lock:
        return dict(_calls)


def session() -> boto3.session.Session:
    global _session
    if _session is None:
        _session = boto3.session.Session()
        # One counter for every client of this process: a before-call fires once per API call,
        # whatever retries botocore makes underneath.
        _session.events.register("before-call.*.*", _count_call)
    return _session


def client(service: str, max_attempts: int | None = None, region: str | None = None) -> Any:
    return awsclient.client(service, region_name=region, session=session(), config=awsclient.retry_config(max_attempts))


def error_code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def error_message(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Message", "")) or str(exc)


def is_not_found(exc: ClientError) -> bool:
    """SageMaker's answer to a Describe of a job that does not exist (ValidationException on some APIs)."""
    msg = error_message(exc).lower()
    return error_code(exc) in ("ResourceNotFound", "ValidationException") and (
        "not found" in msg or "could not find" in msg or "does not exist" in msg)


# ------------------------------------------------------------------------------------------------ S3
@dataclass(frozen=True)
class S3Uri:
    bucket: str
    key: str

    @classmethod
    def parse(cls, uri: str, parameter: str) -> S3Uri:
        if not isinstance(uri, str) or not uri.startswith("s3://"):
            raise InputError(parameter, f"expected an s3://bucket/key URI, got {uri!r}")
        bucket, _, key = uri[len("s3://") :].partition("/")
        if not bucket:
            raise InputError(parameter, f"no bucket in {uri!r}")
        return cls(bucket, key)

    def __str__(self) -> str:
        return f"s3://{self.bucket}/{self.key}"

    def join(self, *parts: str) -> S3Uri:
        key = "/".join(p.strip("/") for p in (self.key, *parts) if p.strip("/"))
        return S3Uri(self.bucket, key)

    def prefix(self) -> str:
        return self.key if not self.key or self.key.endswith("/") else self.key + "/"


def check_bucket(s3: Any, bucket: str, parameter: str = "bucket") -> None:
    try:
        s3.head_bucket(Bucket=bucket)
    except ClientError as exc:
        if error_code(exc) in ("404", "NoSuchBucket", "NotFound"):
            raise InputError(parameter, f"bucket {bucket!r} does not exist") from None
        if error_code(exc) in ("403", "AccessDenied"):
            raise InputError(parameter, f"no access to bucket {bucket!r}") from None
        raise StepFailed(f"S3 HeadBucket {bucket}: {error_message(exc)}") from exc


def list_keys(s3: Any, uri: S3Uri) -> list[str]:
    keys: list[str] = []
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=uri.bucket, Prefix=uri.prefix()):
        keys.extend(obj["Key"] for obj in page.get("Contents", []))
    return keys


def exists(s3: Any, uri: S3Uri) -> bool:
    try:
        s3.head_object(Bucket=uri.bucket, Key=uri.key)
        return True
    except ClientError as exc:
        if error_code(exc) in ("404", "NoSuchKey", "NotFound"):
            return False
        raise StepFailed(f"S3 HeadObject {uri}: {error_message(exc)}") from exc


def put_bytes(s3: Any, uri: S3Uri, body: bytes, content_type: str = "application/octet-stream") -> None:
    s3.put_object(Bucket=uri.bucket, Key=uri.key, Body=body, ContentType=content_type)


def put_json(s3: Any, uri: S3Uri, doc: Any) -> None:
    put_bytes(s3, uri, json.dumps(doc, indent=2, sort_keys=True).encode(), "application/json")


def get_bytes(s3: Any, uri: S3Uri) -> bytes:
    try:
        return bytes(s3.get_object(Bucket=uri.bucket, Key=uri.key)["Body"].read())
    except ClientError as exc:
        raise StepFailed(f"cannot read {uri}: {error_message(exc)}") from exc


def get_json(s3: Any, uri: S3Uri) -> Any:
    return json.loads(get_bytes(s3, uri))


def download_prefix(s3: Any, uri: S3Uri, dest: Path) -> list[Path]:
    """Copy every object under a prefix, keeping the relative layout (SageMaker File input mode)."""
    out = []
    for key in list_keys(s3, uri):
        rel = key[len(uri.prefix()) :] if uri.key else key
        if not rel or rel.endswith("/"):
            continue
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        s3.download_file(uri.bucket, key, str(target))
        out.append(target)
    return out


def upload_dir(s3: Any, src: Path, uri: S3Uri) -> int:
    n = 0
    for path in sorted(p for p in src.rglob("*") if p.is_file()):
        s3.upload_file(str(path), uri.bucket, uri.join(str(path.relative_to(src))).key)
        n += 1
    return n


def tar_gz(src: Path) -> bytes:
    """A directory as a tar.gz with members relative to it (how SageMaker packs model and output dirs)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        for path in sorted(src.rglob("*")):
            if path.is_file():
                tf.add(path, arcname=str(path.relative_to(src)))
    return buf.getvalue()


def extract_tar_gz(data: bytes, dest: Path) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tf:
        tf.extractall(dest, filter="data")
