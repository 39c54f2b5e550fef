"""Settings and command-line flags of the drift monitor, kept free of heavy imports so that building
the `kanari` CLI stays fast."""

from __future__ import annotations

import argparse
from dataclasses import dataclass

MAX_PENDING = 10_000
MAX_PENDING_BYTES = 64 * 1024 * 1024
MAX_ROWS = 10_000
MAX_BASELINES = 64
MAX_BASELINE_FAILURES = 256
MAX_LABEL_BYTES = 1024 * 1024
MAX_LABEL_PENDING = 100_000

# The bearer token of the monitor's read API (GET /v1/recent-requests): the monitor and the controller both read it.
API_TOKEN_ENV = "KANARI_MONITOR_API_TOKEN"


@dataclass(frozen=True)
class MonitorSettings:
    window_size: int = 1000
    min_samples: int = 100
    max_models: int = 100
    max_event_bytes: int = 4 * 1024 * 1024
    evaluate_interval: float = 5.0
    pending_ttl: float = 30.0
    idle_timeout: float = 900.0
    max_pending: int = MAX_PENDING
    max_pending_bytes: int = MAX_PENDING_BYTES
    max_rows_per_event: int = MAX_ROWS
    max_baselines: int = MAX_BASELINES
    max_baseline_failures: int = MAX_BASELINE_FAILURES
    body_timeout: float = 30.0
    max_label_bytes: int = MAX_LABEL_BYTES
    max_label_pending: int = MAX_LABEL_PENDING
    labels_s3_interval: float = 60.0
    # Recently logged stable requests kept per model (memory only) for BlueGreen preview replay and the
    # controller's GET /v1/recent-requests; and the replay's monitor-wide bounds.
    recent_per_model: int = 200
    recent_max_body_bytes: int = 64 * 1024
    recent_max_model_bytes: int = 512 * 1024  # x max_models: 50 MiB at the defaults
    max_replay_rate: float = 20.0
    max_replays: int = 10

    def __post_init__(self) -> None:
        for name in ("window_size", "min_samples", "max_models", "max_event_bytes", "max_pending", "max_pending_bytes",
                     "max_rows_per_event", "max_baselines", "max_baseline_failures", "max_label_bytes",
                     "max_label_pending", "recent_per_model", "recent_max_body_bytes", "recent_max_model_bytes",
                     "max_replays"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}: must be at least 1, got {getattr(self, name)}")
        for name in ("evaluate_interval", "pending_ttl", "idle_timeout", "body_timeout", "labels_s3_interval",
                     "max_replay_rate"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name}: must be positive, got {getattr(self, name)}")


def monitor_arguments(parser: argparse.ArgumentParser) -> None:
    from kanari.webguard import add_arguments

    d = MonitorSettings()
    parser.add_argument("--port", type=int, default=8080, help="listen port (events on /, metrics on /metrics)")
    parser.add_argument("--host", default="0.0.0.0", help="listen address")
    source = parser.add_mutually_exclusive_group()
    source.add_argument(
        "--kubernetes", action="store_true",
        help="take events only for ModelDeployments with monitoring enabled (list/watch through the Kubernetes API)",
    )
    source.add_argument(
        "--config", help="YAML/JSON file mapping namespace/model to a baseline URI (installs without the operator)"
    )
    parser.add_argument("--watch-namespace", action="append", default=[],
                        help="with --kubernetes: only this namespace's ModelDeployments (repeat for several)")
    parser.add_argument("--window-size", type=int, default=d.window_size, help="requests per sliding window")
    parser.add_argument(
        "--min-samples", type=int, default=d.min_samples, help="below this many requests no drift value is exported"
    )
    parser.add_argument("--max-models", type=int, default=d.max_models, help="windows tracked at most (LRU)")
    parser.add_argument("--max-event-bytes", type=int, default=d.max_event_bytes, help="larger event bodies get 413")
    parser.add_argument(
        "--evaluate-interval", type=float, default=d.evaluate_interval, help="seconds between drift computations"
    )
    parser.add_argument(
        "--idle-timeout", type=float, default=d.idle_timeout, help="seconds without events before a window is dropped"
    )
    parser.add_argument("--max-rows-per-event", type=int, default=d.max_rows_per_event,
                        help="events with more rows get 413")
    parser.add_argument("--max-pending", type=int, default=d.max_pending,
                        help="request/response halves waiting for their partner, at most")
    parser.add_argument("--max-baselines", type=int, default=d.max_baselines, help="parsed baselines cached (LRU)")
    parser.add_argument("--max-baseline-failures", type=int, default=d.max_baseline_failures,
                        help="failed baseline fetches remembered (LRU) so a broken baseline is not fetched per event")
    parser.add_argument("--recent-per-model", type=int, default=d.recent_per_model,
                        help="logged stable requests kept per model in memory (preview replay, /v1/recent-requests)")
    parser.add_argument("--recent-max-body-bytes", type=int, default=d.recent_max_body_bytes,
                        help="a logged request larger than this is not kept for replay")
    parser.add_argument("--recent-max-model-bytes", type=int, default=d.recent_max_model_bytes,
                        help="bytes of logged requests kept per model, at most")
    parser.add_argument("--max-replay-rate", type=float, default=d.max_replay_rate,
                        help="requests a second replayed to one BlueGreen preview, at most (whatever the spec asks)")
    parser.add_argument("--max-replays", type=int, default=d.max_replays,
                        help="BlueGreen previews fed at once, at most")
    parser.add_argument("--preview-domain", action="append", default=[],
                        help="Knative domain of preview tag URLs (repeat for several; default svc.cluster.local): "
                             "replay goes only to latest-<name>-predictor.<namespace>.<domain>")
    parser.add_argument("--no-replay", action="store_true",
                        help="do not replay logged requests to BlueGreen previews")
    parser.add_argument("--api-token-file",
                        help="file holding the bearer token GET /v1/recent-requests requires (default: "
                             "$KANARI_MONITOR_API_TOKEN; neither: that endpoint answers 403)")
    labels = parser.add_argument_group("delayed ground truth (ModelDeployments with spec.monitoring.groundTruth)")
    labels.add_argument("--labels-token-file",
                        help="bearer token for POST /v1/labels/<namespace>/<name> (a mounted Secret; or the "
                             "KANARI_LABELS_TOKEN variable); without one the HTTP label endpoint is off")
    labels.add_argument("--labels-s3-uri", help="s3://bucket/prefix/ polled for label files "
                                               "<prefix><namespace>/<name>/*.jsonl|*.csv (the monitor's IRSA role)")
    labels.add_argument("--labels-s3-interval", type=float, default=d.labels_s3_interval,
                        help="seconds between two polls of the S3 label drop")
    labels.add_argument("--max-label-bytes", type=int, default=d.max_label_bytes,
                        help="larger label batches (HTTP body or S3 file) are refused")
    labels.add_argument("--state-dir",
                        help="directory (a persistent volume) keeping the join stores: predictions waiting for "
                             "their labels, joined ids, drop counters and realised-quality figures survive a restart "
                             "(without it they are in memory only and a restart loses them)")
    labels.add_argument("--max-label-pending", type=int, default=d.max_label_pending,
                        help="predictions (and labels) waiting for their other half, per model, at most")
    add_arguments(parser)
    from kanari.monitor.sharding import shard_arguments  # light: no aiohttp until an event is forwarded

    shard_arguments(parser)
