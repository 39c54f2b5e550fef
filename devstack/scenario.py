"""`kanari demo`: the whole Kanari loop on one machine, for real, on the embedded defaults.

1. start the embedded defaults (devstack.services);
2. train v1 through the pipeline (kfp.local), register it with lineage, approve it, deploy it;
3. send steady traffic through the router (payloads logged to the drift monitor as KServe's logger does);
4. train v2 and roll it out as a canary: the operator's analysis against Prometheus promotes it;
5. roll out a deliberately broken v3 (a fault-injection model): the analysis fails, the operator rolls back;
   then an Inferentia rollout waits in CapacityPending on a full simulated NodePool until its limit is raised;
6. shift the live inputs: drift rises, the generated alert fires, Alertmanager calls the receiver, which
   starts a retraining run; the new model is registered, applied and rolled out;
7. write the report: the dashboard's static export of the run, and a text summary with every decision and
   the lineage.

Whatever happens, every process started is stopped at the end (also on Ctrl-C or SIGTERM).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import json
import os
import shutil
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO, TypeVar

import yaml
from kanari import registry_metadata as keys
from kanari.api import v1alpha1 as api
from kanari.rollout.prometheus import PrometheusError
from kanari.scrape import DEFAULT_MONITOR_JOB

from devstack import models, report
from devstack.kubeapi import KubeApi
from devstack.loadgen import LoadGenerator, Shift, read_outcomes
from devstack.observe import Observer
from devstack.predictor import FaultInjection
from devstack.services import EmbeddedStack, StackSettings
from devstack.supervisor import DemoLock, descendants, stop_pids

T = TypeVar("T")

NAMESPACE = "demo"
NAME = "fraud-scorer"
BUCKET = "kanari-demo"
DATASET_KEY = "datasets/transactions.csv"
# The covariate shift the demo injects into live traffic (and into the data that arrives for retraining).
SHIFT = {"mean radius": 1.45, "mean perimeter": 1.45, "mean area": 2.0, "mean texture": 1.5,
         "worst radius": 1.45, "worst perimeter": 1.45, "worst area": 2.0, "worst texture": 1.5}
DRIFT_WARN, DRIFT_CRITICAL = 0.3, 0.6
FAULT = FaultInjection(error_rate=0.35, latency_seconds=0.3)
# The quality phase's v5: v2's weights, as fast and error-free, but it misses 60% of the positives v2 catches.
QUALITY_FAULT = FaultInjection(miss_rate=0.6)
LABEL_DELAY = 2.0  # seconds between an answer and its label reaching the monitor (delayed ground truth)
SCENARIOS = ("rollout", "drift")

STAND_INS = [
    "Kubernetes API: kmock's KubernetesEmulator with API-server bookkeeping (devstack.cluster)",
    "KServe controller + Knative: revisions are KServe model-server processes (devstack.kserve_standin)",
    "Istio ingress, Knative traffic split and queue-proxy metrics, KServe payload logger: the router "
    "(devstack.router)",
    "prometheus-operator: PrometheusRules written to Prometheus rule files and reloaded (devstack.rule_sync)",
    "AWS SageMaker and S3: a moto server on loopback (as LocalStack would be)",
    "SageMaker training: the pipeline's local training backend (kfp.local, train.py under SageMaker's contract)",
    "Argo CD: the demo applies the GitOps manifest the pipeline writes",
    "Karpenter, the Neuron device plugin and the scheduler: the NodePool, Nodes and predictor Pods of the capacity "
    "phase are objects the demo writes (devstack.capacity_phase)",
]


@dataclass(frozen=True)
class Profile:
    name: str
    analysis_interval: str
    analysis_count: int
    min_samples: int
    drift_for: str
    drift_window: int
    drift_min_samples: int
    drift_evaluate_interval: float
    drift_idle_timeout: float
    rate: float
    idle_grace: float
    resync_seconds: float
    epochs: int
    rollout_timeout: float
    drift_timeout: float


NORMAL = Profile("normal", "8s", 2, 25, "15s", 500, 150, 2.0, 30.0, 25.0, 20.0, 5.0, 25, 240.0, 300.0)
FAST = Profile("fast", "5s", 1, 15, "6s", 300, 100, 1.0, 15.0, 25.0, 10.0, 2.0, 12, 150.0, 240.0)


class DemoFailed(RuntimeError):
    """An outcome the demo promises did not happen; the message says which and why."""


def platform_manifest(profile: Profile, retrain_parameters: dict[str, str] | None = None) -> dict[str, Any]:
    """The ModelDeployment as the platform team writes it in Git; the pipeline fills in the model."""
    return {
        "apiVersion": api.API_VERSION,
        "kind": api.KIND,
        "metadata": {"name": NAME, "namespace": NAMESPACE},
        "spec": {
            "model": {"format": "pytorch", "requireApproval": True},
            "serving": {"accelerator": "cpu", "cpu": "1", "memory": "1Gi", "minReplicas": 1, "maxReplicas": 1,
                        "deploymentMode": "Serverless"},
            "rollout": {
                "strategy": "Canary",
                "steps": [{"setWeight": 20}, {"analysis": {}}, {"setWeight": 50}, {"analysis": {}}],
                "analysis": {
                    "interval": profile.analysis_interval,
                    "count": profile.analysis_count,
                    "failureLimit": 0,
                    "inconclusiveLimit": 6,
                    "minSampleCount": profile.min_samples,
                    "metrics": [
                        {"name": "success-rate", "template": "request-success-rate", "thresholdRange": {"min": 0.95}},
                        {"name": "p99-latency", "template": "request-latency-p99", "thresholdRange": {"max": 0.25}},
                    ],
                },
                "progressDeadline": "5m",
                # The retro-verdict: for 10 minutes after a promotion, realised recall from delayed labels is
                # checked against the recall registered with the model package.
                "rollbackWindow": {"duration": "10m", "metric": "recall", "tolerance": 0.05, "minLabels": 30,
                                   "alpha": 0.01, "interval": profile.analysis_interval},
            },
            "monitoring": {
                # Labels arrive later, keyed by the inference id the payload logger sends (the request's Ce-Id).
                "groundTruth": {"task": "binary", "threshold": 0.5, "ttl": "10m"},
                # The bundled dataset's baseline is ~250 rows: PSI between two samples of the same data sits
                # around 0.1-0.2 there, so the thresholds are set above that noise.
                "drift": {"method": "psi", "warn": DRIFT_WARN, "critical": DRIFT_CRITICAL, "for": profile.drift_for,
                          "windowSize": profile.drift_window},
                "retrain": {"pipeline": "kanari-training", "cooldown": "1h", "maxPerDay": 2,
                            "parameters": retrain_parameters or {}},
            },
        },
    }


def _clock(t0: float) -> str:
    s = int(time.time() - t0)
    return f"{s // 60:02d}:{s % 60:02d}"


@dataclass
class Demo:
    out: Path
    profile: Profile
    only: str | None = None
    keep: bool = False
    chaos: bool = False
    console: TextIO = field(default_factory=lambda: sys.stdout)
    t0: float = field(default_factory=time.time)
    failures: list[str] = field(default_factory=list)
    phases: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.gitops = self.out / "state" / "gitops"
        self.manifest = self.gitops / NAMESPACE / f"{NAME}.yaml"
        self.versions: dict[str, models.Registered] = {}
        self.outcomes: dict[str, str] = {}
        self.git_sha = ""
        self.frame: Any = None  # the training data's frame, the load generator's source of rows

    # ----------------------------------------------------------------------------------- output
    def say(self, text: str) -> None:
        print(f"[{_clock(self.t0)}] {text}", file=self.console, flush=True)

    def phase(self, title: str) -> None:
        self.phases[title] = time.time()
        print(f"\n[{_clock(self.t0)}] == {title}", file=self.console, flush=True)

    def show_event(self, event: report.DemoEvent) -> None:
        print(f"[{_clock(self.t0)}]    {event.kind:<11} {event.text}", file=self.console, flush=True)

    # ----------------------------------------------------------------------------------- the run
    async def run(self, stack: EmbeddedStack) -> int:
        self.stack = stack
        self.phase("Starting the embedded defaults (loopback only)")
        await asyncio.to_thread(stack.start)
        ep = stack.endpoints
        # This process runs the pipeline and talks to AWS and the cluster like a user's shell would:
        # through AWS_ENDPOINT_URL (as with LocalStack) and KUBECONFIG.
        os.environ.update(stack.aws_env())
        os.environ["KUBECONFIG"] = str(ep.kubeconfig)
        self.kube = KubeApi(ep.kube_api)
        self.observer = Observer(self.kube, NAMESPACE, NAME, ep.prometheus, stack.state / "retrain-triggers.json",
                                 self.show_event)
        watcher = asyncio.create_task(self.observer.run())
        self.load: LoadGenerator | None = None
        load_task: asyncio.Task[Any] | None = None
        try:
            await asyncio.to_thread(self._seed)
            v1 = await self._train("v1", "initial model", {"epochs": self.profile.epochs})
            training_v2 = None
            if self.only in (None, "rollout"):
                # v2 trains while v1 deploys and traffic starts: kfp.local runs in a thread of its own.
                training_v2 = asyncio.create_task(
                    self._train("v2", "more epochs", {"epochs": self.profile.epochs * 2}, background=True)
                )
            await self._deploy_first(v1)
            load_task = await self._start_load()
            if training_v2 is not None:
                v2 = await training_v2
                await self._rollout_good(v2)
                # The capacity phase rolls out a model of its own: it runs beside v3's rollout, costing no wall time.
                capacity = asyncio.create_task(self._capacity_pending(v1, v2))
                try:
                    await self._rollout_broken(v2)
                    await capacity
                finally:
                    capacity.cancel()
                await self._quality_rollback(v2)
            if self.only in (None, "drift"):
                await self._drift_and_retrain()
        finally:
            if self.load is not None:
                self.load.stop()
            if load_task is not None:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(load_task, 15)
            await asyncio.sleep(2.5)  # the last scrape and alert evaluation land in Prometheus
            watcher.cancel()
            with contextlib.suppress(BaseException):
                await watcher
        await asyncio.to_thread(self._report)
        if self.keep:
            await self._keep()
        await self.kube.close()
        return 1 if self.failures else 0

    # ------------------------------------------------------------------------------------ steps
    def _aws(self, service: str) -> Any:
        from kfp_pipelines import aws

        return aws.client(service)

    def _seed(self) -> None:
        from kfp_pipelines.data import builtin_breast_cancer

        s3 = self._aws("s3")
        s3.create_bucket(Bucket=BUCKET)
        s3.put_bucket_versioning(Bucket=BUCKET, VersioningConfiguration={"Status": "Enabled"})
        self.frame = builtin_breast_cancer()
        version = models.upload_dataset(s3, BUCKET, DATASET_KEY, self.frame)
        self._aws("sagemaker").create_model_package_group(
            ModelPackageGroupName=NAME, ModelPackageGroupDescription="Kanari demo: fraud scorer"
        )
        self.manifest.parent.mkdir(parents=True, exist_ok=True)
        self.manifest.write_text(yaml.safe_dump(platform_manifest(self.profile, self._retrain_parameters()),
                                                sort_keys=False))
        self.say(f"S3 bucket {BUCKET} (versioned), dataset s3://{BUCKET}/{DATASET_KEY} version {version[:12]}, "
                 f"model package group {NAME}, GitOps manifest {self.manifest}")

    def _retrain_parameters(self) -> dict[str, str]:
        """What the KFP launcher cannot derive from the ModelDeployment (spec.monitoring.retrain.parameters)."""
        from kfp_pipelines.local import local_role_arn

        return {"role_arn": local_role_arn(), "auto_approve": "true",
                "hyperparameters": json.dumps({"epochs": self.profile.epochs}), "manifest_dir": str(self.gitops),
                "apply_manifest": "true"}

    def _run_pipeline(self, label: str, reason: str, hyperparameters: dict[str, Any]) -> Any:
        from kfp_pipelines.local import run_local

        def progress(line: str) -> None:
            if line.startswith("> "):
                return
            if not line.startswith("    [") or "] done:" in line:
                print(f"[{_clock(self.t0)}]      {line.strip()}", file=self.console, flush=True)

        return run_local(
            bucket=BUCKET, model_package_group=NAME, dataset_uri=f"s3://{BUCKET}/{DATASET_KEY}", model_name=NAME,
            namespace=NAMESPACE, reason=reason, hyperparameters=hyperparameters, manifest_dir=self.gitops,
            git_sha=self.git_sha, workdir=self.out / "state" / "pipeline", progress=progress,
        )

    async def _train(
        self, label: str, why: str, hyperparameters: dict[str, Any], background: bool = False
    ) -> models.Registered:
        title = f"Training {label} through the pipeline (kfp.local; SageMaker calls go to the moto server)"
        if background:
            self.say(f"{title}, in the background")
        else:
            self.phase(title)
        result = await _in_thread(self._run_pipeline, label, f"demo {label} {why}", hyperparameters)
        if not result.gate_passed or not result.model_package_arn:
            raise DemoFailed(f"{label}: the quality gate rejected the model: {result.gate_reason}")
        sm = self._aws("sagemaker")
        await asyncio.to_thread(models.approve, sm, result.model_package_arn, f"demo: {label} reviewed")
        registered = await asyncio.to_thread(models.describe, sm, result.model_package_arn)
        self.versions[label] = registered
        self.say(f"{label} = {registered.version}: pr_auc {result.metrics.get('pr_auc', 0):.3f}, training job "
                 f"{result.training_job_name}, run {result.pipeline_run_id}; registered and approved "
                 f"(`kanari models approve {registered.version}`) in {result.seconds:.0f}s")
        return registered

    async def _apply(self) -> None:
        from kfp_pipelines.deployment import apply
        from kfp_pipelines.kube import custom_objects_api

        obj = yaml.safe_load(self.manifest.read_text())

        outcome = await asyncio.to_thread(lambda: apply(custom_objects_api(), obj))
        self.say(f"applied {self.manifest.name} to the cluster stand-in ({outcome}), as Argo CD would sync it")

    async def _deploy_first(self, v1: models.Registered) -> None:
        self.phase(f"Deploying v1 ({v1.version}) through the operator")
        await self._apply()
        await self.observer.until(lambda s: s.phase == "Succeeded" and s.stable == v1.version,
                                  self.profile.rollout_timeout, f"{v1.version} to serve")
        self.outcomes[v1.version] = "deployed"

    async def _start_load(self) -> asyncio.Task[Any]:
        url = f"{self.stack.endpoints.router}/serving/{NAMESPACE}/{NAME}/v1/models/{NAME}:predict"
        rows = self.frame.drop(columns=["label"])
        self.load = LoadGenerator(url, rows, self.profile.rate, self.out / "requests.jsonl",
                                  labels=self.frame["label"].astype(int).tolist())
        self.say(f"load generator: {self.profile.rate:g} requests/s to {url}")
        task = asyncio.create_task(self.load.run())
        await asyncio.sleep(3)  # the drift window and the stable request metrics fill up
        return task

    def _write_manifest(self, target: models.Registered, baseline_uri: str) -> None:
        """Point the GitOps manifest at a version registered outside the pipeline (what its emit step does)."""
        from kfp_pipelines.deployment import build, read_existing, write

        meta = target.metadata
        lineage = api.Lineage(
            modelPackageArn=target.arn, trainingJob=meta.get(keys.TRAINING_JOB),
            pipelineRun=meta.get(keys.PIPELINE_RUN), datasetUri=meta.get(keys.DATASET_URI),
            gitSha=meta.get(keys.GIT_SHA),
        )
        obj = build(read_existing(self.manifest), name=NAME, namespace=NAMESPACE, model_package_arn=target.arn,
                    baseline_uri=baseline_uri, lineage=lineage, dataset_version=meta.get(keys.DATASET_VERSION, ""))
        write(obj, self.manifest)

    async def _rollout(self, target: models.Registered, expect: str, chaos: bool = False) -> None:
        await self._apply()
        stable_before = self.observer.snapshot.stable
        await self.observer.until(lambda s: s.canary == target.version or s.stable == target.version,
                                  60, f"the rollout of {target.version} to start")
        if chaos:
            await self._chaos_operator()
        if expect == "promoted":
            await self.observer.until(lambda s: s.phase == "Succeeded" and s.stable == target.version,
                                      self.profile.rollout_timeout, f"{target.version} to be promoted")
        else:
            await self.observer.until(lambda s: s.phase in ("RolledBack", "Succeeded", "Failed"),
                                      self.profile.rollout_timeout, f"the rollout of {target.version} to end")
            snap = self.observer.snapshot
            if snap.phase != "RolledBack" or snap.stable != stable_before:
                raise DemoFailed(f"{target.version} was expected to be rolled back, but the ModelDeployment is "
                                 f"{snap.phase}: {snap.message}")
        self.outcomes[target.version] = "promoted" if expect == "promoted" else "rolled back"

    async def _rollout_good(self, v2: models.Registered) -> None:
        self.phase(f"Canary rollout of v2 ({v2.version}): analysis against real Prometheus decides")
        await self._rollout(v2, "promoted", chaos=self.chaos)

    async def _rollout_broken(self, v2: models.Registered) -> None:
        self.phase("Rollout of a deliberately broken v3 (fault-injection model)")
        sm, s3 = self._aws("sagemaker"), self._aws("s3")
        v3 = await asyncio.to_thread(
            models.register_fault_model, sm, s3, v2, FAULT,
            f"fault-injection model: {v2.version} weights that fail {FAULT.error_rate:.0%} of requests "
            f"and add {FAULT.latency_seconds * 1000:.0f} ms",
        )
        await asyncio.to_thread(models.approve, sm, v3.arn, "demo: fault-injection model, approved on purpose")
        self.versions["v3"] = v3
        self.say(f"v3 = {v3.version}: {v2.version}'s weights + fault-injection.json "
                 f"(errorRate {FAULT.error_rate}, latencySeconds {FAULT.latency_seconds}); registry metadata "
                 f"{models.FAULT_KEY}={v3.metadata[models.FAULT_KEY]!r}; approved on purpose")
        self._write_manifest(v3, v2.baseline_uri)
        await self._rollout(v3, "rolled back")
        md = self.observer.md or {}
        failed = [
            (metric["name"], metric["measurements"][-1].get("value"))
            for run in (md.get("status") or {}).get("analysisRuns") or [] for metric in run.get("metrics") or []
            if metric.get("measurements") and metric["measurements"][-1].get("phase") == "Failed"
        ]
        names = ", ".join(f"{name}={value}" for name, value in failed) or "none recorded"
        self.say(f"v3 rolled back; failing metrics: {names}; {self.observer.snapshot.stable} keeps serving")

    async def _quality_rollback(self, v2: models.Registered) -> None:
        """A canary that is fast and error-free but worse: its operational analysis passes and it is promoted;
        the labels that arrive afterwards show its recall far below the recall registered with its package,
        and the retro-verdict rolls it back inside rollbackWindow. Realised quality, not a CBPE estimate: the
        demo's model answers classes, not calibrated scores, so an estimate would have nothing honest to use."""
        self.phase("A fast, error-free but worse v5: promoted on latency and errors, rolled back on realised recall")
        sm, s3 = self._aws("sagemaker"), self._aws("s3")
        v5 = await asyncio.to_thread(
            models.register_fault_model, sm, s3, v2, QUALITY_FAULT,
            f"quality-fault model: {v2.version} weights that miss {QUALITY_FAULT.miss_rate:.0%} of the positives",
        )
        await asyncio.to_thread(models.approve, sm, v5.arn, "demo: quality-fault model, approved on purpose")
        self.versions["v5"] = v5
        registered = v5.metadata.get(f"{keys.METRIC_PREFIX}recall", "?")
        self.say(f"v5 = {v5.version}: {v2.version}'s weights + missRate {QUALITY_FAULT.miss_rate} (no added errors "
                 f"or latency); registered with {v2.version}'s test metrics (recall {registered})")
        stable_before = self.observer.snapshot.stable
        feeder = asyncio.create_task(self._feed_labels())
        try:
            self._write_manifest(v5, v2.baseline_uri)
            await self._apply()
            await self.observer.until(lambda s: s.canary == v5.version or s.stable == v5.version, 60,
                                      f"the rollout of {v5.version} to start")
            await self.observer.until(lambda s: s.stable == v5.version or s.phase == "RolledBack",
                                      self.profile.rollout_timeout, f"{v5.version}'s canary analysis to end")
            reason = next((c.get("reason") for c in ((self.observer.md or {}).get("status") or {}).get("conditions")
                           or [] if c.get("type") == "Progressing"), None)
            if self.observer.snapshot.stable != v5.version and reason != "RealisedQualityDrop":
                raise DemoFailed(f"{v5.version} was expected to pass its canary analysis (it is as fast and "
                                 f"error-free as {v2.version}), but: {self.observer.snapshot.message}")
            self.observer.add("quality", f"{v5.version} passed its canary analysis (success rate, p99 latency)")
            await self.observer.until(lambda s: s.phase == "RolledBack" and s.stable == stable_before,
                                      self.profile.rollout_timeout, f"the quality judge to decide on {v5.version}")
        finally:
            feeder.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await feeder
        status = (self.observer.md or {}).get("status") or {}
        conds = {c.get("type"): c for c in status.get("conditions") or []}
        verdict = conds.get("RealisedQualityPassing") or {}
        if (conds.get("Progressing") or {}).get("reason") != "RealisedQualityDrop":
            raise DemoFailed(f"{v5.version} was rolled back, but not by the quality judge: "
                             f"{(conds.get('Progressing') or {}).get('message')}")
        self.outcomes[v5.version] = "rolled back"
        self.say(f"v5 rolled back by the quality judge: {verdict.get('message')}; {stable_before} serves again")

    async def _feed_labels(self) -> None:
        """The labelling process: every couple of seconds, the true labels of the requests answered since, posted
        to the monitor's label endpoint with its bearer token (the monitor joins them by inference id)."""
        import aiohttp

        assert self.load is not None
        url = f"{self.stack.endpoints.drift_monitor}/v1/labels/{NAMESPACE}/{NAME}"
        headers = {"Authorization": f"Bearer {self.stack.endpoints.labels_token_file.read_text().strip()}"}
        sent = joined = 0
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
            while True:
                await asyncio.sleep(LABEL_DELAY)
                pairs = self.load.take_labels(LABEL_DELAY)
                for i in range(0, len(pairs), 2000):
                    batch = {"labels": [{"id": ident, "label": label} for ident, label in pairs[i:i + 2000]]}
                    try:
                        async with session.post(url, json=batch, headers=headers) as resp:
                            answer = await resp.json(content_type=None)
                    except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
                        self.say(f"label feeder: {type(exc).__name__}; retrying with the next batch")
                        continue
                    if resp.status != 200:
                        raise DemoFailed(f"the label endpoint refused a batch: HTTP {resp.status} {answer}")
                    before = sent
                    sent += int(answer.get("accepted", 0))
                    joined += int(answer.get("joined", 0))
                    if before == 0:
                        self.observer.add("quality", f"labels arriving {LABEL_DELAY:g}s after each answer "
                                                     f"(POST /v1/labels, bearer token): {sent} sent so far")

    async def _capacity_pending(self, v1: models.Registered, v2: models.Registered) -> None:
        """An Inferentia rollout on a full (simulated) Karpenter NodePool waits in CapacityPending until the demo
        raises the pool's limit, then completes by itself (devstack.capacity_phase)."""
        from devstack import capacity_phase

        name = f"{NAME}-inf2"
        self.say(f"Capacity, in the background: an Inferentia rollout ({name}) waits for NeuronCores until the "
                 "NodePool limit is raised")
        try:
            await capacity_phase.run(self.kube, NAMESPACE, name, v1.model_uri, v2.model_uri, self.observer.add,
                                     timeout=self.profile.rollout_timeout)
        except capacity_phase.CapacityPhaseFailed as exc:
            raise DemoFailed(f"capacity phase: {exc}") from None

    async def _chaos_operator(self) -> None:
        await self.observer.until(lambda s: s.step >= 1 and s.phase == "Progressing", 90, "the first canary step")
        before = self.observer.snapshot
        history_before = _measurement_count(self.observer.md)
        pid = self.stack.supervisor.services["operator"].pid
        self.stack.supervisor.kill("operator")
        self.observer.add("chaos", f"killed the operator (pid {pid}, SIGKILL) at step {before.step}, "
                                   f"weight {before.weight}")
        await asyncio.sleep(2)
        await asyncio.to_thread(self.stack.restart, "operator")
        self.observer.add("chaos", f"operator restarted (pid {self.stack.supervisor.services['operator'].pid}), "
                                   "as its Deployment would")
        after = await self.observer.until(lambda s: s.step >= before.step, 30, "the rollout state after restart")
        history_after = _measurement_count(self.observer.md)
        if after.step < before.step or history_after < history_before:
            raise DemoFailed(f"the restarted operator lost rollout state: step {before.step} -> {after.step}, "
                             f"measurements {history_before} -> {history_after}")
        self.observer.add("chaos", f"rollout resumed at step {after.step} (was {before.step}) with its "
                                   f"{history_after} measurements on record: the state lives in .status")

    async def _drift_and_retrain(self) -> None:
        self.phase("Input drift: live traffic shifts away from the training data")
        assert self.load is not None
        s3 = self._aws("s3")
        stable_before = self.observer.snapshot.stable
        arn_before = self.observer.snapshot.spec_arn
        retrains_before = len(self.observer.retrains)
        version = await asyncio.to_thread(models.upload_dataset, s3, BUCKET, DATASET_KEY,
                                          models.shifted(self.frame, SHIFT))
        self.load.shift = Shift(SHIFT)
        shifted_at = time.time()
        shifted = ", ".join(f"{k} x{v:g}" for k, v in SHIFT.items())
        self.observer.add("drift", f"live inputs shifted ({shifted}); the newly labelled data arrived as dataset "
                                   f"version {version[:12]}")
        if self.chaos:
            await asyncio.sleep(3)
            pid = self.stack.supervisor.services["drift-monitor"].pid
            self.stack.supervisor.kill("drift-monitor")
            self.observer.add("chaos", f"killed the drift monitor (pid {pid}, SIGKILL)")
            await asyncio.sleep(1)
            await asyncio.to_thread(self.stack.restart, "drift-monitor")
            self.observer.add("chaos", "drift monitor restarted; its window refills from live traffic")
        deadline = time.monotonic() + self.profile.drift_timeout
        while self.observer.firing.get("KanariFeatureDriftCritical", 0) < shifted_at:
            await _before(deadline, "the drift alert to fire")

        def started() -> list[dict[str, Any]]:
            return [r for r in self.observer.retrains[retrains_before:] if r.get("outcome") not in (None, "", "Starting")]

        while not started():
            await _before(deadline, "the receiver to start a retraining run")
        run = started()[0]
        if run.get("outcome") != "Started":
            raise DemoFailed(f"the receiver could not start the retraining run: {run}")
        self._track_retrain(run)
        self.phase(f"Retraining run {run.get('run')} (started by the receiver through the KFP launcher)")
        ended: float | None = None
        while self.observer.snapshot.spec_arn == arn_before:
            if ended is None and not self._retrain_running(run):
                ended = time.monotonic()
            if ended is not None and time.monotonic() - ended > 5:
                raise DemoFailed(f"the retraining run {run.get('run')} ended without applying a model:\n"
                                 f"{self._retrain_log()}")
            await _before(deadline, "the retraining run to register and apply a new model")
        arn = self.observer.snapshot.spec_arn
        v4 = await asyncio.to_thread(models.describe, self._aws("sagemaker"), arn)
        self.versions["v4"] = v4
        self.say(f"retrained model {v4.version} registered ({v4.approval}) and applied by the pipeline")
        self.phase(f"Canary rollout of the retrained {v4.version}")
        await self.observer.until(lambda s: s.phase == "Succeeded" and s.stable == v4.version,
                                  self.profile.rollout_timeout, f"{v4.version} to be promoted")
        self.outcomes[v4.version] = "promoted"
        self.say(f"{v4.version} replaced {stable_before}")
        await self._drift_settles(v4)

    async def _drift_settles(self, model: models.Registered) -> None:
        """The loop closes when live traffic matches the retrained model's own baseline again."""
        query = (f'max(kanari_feature_drift{{job="{DEFAULT_MONITOR_JOB}", namespace="{NAMESPACE}", model="{NAME}", '
                 f'method="psi", '
                 f'endpoint="default", revision="{model.version}"}})')
        deadline = time.monotonic() + 45
        value = None
        while time.monotonic() < deadline:
            result = await asyncio.to_thread(report.instant_query, self.stack.endpoints.prometheus, query)
            value = result[0][1] if result else None
            if value is not None and value < DRIFT_WARN:
                self.observer.add("drift", f"feature drift back to {value:.2f} (psi) under {model.version}: "
                                           "the retrained model's baseline matches the live inputs")
                return
            await asyncio.sleep(1)
        self.say(f"feature drift under {model.version} is {value if value is not None else 'not measured yet'}")

    def _track_retrain(self, record: dict[str, Any]) -> None:
        """The receiver runs retraining in its own session; the demo stops it too if it is interrupted."""
        run = str(record.get("run") or "")
        if run.startswith("pid-"):
            self.stack.supervisor.track(int(run.removeprefix("pid-")), "pipeline")

    def _retrain_running(self, record: dict[str, Any]) -> bool:
        from devstack.supervisor import pid_alive

        run = str(record.get("run") or "")
        return run.startswith("pid-") and pid_alive(int(run.removeprefix("pid-")))

    def _retrain_log(self) -> str:
        logs = sorted((self.stack.logs / "retraining").glob("*.log"))
        return logs[-1].read_text(errors="replace")[-1500:] if logs else "(no log)"

    # ------------------------------------------------------------------------------------ report
    def _lineage(self) -> list[report.VersionLineage]:
        sm = self._aws("sagemaker")
        out = []
        for label, reg in self.versions.items():
            try:
                reg = models.describe(sm, reg.arn)
            except Exception as exc:  # the registry is gone (interrupted run): report what is known
                note = f"registry unavailable: {exc}"
            else:
                note = ""
            meta = reg.metadata
            if models.FAULT_KEY in meta:
                note = f"fault-injection model ({meta[models.FAULT_KEY]})"
            dataset = meta.get(keys.DATASET_URI, "")
            if meta.get(keys.DATASET_VERSION):
                dataset += f" @ {meta[keys.DATASET_VERSION]}"
            out.append(report.VersionLineage(
                version=f"{label} = {reg.version}", model_package_arn=reg.arn, approval=reg.approval, dataset=dataset,
                pipeline_run=meta.get(keys.PIPELINE_RUN, ""), training_job=meta.get(keys.TRAINING_JOB, ""),
                revision=f"{NAMESPACE}/{NAME} revision {self.observer.revisions.get(reg.version, '-')}",
                outcome=self.outcomes.get(reg.version, "not deployed"), note=note,
            ))
        return out

    def _totals(self) -> dict[str, Any]:
        outcomes = read_outcomes(self.out / "requests.jsonl")
        by: dict[str, int] = {}
        for o in outcomes:
            if not o.lost:
                key = f"{o.version or o.revision} HTTP {o.status}"
                by[key] = by.get(key, 0) + 1
        lost = [o for o in outcomes if o.lost]
        retrains = [r for r in self.observer.retrains if r.get("outcome") not in (None, "", "Starting")]
        try:
            logged = {labels.get("outcome", "?"): int(value) for labels, value in report.instant_query(
                self.stack.endpoints.prometheus, "sum by (outcome) (kanari_local_logger_events_total)")}
        except (OSError, PrometheusError) as exc:
            logged = {"unknown": f"Prometheus unavailable: {exc}"}  # type: ignore[dict-item]
        return {
            "requests sent": len(outcomes),
            "requests lost (no model version answered)": len(lost),
            "answered, by version and status": dict(sorted(by.items())),
            "payload-logger events to the drift monitor (sent / failed / dropped)": logged,
            "retraining runs started": len(retrains),
            "phase durations (s)": self._phase_durations(),
            "failures": self.failures,
        }

    def _phase_durations(self) -> dict[str, float]:
        items = sorted(self.phases.items(), key=lambda kv: kv[1])
        out = {}
        for (name, start), nxt in zip(items, [*items[1:], ("end", time.time())], strict=True):
            out[name] = round(nxt[1] - start, 1)
        return out

    def _report(self) -> None:
        self.phase("Report: the dashboard's export of the run")
        end = time.time()
        ep = self.stack.endpoints
        try:
            alerts = report.firing_alerts(ep.prometheus, NAMESPACE, NAME, self.t0, end)
        except (OSError, PrometheusError) as exc:
            self.failures.append(f"alerts unavailable from Prometheus: {exc}")
            alerts = []
        rep = report.Report(
            title=f"Kanari demo: {NAMESPACE}/{NAME} ({self.profile.name}"
                  f"{', only ' + self.only if self.only else ''}{', chaos' if self.chaos else ''})",
            started=self.t0, finished=end, events=sorted(self.observer.events, key=lambda e: e.t),
            lineage=self._lineage(), totals=self._totals(), stand_ins=STAND_INS, alerts=alerts,
        )
        paths = report.write_report(rep, self.out, kubeconfig=ep.kubeconfig, prometheus=ep.prometheus)
        print("\n" + report.render_text(rep), file=self.console, flush=True)
        for kind, path in paths.items():
            self.say(f"{kind:<9} {path}")
        if "dashboard" in paths:
            self.say(f"open {paths['dashboard']} (the same views `kanari dashboard` serves live)")
        if not self.keep:
            self.say("for the live dashboard, run the demo with --keep (make demo ARGS=--keep)")

    async def _keep(self) -> None:
        ep = self.stack.endpoints
        print("\nServices stay up until you press Ctrl-C:", file=self.console)
        print(f"  {'Live dashboard':<44} .venv/bin/kanari dashboard --kubeconfig {ep.kubeconfig} "
              f"--prometheus-url {ep.prometheus}   (then open http://127.0.0.1:3100/)", file=self.console)
        for what, url in self.stack.endpoints.describe():
            print(f"  {what:<44} {url}", file=self.console)
        print(f"  {'Inference':<44} curl -s -H 'Content-Type: application/json' "
              f"{self.stack.endpoints.router}/serving/{NAMESPACE}/{NAME}/v1/models/{NAME}:predict -d @request.json",
              file=self.console, flush=True)
        await asyncio.Event().wait()


