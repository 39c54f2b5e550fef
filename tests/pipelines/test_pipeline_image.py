"""The pipeline's component image is built from this repository: a Dockerfile target with torch (CPU) and
the package's pipeline extra, a skaffold artifact in every profile, non-root, and nothing else needed at
run time. (No Docker here: the build itself runs in CI/skaffold; this checks what it is told to build.)"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]


def stages() -> dict[str, list[str]]:
    """Dockerfile stages by name (the unnamed last one as ''), each a list of its instructions."""
    out: dict[str, list[str]] = {}
    current: list[str] | None = None
    text = re.sub(r"\\\n\s*", " ", (ROOT / "Dockerfile").read_text())
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if m := re.match(r"FROM\s+\S+(?:\s+AS\s+(\S+))?", line, re.I):
            current = out.setdefault(m.group(1) or "", [])
        elif current is not None:
            current.append(line)
    return out


def test_the_pipeline_target_has_torch_cpu_the_pipeline_extra_and_runs_as_non_root() -> None:
    s = stages()
    assert list(s)[-1] == "", "the operator image must stay the default (last) stage"
    build = " ".join(s["pipeline-build"])
    assert re.search(r"--index-url \$\{TORCH_INDEX\} \"torch==\$\{TORCH_VERSION\}\"", build)
    assert "https://download.pytorch.org/whl/cpu" in (ROOT / "Dockerfile").read_text()
    assert 'pip install ".[pipeline]"' in build
    # The build fails unless what the steps import is there.
    assert "import torch, kfp, kfp_pipelines.evaluation, kfp_pipelines.training.mlp" in build
    final = s["pipeline"]
    assert "USER 65532:65532" in final and any(i.startswith("COPY --from=pipeline-build") for i in final)
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert any(d.startswith("torch") for d in extras["pipeline"])


def test_skaffold_builds_the_pipeline_image_in_every_profile() -> None:
    doc = yaml.safe_load((ROOT / "skaffold.yaml").read_text())
    builds = [doc["build"], *(p["build"] for p in doc["profiles"] if "build" in p)]
    names = set(stages())
    for build in builds:
        artifacts = {a["image"]: a for a in build["artifacts"]}
        assert artifacts["kanari-pipelines"]["docker"]["target"] == "pipeline" in names
        assert "target" not in artifacts["kanari"]["docker"]


def test_the_components_name_a_placeholder_the_compiler_replaces() -> None:
    from kfp_pipelines.components import COMPONENT_IMAGE
    from kfp_pipelines.pipeline import compile_ir

    assert "ghcr.io" not in COMPONENT_IMAGE
    ir = compile_ir("registry.example.com/kanari-pipelines@sha256:" + "a" * 64, "s3://bucket/root")
    assert {e["container"]["image"] for e in ir["deploymentSpec"]["executors"].values()} == {
        "registry.example.com/kanari-pipelines@sha256:" + "a" * 64}
