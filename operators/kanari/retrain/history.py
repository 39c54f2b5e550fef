"""Where the retraining receiver keeps its trigger history, so dedup, cooldown and the daily cap
survive restarts: a JSON file (atomic writes) or the ModelDeployment's status.retraining list.

`claim` decides and records in one step (under a lock, or with the object's resourceVersion), so two
deliveries of the same alert cannot both start a run.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol

from kubernetes.client import CoreV1Api, CustomObjectsApi
from kubernetes.client.exceptions import ApiException
from pydantic import ValidationError
from urllib3.exceptions import HTTPError

from kanari.api.conditions import now_iso
from kanari.api.v1alpha1 import API_VERSION, GROUP, KIND, PLURAL, VERSION, RetrainRecord
from kanari.retrain.policy import (
    STARTED,
    STARTING,
    Alert,
    RetrainPolicy,
    TriggerDecision,
    decide,
    policy_from_model_deployment,
)

log = logging.getLogger("kanari.retrain.history")

STATUS_RECORDS = 20  # ModelDeploymentStatus.retraining holds at most 20
FILE_RECORDS = 100
CONFLICT_RETRIES = 5
API_TIMEOUT = (5, 20)  # connect, read: one slow API call must not hold a delivery forever
EVENT_REASON = "RetrainingTriggered"
EVENT_REASON_FAILED = "RetrainingFailed"


class StoreUnavailable(RuntimeError):
    """The store could not be read or written; nothing was recorded."""


class TriggerStore(Protocol):
    def claim(self, alert: Alert, policy: RetrainPolicy | None, now: datetime) -> TriggerDecision:
        """Decide against the stored history; when the decision is to trigger, record a Starting entry."""

    def complete(self, alert: Alert, run: str, outcome: str, message: str, now: datetime) -> None:
        """Set the outcome (and run id) of the entry `claim` recorded for this alert."""


def _record(alert: Alert, now: datetime) -> RetrainRecord:
    return RetrainRecord(
        at=now_iso(now), alert=alert.name, fingerprint=alert.fingerprint, startsAt=alert.starts_at, outcome=STARTING
    )


def _completed(
    records: list[RetrainRecord], alert: Alert, run: str, outcome: str, now: datetime
) -> list[RetrainRecord]:
    out = list(records)
    for i in range(len(out) - 1, -1, -1):
        r = out[i]
        if r.fingerprint == alert.fingerprint and r.startsAt == alert.starts_at and r.outcome == STARTING:
            out[i] = r.model_copy(update={"run": run, "outcome": outcome})
            return out
    # The claim is gone (a history set aside as corrupt in between): what happened is still recorded.
    return [*out, _record(alert, now).model_copy(update={"run": run, "outcome": outcome})]


# ------------------------------------------------------------------------------------------------ file
class FileTriggerStore:
    """History in one JSON file: {"models": {"namespace/model": [RetrainRecord, ...]}}.

    Writes go to a temporary file that replaces the old one, so a crash leaves the old or the new
    history, never half of one; an flock serialises processes sharing the file. Temporary files a killed
    process left behind are removed at start (under the flock, so never one being written).

    A history that cannot be parsed (truncated by a full disk, edited by hand) is moved aside to
    `<name>.corrupt-<unix time>` and the store starts over, telling `on_corrupt`: refusing every alert
    until someone repairs a file loses every alert meanwhile, while the cooldown only restarts.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        keep: int = FILE_RECORDS,
        on_corrupt: Callable[[str], None] | None = None,
    ):
        self.path = Path(path)
        self.keep = keep
        self.on_corrupt = on_corrupt
        self.set_aside: list[Path] = []
        self._lock = threading.Lock()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._lock, self._flock():
            for stale in self.path.parent.glob(f".{self.path.name}.*"):
                stale.unlink(missing_ok=True)

    @contextlib.contextmanager
    def _flock(self) -> Iterator[None]:
        with open(self.path.with_name(self.path.name + ".lock"), "a") as lockfile:
            fcntl.flock(lockfile, fcntl.LOCK_EX)
            yield

    @contextlib.contextmanager
    def _locked(self) -> Iterator[dict[str, list[RetrainRecord]]]:
        with self._lock, self._flock():
            yield self._read()

    def _read(self) -> dict[str, list[RetrainRecord]]:
        try:
            text = self.path.read_text()
        except FileNotFoundError:
            return {}
        except OSError as exc:
            raise StoreUnavailable(f"trigger history unreadable: {exc.strerror}") from None
        try:
            doc = json.loads(text)
            return {str(k): [RetrainRecord.model_validate(r) for r in v] for k, v in doc["models"].items()}
        except (ValueError, KeyError, TypeError, AttributeError, ValidationError, RecursionError) as exc:
            aside = self.path.with_name(f"{self.path.name}.corrupt-{int(time.time())}")
            try:
                os.replace(self.path, aside)
            except OSError as move:
                raise StoreUnavailable(f"trigger history corrupt and cannot be moved aside: {move.strerror}") from None
            self.set_aside.append(aside)
            message = f"trigger history {self.path.name} was corrupt ({type(exc).__name__}); moved aside to {aside.name}"
            log.error("%s; starting a new history", message)
            if self.on_corrupt is not None:
                self.on_corrupt(message)
            return {}

    def _write(self, models: dict[str, list[RetrainRecord]]) -> None:
        doc = {"models": {k: [r.model_dump() for r in v[-self.keep :]] for k, v in models.items()}}
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=f".{self.path.name}.")
        try:
            with os.fdopen(fd, "w") as fh:
                json.dump(doc, fh, indent=1)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def history(self, namespace: str, model: str) -> list[RetrainRecord]:
        with self._locked() as models:
            return models.get(f"{namespace}/{model}", [])

    def claim(self, alert: Alert, policy: RetrainPolicy | None, now: datetime) -> TriggerDecision:
        with self._locked() as models:
            key = f"{alert.namespace}/{alert.model}"
            decision = decide(alert, policy, models.get(key, []), now)
            if decision.trigger:
                models.setdefault(key, []).append(_record(alert, now))
                self._write(models)
            return decision

    def complete(self, alert: Alert, run: str, outcome: str, message: str, now: datetime) -> None:
        with self._locked() as models:
            key = f"{alert.namespace}/{alert.model}"
            models[key] = _completed(models.get(key, []), alert, run, outcome, now)
            self._write(models)