async def _before(deadline: float, what: str) -> None:
    if time.monotonic() > deadline:
        raise DemoFailed(f"timed out waiting for {what}")
    await asyncio.sleep(0.5)


def _in_thread(fn: Callable[..., T], *args: Any) -> asyncio.Future[T]:
    """Run blocking work in a daemon thread: an interrupted demo must not wait for it to finish."""
    loop = asyncio.get_running_loop()
    future: concurrent.futures.Future[T] = concurrent.futures.Future()

    def work() -> None:
        try:
            future.set_result(fn(*args))
        except BaseException as exc:
            future.set_exception(exc)

    threading.Thread(target=work, daemon=True).start()
    return asyncio.wrap_future(future, loop=loop)


# ------------------------------------------------------------------------------------------- entry
def prepare_out(out: Path) -> None:
    """Reuse the output directory of a previous demo; refuse one that holds something else."""
    if out.exists() and any(out.iterdir()):
        ours = {"state", "logs", "processes.json", "requests.jsonl", "report.html", "report.json", "summary.txt",
                "timeline.png", "dashboard"}
        foreign = sorted(p.name for p in out.iterdir() if p.name not in ours)
        if foreign:
            raise DemoFailed(f"--out {out}: the directory holds files that are not a demo's output "
                             f"({', '.join(foreign[:5])}); choose an empty or new directory")
        for p in out.iterdir():
            shutil.rmtree(p) if p.is_dir() else p.unlink()
    out.mkdir(parents=True, exist_ok=True)


