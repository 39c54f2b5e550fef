#!/usr/bin/env bash
# The drift benchmark: Kanari in the project's .venv, and the peers it is compared with (Evidently and
# alibi-detect) in bench/.venv-drift, kept apart because their pins cannot share one environment
# (alibi-detect 0.13 needs numba<0.60 and numpy<2; Kanari needs numba>=0.60). Then runs bench/drift/run.py
# with the project's interpreter; arguments are passed on to it. A peer that cannot be installed is reported
# as such in the results, never replaced by made-up numbers.
set -uo pipefail
cd "$(dirname "$0")/.."
VENV=bench/.venv-drift
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] && PY=.venv/bin/python
if [ ! -x "$VENV/bin/python" ]; then
  "$PY" -m venv "$VENV" || { echo "cannot create $VENV" >&2; exit 2; }
fi
"$VENV/bin/python" -m pip install --quiet --upgrade pip >/dev/null 2>&1
: > "$VENV/peer-install.log"
for peer in evidently alibi-detect; do
  if ! "$VENV/bin/python" -m pip install --quiet "$peer" >>"$VENV/peer-install.log" 2>&1; then
    echo "could not install $peer (see $VENV/peer-install.log); run.py will say so in the results" >&2
  fi
done
# The peers read the benchmark's Parquet files: a pyarrow that works with alibi-detect's numpy<2.
"$VENV/bin/python" -m pip install --quiet "pyarrow>=15,<22" >>"$VENV/peer-install.log" 2>&1
KANARI_BENCH_PEER_PYTHON="$VENV/bin/python" exec "$PY" bench/drift/run.py "$@"
