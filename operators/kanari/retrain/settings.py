"""Command-line flags of the retraining receiver, kept free of heavy imports so that building the `kanari`
CLI stays fast."""

from __future__ import annotations

import argparse

TOKEN_ENV = "KANARI_RECEIVER_TOKEN"


def receiver_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--port", type=int, default=8090, help="listen port (webhook on /alerts)")
    parser.add_argument("--host", default="0.0.0.0", help="listen address")
    parser.add_argument("--config", required=True, help="receiver config (YAML): launcher, store, models")
    parser.add_argument("--token-file", help=f"file holding the bearer token (default: ${TOKEN_ENV})")
