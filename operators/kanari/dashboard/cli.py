"""`kanari dashboard`: serve the dashboard on loopback with your kubeconfig, or export it as static pages."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from kanari.rollout.prometheus import ENV_URL, ConfigError, PrometheusConfig

if TYPE_CHECKING:
    from kanari.dashboard.prom import Prometheus

DEFAULT_PORT = 3100


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = subparsers.add_parser(
        "dashboard", help="a live web dashboard of rollouts, analysis, drift and lineage",
        description="Serve the Kanari dashboard on 127.0.0.1, reading the cluster with your kubeconfig and "
        "context (it can see and do only what you can), or write it as static pages with --export.",
    )
    p.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port (default {DEFAULT_PORT})")
    p.add_argument("--address", default="127.0.0.1",
                   help="address to listen on (default 127.0.0.1; in the cluster the chart sets 0.0.0.0)")
    p.add_argument("--kubeconfig", help="kubeconfig file (default: KUBECONFIG or ~/.kube/config)")
    p.add_argument("--context", help="kubeconfig context (default: the current one)")
    p.add_argument("--prometheus-url", help=f"Prometheus for drift series and alerts (default: ${ENV_URL})")
    p.add_argument("--read-only", action="store_true", help="no promote/abort/pause/resume/retry buttons")
    p.add_argument("--in-cluster", action="store_true",
                   help="run in the cluster: users sign in with a token (checked by TokenReview); read-only "
                   "unless --enable-actions")
    p.add_argument("--enable-actions", action="store_true", help="in the cluster: allow actions (as the user)")
    p.add_argument("--export", metavar="DIR", type=Path, help="write static pages of every view to DIR and exit")
    p.add_argument("--since", type=float, help="with --export: start of the drift window (epoch seconds)")
    p.set_defaults(func=run)


def _prometheus(url: str | None) -> Prometheus | None:
    from kanari.dashboard.prom import Prometheus

    env = dict(os.environ)
    if url:
        env[ENV_URL] = url
    if not env.get(ENV_URL):
        return None
    return Prometheus(PrometheusConfig.from_env(env))


def run(args: argparse.Namespace) -> int:
    # Imported here: `kanari --help` and the other sub-commands need no web server.
    from aiohttp import web

    from kanari.dashboard.cluster import Cluster, ClusterError, kubeconfig_client
    from kanari.dashboard.server import Dashboard, Identity, Settings

    try:
        prometheus = _prometheus(args.prometheus_url)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if not 0 < args.port < 65536:
        print(f"error: --port {args.port}: not a port number", file=sys.stderr)
        return 2
    if args.in_cluster:
        return _serve_in_cluster(args, prometheus)
    try:
        api, namespace, context = kubeconfig_client(args.kubeconfig or os.environ.get("KUBECONFIG") or None, args.context)
    except ClusterError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return 1
    cluster = Cluster(api, namespace)
    if args.export:
        from kanari.dashboard.export import export

        async def go() -> int:
            try:
                paths = await export(cluster, prometheus, args.export, args.since)
            except ClusterError as exc:
                print(f"error: {exc.message}", file=sys.stderr)
                return 1
            finally:
                if prometheus is not None:
                    await prometheus.close()
                cluster.close()
            print(f"wrote {len(paths)} files; open {args.export / 'index.html'}")
            return 0

        return asyncio.run(go())
    if args.address not in ("127.0.0.1", "localhost", "::1"):
        print("error: --address: with your own credentials the dashboard listens on loopback only "
              "(in the cluster use --in-cluster)", file=sys.stderr)
        return 2
    settings = Settings(port=args.port, address=args.address, actions=not args.read_only)
    dash = Dashboard(settings, prometheus, local=Identity(cluster=cluster, user=context or "kubeconfig"))
    print(f"Kanari dashboard: http://{args.address}:{args.port}/ (context {context or '-'}; Ctrl-C to stop)",
          flush=True)
    web.run_app(dash.app(), host=args.address, port=args.port, print=None, access_log=None, shutdown_timeout=1.0)
    return 0


def _serve_in_cluster(args: argparse.Namespace, prometheus: Prometheus | None) -> int:
    from aiohttp import web
    from kubernetes import client, config
    from kubernetes.config.config_exception import ConfigException

    from kanari.dashboard.server import Dashboard, Settings

    try:
        config.load_incluster_config()
    except ConfigException as exc:
        print(f"error: --in-cluster: {exc}", file=sys.stderr)
        return 1
    reviewer = client.ApiClient()
    settings = Settings(port=args.port, address=args.address, actions=args.enable_actions, in_cluster=True,
                        secure_cookie=os.environ.get("KANARI_DASHBOARD_SECURE_COOKIE", "") == "true")
    dash = Dashboard(settings, prometheus, reviewer=reviewer)
    print(f"Kanari dashboard (in-cluster, actions {'enabled' if args.enable_actions else 'disabled'}) "
          f"on {args.address}:{args.port}", flush=True)
    web.run_app(dash.app(), host=args.address, port=args.port, print=None, access_log=None, shutdown_timeout=1.0)
    return 0
