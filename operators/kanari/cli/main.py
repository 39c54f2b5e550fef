"""`kanari` (also `kubectl kanari`): one entry point; each area registers its own sub-commands.

Everyday failures (API server unreachable, no credentials, no region, not found, forbidden) end in one line
on stderr and an exit code from kanari.cli.common; a traceback only with -v. Building the parser imports
nothing heavy (each command imports its libraries when it runs), so `kanari --help` answers at once.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import traceback

from kanari.cli import common

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
    "kanari.cli.labels",
)


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("kanari")
    except PackageNotFoundError:
        return "unknown (not installed)"


class _Version(argparse.Action):
    def __init__(self, option_strings: list[str], dest: str = argparse.SUPPRESS, **kwargs: object):
        super().__init__(option_strings, dest=dest, nargs=0, help="print the version and exit")

    def __call__(self, parser: argparse.ArgumentParser, *_: object) -> None:
        print(f"kanari {_version()}")
        parser.exit()


def _subparsers(parser: argparse.ArgumentParser) -> list[argparse.ArgumentParser]:
    found = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in dict.fromkeys(action.choices.values()):  # aliases map to the same parser
                found.append(sub)
                found.extend(_subparsers(sub))
    return found


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kanari", description="Kanari: Kubernetes-native MLOps for EKS (Trainium training, Inferentia serving).",
        epilog="Exit codes: " + "; ".join(f"{k} {v}" for k, v in common.EXIT_CODES.items()),
    )
    parser.add_argument("--version", action=_Version)
    common.add_verbose(parser, top=True)
    common.add_cluster_flags(parser, all_namespaces=True, top=True)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        if only is None or name == only:
            importlib.import_module(name).register(sub)
    if only is None:
        comp = sub.add_parser("completion", help="print a shell completion script (bash, zsh, tcsh)",
                              description="Print a completion script, e.g. `source <(kanari completion bash)`.")
        comp.add_argument("shell", choices=("bash", "zsh", "tcsh"))
        comp.set_defaults(func=lambda a: _completion(parser, a.shell))
    for p in _subparsers(parser):
        if not any("-v" in a.option_strings for a in p._actions):
            common.add_verbose(p)
    return parser


def _completion(parser: argparse.ArgumentParser, shell: str) -> int:
    import shtab

    print(shtab.complete(parser, shell=shell))
    return common.OK


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    # `kanari drift ...` (run per batch by pipelines and jobs) builds only its own parser.
    parser = build_parser("kanari.cli.drift" if argv[:1] == ["drift"] else None)
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help(sys.stderr)
        return common.USAGE
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("kanari: interrupted", file=sys.stderr)
        return common.INTERRUPTED
    except Exception as exc:
        if args.verbose:
            traceback.print_exc()
        err = common.classify(exc)
        if err is None:
            hint = "" if args.verbose else " (run with -v for the traceback)"
            err = common.CliError(f"{type(exc).__name__}: {exc}{hint}", common.FAILED)
        return common.fail(err)


if __name__ == "__main__":
    sys.exit(main())
