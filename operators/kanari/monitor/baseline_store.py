"""Where the monitor gets baselines: s3:// (boto3) or file:// directories, cached by URI and version.

The endpoint comes from boto3's own configuration (AWS_ENDPOINT_URL, as with LocalStack), never from code.
"""

from __future__ import annotations

import json
import threading
import time
import urllib.parse
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from kanari.drift.model_monitor import CONSTRAINTS, STATISTICS, Baseline, parse_baseline, read_baseline

_S3_CONFIG = Config(connect_timeout=5, read_timeout=20, retries={"max_attempts": 3, "mode": "standard"})
MAX_CACHED = 64
MAX_FAILURES = 256
RETRY_AFTER_SECONDS = 15.0


class BaselineUnavailable(RuntimeError):
    """The baseline could not be fetched or parsed; the message says where and why. It names buckets,
    keys and paths, so it goes to the monitor's log and never back to a caller."""


@dataclass(frozen=True)
class BaselineRef:
    uri: str
    version: str


def normalise_uri(uri: str) -> str:
    """The directory form: a URI naming statistics.json itself points at its directory."""
    uri = uri.strip()
    if uri.endswith("/" + STATISTICS):
        uri = uri[: -len(STATISTICS)]
    return uri.rstrip("/")


def load_from_uri(uri: str) -> Baseline:
    parsed = urllib.parse.urlparse(uri)
    if parsed.scheme == "file":
        try:
            return read_baseline(Path(urllib.parse.unquote(parsed.path)))
        except ValueError as exc:
            raise BaselineUnavailable(f"{uri}: {exc}") from None
    if parsed.scheme == "s3":
        return _load_s3(parsed.netloc, parsed.path.lstrip("/"), uri)
    raise BaselineUnavailable(f"{uri}: unsupported scheme (use s3:// or file://)")


def _load_s3(bucket: str, prefix: str, uri: str) -> Baseline:
    client = boto3.client("s3", config=_S3_CONFIG)
    docs: list[Any] = []
    for name in (STATISTICS, CONSTRAINTS):
        key = f"{prefix}/{name}" if prefix else name
        try:
            body = client.get_object(Bucket=bucket, Key=key)["Body"].read()
            docs.append(json.loads(body))
        except (ClientError, BotoCoreError) as exc:
            raise BaselineUnavailable(f"s3://{bucket}/{key}: {exc}") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise BaselineUnavailable(f"s3://{bucket}/{key}: not JSON: {exc}") from None
    try:
        return parse_baseline(*docs)
    except ValueError as exc:
        raise BaselineUnavailable(f"{uri}: {exc}") from None


class BaselineCache:
    """Parsed baselines by (uri, version), least recently used dropped first; a failed fetch is
    remembered for RETRY_AFTER_SECONDS so a broken baseline is not fetched on every event."""

    def __init__(
        self,
        loader: Callable[[str], Baseline] = load_from_uri,
        max_entries: int = MAX_CACHED,
        clock: Callable[[], float] = time.monotonic,
        max_failures: int = MAX_FAILURES,
    ):
        self._loader = loader
        self._max = max_entries
        self._max_failures = max_failures
        self._clock = clock
        self._entries: OrderedDict[BaselineRef, Baseline] = OrderedDict()
        # Bounded too: every entry is a URI someone made the monitor try (least recently failed dropped).
        self._failures: OrderedDict[BaselineRef, tuple[float, str]] = OrderedDict()
        # get() runs in executor threads while the event loop reads the cache.
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def failures(self) -> int:
        return len(self._failures)

    def cached(self, ref: BaselineRef) -> Baseline | None:
        with self._lock:
            found = self._entries.get(ref)
            if found is not None:
                self._entries.move_to_end(ref)
            return found

    def get(self, ref: BaselineRef) -> Baseline:
        """Blocking fetch (run it off the event loop)."""
        found = self.cached(ref)
        if found is not None:
            return found
        with self._lock:
            failed = self._failures.get(ref)
        if failed and self._clock() - failed[0] < RETRY_AFTER_SECONDS:
            raise BaselineUnavailable(failed[1])
        try:
            baseline = self._loader(ref.uri)
        except BaselineUnavailable as exc:
            with self._lock:
                self._failures[ref] = (self._clock(), str(exc))
                self._failures.move_to_end(ref)
                while len(self._failures) > self._max_failures:
                    self._failures.popitem(last=False)
            raise
        with self._lock:
            self._failures.pop(ref, None)
            self._entries[ref] = baseline
            while len(self._entries) > self._max:
                self._entries.popitem(last=False)
        return baseline
