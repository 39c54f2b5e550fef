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
    "kanari.cli.lineage",
    "kanari.cli.iam",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kanari", description="Kanari: Kubernetes-native MLOps for EKS (Trainium training, Inferentia serving)."
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
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
