"""Build the kubectl plugin archive for krew and write its manifest (plugins/krew/kanari.yaml).

The plugin is the `kanari` Python package's own CLI: the archive holds a shim named kubectl-kanari that runs
the installed package (`pipx install kanari` puts `kanari` on the PATH), so krew manages the kubectl side
and pip the code. Run at release time; the manifest's sha256 is the archive's, so it cannot drift from it.

    python scripts/krew_manifest.py --version 0.1.0 --dist dist/   # writes dist/*.tar.gz and the manifest
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import tarfile
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
REPOSITORY = "https://github.com/kanari-dev/kanari"
SHIM = """#!/bin/sh
# kubectl kanari: kubectl passes every argument after the plugin name; the kanari package does the rest.
if command -v kanari >/dev/null 2>&1; then exec kanari "$@"; fi
exec python3 -m kanari.cli.main "$@"
"""
NOTICE = "Kanari is licensed under the Apache License 2.0: https://www.apache.org/licenses/LICENSE-2.0\n"


def archive() -> bytes:
    buf = io.BytesIO()
    with gzip.GzipFile(fileobj=buf, mode="wb", mtime=0) as gz, tarfile.open(fileobj=gz, mode="w") as tf:
        for name, text, mode in (("kubectl-kanari", SHIM, 0o755), ("LICENSE", NOTICE, 0o644)):
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), mode, 0  # reproducible: same bytes, same sha256
            tf.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def manifest(version: str, sha256: str) -> dict[str, object]:
    tag = f"v{version}"
    return {
        "apiVersion": "krew.googlecontainertools.github.com/v1alpha2",
        "kind": "Plugin",
        "metadata": {"name": "kanari"},
        "spec": {
            "version": tag,
            "homepage": REPOSITORY,
            "shortDescription": "Progressive delivery and drift for ML models on KServe",
            "description": "Lists Kanari ModelDeployments, shows a rollout and its InferenceService revisions, "
            "promotes, pauses, resumes, aborts and retries rollouts, and validates or renders ModelDeployment "
            "manifests offline.",
            "caveats": "This plugin runs the kanari Python package's CLI. Install it first:\n"
            f"  pipx install kanari=={version}\n",
            "platforms": [{
                "selector": {"matchExpressions": [{"key": "os", "operator": "In", "values": ["linux", "darwin"]}]},
                "uri": f"{REPOSITORY}/releases/download/{tag}/kubectl-kanari_{tag}.tar.gz",
                "sha256": sha256,
                "bin": "kubectl-kanari",
                "files": [{"from": "kubectl-kanari", "to": "."}, {"from": "LICENSE", "to": "."}],
            }],
        },
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    parser.add_argument("--version", default=default, help="release version (default: pyproject's)")
    parser.add_argument("--dist", type=Path, default=ROOT / "dist", help="where to write the archive")
    parser.add_argument("--manifest", type=Path, default=ROOT / "plugins" / "krew" / "kanari.yaml")
    args = parser.parse_args(argv)
    data = archive()
    args.dist.mkdir(parents=True, exist_ok=True)
    (args.dist / f"kubectl-kanari_v{args.version}.tar.gz").write_bytes(data)
    args.manifest.parent.mkdir(parents=True, exist_ok=True)
    args.manifest.write_text(yaml.safe_dump(manifest(args.version, hashlib.sha256(data).hexdigest()), sort_keys=False))
    print(f"wrote {args.manifest} and {args.dist}/kubectl-kanari_v{args.version}.tar.gz")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