def run_demo(
    out: Path, profile: Profile, only: str | None, keep: bool, chaos: bool, console: TextIO,
    lock: DemoLock | None = None,
) -> int:
    from devstack.services import preflight

    problems = preflight()
    if problems:
        for p in problems:
            print(f"kanari demo: {p}", file=sys.stderr)
        return 2
    out = out.resolve()  # Prometheus reads rule_files relative to its own config file
    lock = lock or DemoLock()
    try:
        lock.acquire(f"output {out}")
    except Exception as exc:
        print(f"kanari demo: {exc}", file=sys.stderr)
        return 3
    try:
        try:
            prepare_out(out)
        except DemoFailed as exc:
            print(f"kanari demo: {exc}", file=sys.stderr)
            return 2
        demo = Demo(out, profile, only, keep, chaos, console)
        demo.git_sha = _git_sha(demo)
        settings = StackSettings(
            namespace=NAMESPACE, bucket=BUCKET, model_package_group=NAME, drift_window=profile.drift_window,
            drift_min_samples=profile.drift_min_samples, drift_evaluate_interval=profile.drift_evaluate_interval,
            drift_idle_timeout=profile.drift_idle_timeout,
            idle_grace=profile.idle_grace, resync_seconds=profile.resync_seconds,
            pipeline_workdir=out / "state" / "pipeline",
        )
        stack = EmbeddedStack(out, settings, demo.say)
        return _supervised(demo, stack)
    finally:
        lock.release()


