"""Command-line flags of the retraining receiver, kept free of heavy imports so that building the `kanari`
CLI stays fast."""

from __future__ import annotations

import argparse

TOKEN_ENV = "KANARI_RECEIVER_TOKEN"
# Alertmanager's payload for 1,000 alerts is about 530 KiB; room for twice that.
MAX_BODY = 2 * 1024 * 1024


def receiver_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--port", type=int, default=8090, help="listen port (webhook on /alerts)")
    parser.add_argument("--host", default="0.0.0.0", help="listen address")
    parser.add_argument("--config", required=True, help="receiver config (YAML): launcher, store, models")
    parser.add_argument("--token-file", help=f"file holding the bearer token (default: ${TOKEN_ENV})")
    parser.add_argument("--max-body-bytes", type=int, default=MAX_BODY, help="larger webhook bodies get 413")
    from kanari.webguard import add_arguments

    add_arguments(parser)
