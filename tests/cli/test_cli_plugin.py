"""The kubectl plugin as krew would install it: the committed manifest matches the archive the release script
builds, and the archive's shim runs the installed CLI with the arguments kubectl passes."""

from __future__ import annotations

import hashlib
import io
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "scripts"))
import krew_manifest  # noqa: E402  (a script, not a package)


def test_committed_krew_manifest_matches_the_release_archive():
    committed = yaml.safe_load((ROOT / "plugins" / "krew" / "kanari.yaml").read_text())
    data = krew_manifest.archive()
    assert data == krew_manifest.archive(), "the archive must be reproducible for its sha256 to mean anything"
    version = committed["spec"]["version"].removeprefix("v")
    assert committed == krew_manifest.manifest(version, hashlib.sha256(data).hexdigest()), \
        "plugins/krew/kanari.yaml is stale: run python scripts/krew_manifest.py"
    platform = committed["spec"]["platforms"][0]
    with tarfile.open(fileobj=io.BytesIO(data)) as tf:
        names = set(tf.getnames())
    assert {f["from"] for f in platform["files"]} <= names and platform["bin"] in names


def test_the_shim_runs_the_cli_with_kubectls_arguments(tmp_path):
    with tarfile.open(fileobj=io.BytesIO(krew_manifest.archive())) as tf:
        tf.extractall(tmp_path, filter="data")
    shim = tmp_path / "kubectl-kanari"
    assert os.access(shim, os.X_OK)
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    proc = subprocess.run([str(shim), "--version"], capture_output=True, text=True, env=env, timeout=30)
    assert proc.returncode == 0 and proc.stdout.startswith("kanari "), proc.stderr
    proc = subprocess.run([str(shim), "status", "x", "--kubeconfig", str(tmp_path / "none"), "-n", "ml"],
                          capture_output=True, text=True, env=env, timeout=30)
    assert proc.returncode == 6 and "no kubeconfig at" in proc.stderr