def _git_sha(demo: Demo) -> str:
    from kfp_pipelines.errors import InputError
    from kfp_pipelines.local import resolve_git_sha

    try:
        return resolve_git_sha()
    except InputError:
        demo.say("the training code is not in a git checkout: model versions record git sha 'unversioned'")
        return "unversioned"


def _supervised(demo: Demo, stack: EmbeddedStack) -> int:
    """Run the demo; stop everything on the way out, whatever the way out is."""
    loop = asyncio.new_event_loop()
    main = loop.create_task(demo.run(stack))
    interrupted: list[str] = []

    def interrupt(signum: int) -> None:
        interrupted.append(signal.Signals(signum).name)
        main.cancel()

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, interrupt, sig)
    code = 1
    try:
        code = loop.run_until_complete(main)
    except asyncio.CancelledError:
        demo.say(f"interrupted ({', '.join(interrupted)}): stopping everything")
        code = 130
    except DemoFailed as exc:
        demo.failures.append(str(exc))
        demo.say(f"FAILED: {exc}")
        if stack.endpoints.prometheus and hasattr(demo, "observer"):
            try:  # the report of a failed run shows how far it got
                demo._report()
            except Exception as report_error:
                demo.say(f"no report: {type(report_error).__name__}: {report_error}")
        code = 1
    except Exception as exc:  # a start failure or a bug: report it plainly, then clean up
        from devstack.supervisor import StartError

        if isinstance(exc, StartError):
            demo.say(f"could not start: {exc}")
        else:
            demo.say(f"error: {type(exc).__name__}: {exc}")
            import traceback

            traceback.print_exc(file=sys.stderr)
        code = 1
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
        # A second Ctrl-C while stopping is ignored: stopping is what it would ask for anyway.
        previous = {sig: signal.signal(sig, signal.SIG_IGN) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            killed = stack.stop()
            stop_pids(descendants(), timeout=5)
            if hasattr(demo, "kube"):
                with contextlib.suppress(Exception):
                    loop.run_until_complete(demo.kube.close())
            loop.close()
            left = stack.supervisor.alive()
            note = f"; had to SIGKILL {', '.join(killed)}" if killed else ""
            if left:
                demo.say(f"WARNING: still running after cleanup: pids {left}")
                code = code or 1
            else:
                demo.say(f"stopped every process it started ({len(stack.supervisor.history)}){note}")
            (demo.out / "processes.json").write_text(json.dumps(
                {"processes": stack.supervisor.history, "alive_after_cleanup": left}, indent=1))
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
    return code


def _measurement_count(md: dict[str, Any] | None) -> int:
    """Measurements taken in the current rollout's analysis runs (status.analysisRuns[].metrics[].count)."""
    runs = ((md or {}).get("status") or {}).get("analysisRuns") or []
    return sum(int(m.get("count") or 0) for r in runs for m in r.get("metrics") or [])
