"""`python -m devstack` (what `make demo` runs): the whole Kanari loop on this machine, on the embedded defaults.

Trains, registers and approves a model, deploys it through the operator, promotes a good canary, rolls back a
broken one, and retrains on an input-drift alert, with real Prometheus and Alertmanager; then writes the
dashboard's static export of the run and a text summary. See devstack.scenario for the steps.

The demo lives outside the `kanari` package: it needs stand-ins for the cluster (an API emulator, a KServe
stand-in, a router) that must never ship in the operator image.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m devstack", description=__doc__.split("\n\n")[0])
    p.add_argument("--only", choices=("rollout", "drift"),
                   help="rollout: promotion and rollback only; drift: the drift-triggered retraining only")
    p.add_argument("--keep", action="store_true", help="leave the services up after the report (until Ctrl-C)")
    p.add_argument("--chaos", action="store_true",
                   help="kill the operator during a rollout and the drift monitor during drift; both resume")
    p.add_argument("--out", default="out/demo", help="where the report and logs go (default: ./out/demo)")
    p.add_argument("--fast", action="store_true", help="shortened analysis and drift intervals (the test's)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from devstack.scenario import FAST, NORMAL, run_demo

    try:
        return run_demo(Path(args.out), FAST if args.fast else NORMAL, args.only, args.keep, args.chaos, sys.stdout)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
