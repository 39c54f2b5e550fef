"""`kanari demo` (what `make demo` runs): the whole Kanari loop on this machine, on the embedded defaults.

Trains, registers and approves a model, deploys it through the operator, promotes a good canary, rolls back a
broken one, and retrains on an input-drift alert, with real Prometheus and Alertmanager; then writes a
report (timeline picture, HTML page, text summary). See kanari.local.scenario for the steps.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "demo", help="run the whole loop on this machine (embedded defaults) and write a report",
        description=__doc__.split("\n\n")[0],
    )
    p.add_argument("--only", choices=("rollout", "drift"),
                   help="rollout: promotion and rollback only; drift: the drift-triggered retraining only")
    p.add_argument("--keep", action="store_true", help="leave the services up after the report (until Ctrl-C)")
    p.add_argument("--chaos", action="store_true",
                   help="kill the operator during a rollout and the drift monitor during drift; both resume")
    p.add_argument("--out", default="out/demo", help="where the report and logs go (default: ./out/demo)")
    p.add_argument("--fast", action="store_true", help="shortened analysis and drift intervals (the test's)")
    p.set_defaults(func=cmd_demo)


def cmd_demo(args: argparse.Namespace) -> int:
    from kanari.local.scenario import FAST, NORMAL, run_demo

    return run_demo(Path(args.out), FAST if args.fast else NORMAL, args.only, args.keep, args.chaos, sys.stdout)
