"""Helpers for the pipeline tests: strict CRD validation, an emulated Kubernetes API with the ACK and
Kanari CRDs, and a deliberately useless dataset (labels shuffled) for the regression case."""

from __future__ import annotations

import asyncio
import concurrent.futures
import io
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import jsonschema
import kmock
import numpy as np
import yaml

from tests.operator.harness import ApiServer, Call, write_kubeconfig
from tests.support.schemas import _to_jsonschema

ROOT = Path(__file__).resolve().parents[2]
UPSTREAM_CRDS = ROOT.parent / "shared" / "upstream" / "crds"
TRAININGJOB_CRD = UPSTREAM_CRDS / "sagemaker.services.k8s.aws_trainingjobs.yaml"
MODELDEPLOYMENT_CRD = ROOT / "manifests" / "crds" / "kanari.dev_modeldeployments.yaml"
TRAININGJOB = ("sagemaker.services.k8s.aws", "v1alpha1", "trainingjobs")
T = TypeVar("T")


def _pruning(node: Any) -> Any:
    """What the API server keeps: fields the structural schema does not declare are pruned (lost)."""
    if isinstance(node, dict):
        out = {k: _pruning(v) for k, v in node.items()}
        if "properties" in node and "additionalProperties" not in node and not node.get(
            "x-kubernetes-preserve-unknown-fields"
        ):
            out["additionalProperties"] = False
        return out
    if isinstance(node, list):
        return [_pruning(v) for v in node]
    return node


def strict_validator(crd_path: Path) -> jsonschema.Draft4Validator:
    crd = next(d for d in yaml.safe_load_all(crd_path.read_text()) if d and d.get("kind") == "CustomResourceDefinition")
    schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    strict = _pruning(schema)
    # metadata is the API server's ObjectMeta, not described by the CRD.
    strict["properties"]["metadata"] = {"type": "object"}
    return jsonschema.Draft4Validator(_to_jsonschema(strict))


def shuffled_labels_csv(frame: Any, target: str, seed: int = 1) -> bytes:
    """The same features with the labels permuted: a model trained on it has no skill."""
    out = frame.copy()
    out[target] = np.random.default_rng(seed).permutation(out[target].to_numpy())
    buf = io.StringIO()
    out.to_csv(buf, index=False)
    return buf.getvalue().encode()


class KubeApi:
    """kmock's emulator (with the operator tests' API-server behaviour) on loopback, in its own thread."""

    def __init__(self, workdir: Path, crds: tuple[Path, ...]):
        self.workdir = workdir
        self.crds = crds
        self.loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self.api: ApiServer | None = None
        self.url = ""
        self._thread = threading.Thread(target=self._run, name="kmock-pipelines", daemon=True)

    def __enter__(self) -> KubeApi:
        self._thread.start()
        if not self._ready.wait(30) or self.api is None:
            raise RuntimeError("the Kubernetes API emulator did not start")
        self.kubeconfig = write_kubeconfig(self.workdir / "kubeconfig", self.url)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._stop is not None:
            self.loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_until_complete(self._serve())

    async def _serve(self) -> None:
        self._stop = asyncio.Event()
        server = ApiServer()
        server.resources.load_bundled()
        for crd in self.crds:
            server.declare_crd(crd)
        async with server, kmock.Server(server) as srv:
            self.api = server
            self.url = str(srv.url).rstrip("/")
            self._ready.set()
            await self._stop.wait()

    def call(self, fn: Callable[[ApiServer], T]) -> T:
        assert self.api is not None
        future: concurrent.futures.Future[T] = concurrent.futures.Future()
        server = self.api

        def run() -> None:
            try:
                future.set_result(fn(server))
            except BaseException as exc:
                future.set_exception(exc)

        self.loop.call_soon_threadsafe(run)
        return future.result(10)

    def calls(self) -> list[Call]:
        return self.call(lambda a: list(a.calls))