# ------------------------------------------------------------------------------------------ kubernetes
def _get_model_deployment(custom: CustomObjectsApi, namespace: str, name: str) -> dict[str, Any] | None:
    """The ModelDeployment, None when it does not exist; any other failure is StoreUnavailable, never None."""
    try:
        obj: dict[str, Any] = custom.get_namespaced_custom_object(
            GROUP, VERSION, namespace, PLURAL, name, _request_timeout=API_TIMEOUT
        )
        return obj
    except ApiException as exc:
        if exc.status == 404:
            return None
        raise StoreUnavailable(f"reading {KIND} {namespace}/{name}: {exc.status} {exc.reason}") from None
    except (OSError, HTTPError) as exc:
        raise StoreUnavailable(f"reading {KIND} {namespace}/{name}: {type(exc).__name__}") from None


class KubernetesTriggerStore:
    """History in the ModelDeployment's status.retraining, written with the object's resourceVersion
    (a concurrent writer makes the patch fail with 409 and the claim is decided again), plus an Event
    on the ModelDeployment for every run started or failed."""

    def __init__(self, custom: CustomObjectsApi, core: CoreV1Api, component: str = "kanari-drift-receiver"):
        self.custom = custom
        self.core = core
        self.component = component

    def _get(self, namespace: str, name: str) -> dict[str, Any] | None:
        return _get_model_deployment(self.custom, namespace, name)

    @staticmethod
    def _records(obj: dict[str, Any]) -> list[RetrainRecord]:
        raw = (obj.get("status") or {}).get("retraining") or []
        out = []
        for r in raw if isinstance(raw, list) else []:
            try:
                out.append(RetrainRecord.model_validate(r))
            except ValidationError:
                # A record this receiver did not write (someone else patched status): skipped, not fatal.
                log.warning("ignoring an unreadable status.retraining record of %s", (obj.get("metadata") or {}).get("name"))
        return out

    def _patch(self, obj: dict[str, Any], records: list[RetrainRecord]) -> bool:
        """False on a conflict (someone else wrote first)."""
        meta = obj["metadata"]
        body = {
            "metadata": {"resourceVersion": meta.get("resourceVersion")},
            "status": {"retraining": [r.model_dump() for r in records[-STATUS_RECORDS:]]},
        }
        try:
            self.custom.patch_namespaced_custom_object_status(
                GROUP, VERSION, meta["namespace"], PLURAL, meta["name"], body, _request_timeout=API_TIMEOUT
            )
            return True
        except ApiException as exc:
            if exc.status == 409:
                return False
            raise StoreUnavailable(f"patching {KIND} {meta['namespace']}/{meta['name']}: {exc.status} {exc.reason}") from None
        except (OSError, HTTPError) as exc:
            raise StoreUnavailable(f"patching {KIND} {meta['namespace']}/{meta['name']}: {type(exc).__name__}") from None

    def claim(self, alert: Alert, policy: RetrainPolicy | None, now: datetime) -> TriggerDecision:
        for _ in range(CONFLICT_RETRIES):
            obj = self._get(alert.namespace, alert.model) if alert.namespace and alert.model else None
            if obj is None:
                decision = decide(alert, policy, [], now)
                if decision.trigger:
                    return TriggerDecision(False, "no_model", f"no {KIND} {alert.namespace}/{alert.model}")
                return decision
            records = self._records(obj)
            decision = decide(alert, policy, records, now)
            if not decision.trigger or self._patch(obj, [*records, _record(alert, now)]):
                return decision
        raise StoreUnavailable(f"{KIND} {alert.namespace}/{alert.model}: kept changing; gave up after {CONFLICT_RETRIES} tries")

    def complete(self, alert: Alert, run: str, outcome: str, message: str, now: datetime) -> None:
        for _ in range(CONFLICT_RETRIES):
            obj = self._get(alert.namespace, alert.model)
            if obj is None:
                raise StoreUnavailable(f"{KIND} {alert.namespace}/{alert.model} disappeared")
            if self._patch(obj, _completed(self._records(obj), alert, run, outcome, now)):
                self._event(obj, outcome, message, now)
                return
        raise StoreUnavailable(f"{KIND} {alert.namespace}/{alert.model}: kept changing; gave up after {CONFLICT_RETRIES} tries")

    def _event(self, obj: dict[str, Any], outcome: str, message: str, now: datetime) -> None:
        meta = obj["metadata"]
        failed = outcome != STARTED
        event = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"generateName": f"{meta['name']}.", "namespace": meta["namespace"]},
            "involvedObject": {
                "apiVersion": API_VERSION,
                "kind": KIND,
                "name": meta["name"],
                "namespace": meta["namespace"],
                "uid": meta.get("uid"),
                "resourceVersion": meta.get("resourceVersion"),
            },
            "reason": EVENT_REASON_FAILED if failed else EVENT_REASON,
            "message": message,
            "type": "Warning" if failed else "Normal",
            "source": {"component": self.component},
            "reportingComponent": self.component,
            "firstTimestamp": now_iso(now),
            "lastTimestamp": now_iso(now),
            "count": 1,
        }
        try:
            self.core.create_namespaced_event(meta["namespace"], event, _request_timeout=API_TIMEOUT)
        except (ApiException, OSError, HTTPError) as exc:
            # The record in status is what counts; a lost Event only costs visibility.
            log.warning("could not emit Event %s on %s/%s: %s", event["reason"], meta["namespace"], meta["name"], exc)


class ModelDeploymentPolicies:
    """Each alert's retraining policy read from spec.monitoring.retrain of the ModelDeployment it names."""

    def __init__(self, custom: Callable[[], CustomObjectsApi]):
        # A factory: the client is made on first use and again after a failure to make it (the
        # kubeconfig may appear after the receiver starts, as in the devstack).
        self._factory = custom
        self._custom: CustomObjectsApi | None = None

    def __call__(self, namespace: str, name: str) -> RetrainPolicy | None:
        try:
            if self._custom is None:
                self._custom = self._factory()
        except Exception as exc:  # noqa: BLE001 - config loading raises several unrelated types
            raise StoreUnavailable(f"no Kubernetes client: {type(exc).__name__}") from None
        obj = _get_model_deployment(self._custom, namespace, name)
        return None if obj is None else policy_from_model_deployment(obj)
