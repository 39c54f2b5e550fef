"""`python -m kanari.controller`: run the operator (the chart's container command)."""

from __future__ import annotations

import argparse
import os
import sys
import zlib

import kopf

from kanari import logs
from kanari.controller import handlers  # noqa: F401  (registers the handlers)
from kanari.controller.config import OperatorConfig


def main(argv: list[str] | None = None) -> int:
    # Flags (the chart's controller.extraArgs) override the environment the chart sets.
    parser = argparse.ArgumentParser(prog="python -m kanari.controller", description=__doc__.splitlines()[0])
    parser.add_argument("--verbose", action="store_true", default=os.environ.get("KANARI_VERBOSE") == "1",
                        help="debug logging (default $KANARI_VERBOSE=1)")
    parser.add_argument("--log-format", choices=logs.FORMATS, default=None, help=f"json|text (default ${logs.ENV})")
    args = parser.parse_args(argv)
    try:
        fmt = logs.log_format(args.log_format)
    except ValueError as exc:
        parser.error(str(exc))
    config = OperatorConfig.from_env()
    liveness = os.environ.get("KANARI_LIVENESS_ENDPOINT", "http://0.0.0.0:8080/healthz")
    kopf.configure(verbose=args.verbose, log_format=kopf.LogFormat.JSON if fmt == "json" else kopf.LogFormat.FULL)
    # kopf pauses every peer that sees another at the same priority: replicas need distinct ones. The
    # pod name is unique per replica and stable for the pod's life.
    priority = zlib.crc32(os.environ.get("POD_ID", str(os.getpid())).encode()) % 1_000_000 + 1
    kopf.run(
        clusterwide=not config.namespaces,
        namespaces=config.namespaces,
        standalone=config.peering_name is None,
        peering_name=config.peering_name,
        priority=priority,
        liveness_endpoint=liveness or None,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
