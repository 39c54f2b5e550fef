"""`kanari` (also `kubectl kanari`): one entry point; each area registers its own sub-commands."""

from __future__ import annotations

import argparse
import importlib
import sys

# Each module exposes register(subparsers); a sub-command's handler is set with set_defaults(func=...)
# and returns the process exit code.
COMMAND_MODULES = (
    "kanari.cli.render",
    "kanari.cli.rollout",
    "kanari.cli.drift",
    "kanari.cli.pipeline",
    "kanari.dashboard.cli",
    "kanari.cli.lineage",
    "kanari.cli.iam",
)


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kanari", description="Kanari: Kubernetes-native MLOps for EKS (Trainium training, Inferentia serving)."
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        if only is None or name == only:
            importlib.import_module(name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    # `kanari drift ...` (run per batch by pipelines and jobs) builds only its own parser: the other command
    # modules import the Kubernetes client and the API models, half a second it does not need.
    parser = build_parser("kanari.cli.drift" if argv[:1] == ["drift"] else None)
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
