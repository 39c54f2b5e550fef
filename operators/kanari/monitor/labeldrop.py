"""The S3 label drop: label files a team writes under a prefix, read by the drift monitor with its own IRSA
role (s3:ListBucket on the prefix, s3:GetObject under it; nothing else).

Layout: `s3://<bucket>/<prefix><namespace>/<name>/<anything>.jsonl` (one `{"id": ..., "label": ...}` per
line) or `.csv` (a header row with `id` and `label` columns). Everything else under the prefix is skipped.

Idempotent: a file is read once per ETag (a rewritten file is read again), and a label whose id has already
joined is counted as a duplicate by the join store, never a second time; so a file read twice, by a restart
or an overwrite, is not double-counted. A file with one bad row is refused whole, with its key, row and
field in the monitor's log and in kanari_label_files{outcome="refused"}: a half-applied file could not be
fixed and re-sent without counting its first half twice.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import urllib.parse
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from kanari import awsclient
from kanari.judging.labels import parse_label

log = logging.getLogger("kanari.monitor.labeldrop")

MAX_SEEN = 100_000
MAX_ERRORS = 20


@dataclass(frozen=True)
class LabelFile:
    key: str
    namespace: str
    model: str
    pairs: list[tuple[str, float]]
    error: str | None = None  # the file was refused: "<key> row <n>: <field>: <why>"


def split_uri(uri: str) -> tuple[str, str]:
    parsed = urllib.parse.urlparse(uri)
    if parsed.scheme != "s3" or not parsed.netloc:
        raise ValueError(f"--labels-s3-uri: {uri!r} is not an s3://bucket/prefix/ URI")
    prefix = parsed.path.lstrip("/")
    return parsed.netloc, prefix if not prefix or prefix.endswith("/") else prefix + "/"


def parse_file(key: str, raw: bytes, task: str) -> list[tuple[str, float]]:
    """The (id, label) pairs of a .jsonl or .csv label file; ValueError naming the key, row and field."""
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise ValueError(f"{key}: not UTF-8") from None
    pairs: list[tuple[str, float]] = []
    if key.endswith(".jsonl"):
        for n, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                doc = json.loads(line)
            except ValueError:
                raise ValueError(f"{key} row {n}: not JSON") from None
            pairs.append(parse_label(doc, task, f"{key} row {n}"))  # type: ignore[arg-type]
        return pairs
    reader = csv.DictReader(io.StringIO(text))
    missing = [c for c in ("id", "label") if c not in (reader.fieldnames or [])]
    if missing:
        raise ValueError(f"{key} row 1: header lacks {', '.join(missing)} (columns: id,label)")
    for n, row in enumerate(reader, start=2):
        pairs.append(parse_label({"id": row.get("id"), "label": row.get("label")}, task, f"{key} row {n}"))  # type: ignore[arg-type]
    return pairs


class LabelDrop:
    """Lists the prefix and reads the new files (blocking: run it off the event loop)."""

    def __init__(self, uri: str, task_of: Callable[[str, str], str | None], max_bytes: int,
                 client_factory: Callable[[], Any] | None = None):
        self.bucket, self.prefix = split_uri(uri)
        self.task_of = task_of
        self.max_bytes = max_bytes
        self._client_factory = client_factory or (lambda: awsclient.client("s3"))
        self._client: Any = None
        self.seen: OrderedDict[str, str] = OrderedDict()  # key -> ETag read
        self.errors: list[str] = []  # the last few refusals, for /healthz
        self.polls = 0
        self.failures = 0

    def poll(self) -> list[LabelFile]:
        """The files not read yet at their current ETag. An S3 error propagates: the caller counts it and
        tries again next interval (an unreachable drop is reported, never taken for an empty one)."""
        if self._client is None:
            self._client = self._client_factory()
        out: list[LabelFile] = []
        pages = self._client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=self.prefix)
        for page in pages:
            for obj in page.get("Contents") or []:
                found = self._read(obj)
                if found is not None:
                    out.append(found)
        self.polls += 1
        return out

    def _read(self, obj: dict[str, Any]) -> LabelFile | None:
        key, etag = str(obj["Key"]), str(obj.get("ETag", ""))
        if not key.endswith((".jsonl", ".csv")) or self.seen.get(key) == etag:
            return None
        parts = key[len(self.prefix):].split("/")
        if len(parts) < 3 or not parts[0] or not parts[1]:
            return self._refuse(key, etag, "", "", f"{key}: expected <prefix><namespace>/<name>/<file>")
        namespace, model = parts[0], parts[1]
        task = self.task_of(namespace, model)
        if task is None:
            # Not (yet) a ModelDeployment with groundTruth: left unread, so it is taken once the model is.
            return None
        if int(obj.get("Size") or 0) > self.max_bytes:
            return self._refuse(key, etag, namespace, model, f"{key}: larger than {self.max_bytes} bytes; split it")
        body = self._client.get_object(Bucket=self.bucket, Key=key, IfMatch=etag)["Body"].read(self.max_bytes + 1)
        if len(body) > self.max_bytes:
            return self._refuse(key, etag, namespace, model, f"{key}: larger than {self.max_bytes} bytes; split it")
        try:
            pairs = parse_file(key, body, task)
        except ValueError as exc:
            return self._refuse(key, etag, namespace, model, str(exc))
        self._mark(key, etag)
        return LabelFile(key, namespace, model, pairs)

    def _refuse(self, key: str, etag: str, namespace: str, model: str, error: str) -> LabelFile:
        log.warning("label file refused: %s", error)
        self.errors = [*self.errors, error][-MAX_ERRORS:]
        self._mark(key, etag)  # refused at this ETag; a corrected file (new ETag) is read again
        return LabelFile(key, namespace, model, [], error)

    def _mark(self, key: str, etag: str) -> None:
        self.seen[key] = etag
        self.seen.move_to_end(key)
        while len(self.seen) > MAX_SEEN:
            self.seen.popitem(last=False)
