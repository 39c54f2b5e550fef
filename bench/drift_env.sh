#!/usr/bin/env bash
# The drift benchmark's own environment: this project (editable) plus the peers it is compared with,
# Evidently and alibi-detect, in bench/.venv-drift, kept apart from the project's .venv so the peers'
# dependency pins never touch it. Then runs bench/drift/run.py; arguments are passed on to it.
# A peer that cannot be installed is reported as such in the results, never replaced by made-up numbers.
set -uo pipefail
cd "$(dirname "$0")/.."
VENV=bench/.venv-drift
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] && PY=.venv/bin/python
if [ ! -x "$VENV/bin/python" ]; then
  "$PY" -m venv "$VENV" || { echo "cannot create $VENV" >&2; exit 2; }
fi
"$VENV/bin/python" -m pip install --quiet --upgrade pip >/dev/null 2>&1
"$VENV/bin/python" -m pip install --quiet -e ".[spark]" || { echo "cannot install the project into $VENV" >&2; exit 2; }
: > "$VENV/peer-install.log"
for peer in evidently alibi-detect; do
  if ! "$VENV/bin/python" -m pip install --quiet "$peer" >>"$VENV/peer-install.log" 2>&1; then
    echo "could not install $peer (see $VENV/peer-install.log); run.py will say so in the results" >&2
  fi
done
# alibi-detect 0.13 pins numpy<2, and pyarrow 22+ needs numpy 2: keep a pyarrow that works with both.
"$VENV/bin/python" -m pip install --quiet "pyarrow>=15,<22" >>"$VENV/peer-install.log" 2>&1
exec "$VENV/bin/python" bench/drift/run.py "$@"
