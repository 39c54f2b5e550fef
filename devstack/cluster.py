"""The cluster stand-in process for the demo: the Kubernetes API stand-in (devstack.apiserver, the same one the
tests and benchmarks use) on loopback, with the KServe stand-in, the router and the prometheus-operator
stand-in working against it.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from dataclasses import dataclass
from pathlib import Path

import aiohttp.web

from devstack.apiserver import ApiServer, write_kubeconfig

log = logging.getLogger("devstack.cluster")


@dataclass
class RunningCluster:
    emulator: ApiServer
    url: str
    kubeconfig: Path
    runner: aiohttp.web.BaseRunner

    async def stop(self) -> None:
        await self.runner.cleanup()
        await self.emulator.__aexit__(None, None, None)


async def start_cluster(kubeconfig_path: Path, port: int, namespace: str = "default") -> RunningCluster:
    """Serve the emulator on 127.0.0.1:port and write a kubeconfig pointing at it."""
    emulator = ApiServer(record=False)
    emulator.declare()
    await emulator.__aenter__()
    # Watches never end by themselves: on shutdown they are cut after a second, not waited for.
    runner = aiohttp.web.ServerRunner(aiohttp.web.Server(emulator), shutdown_timeout=1.0)
    await runner.setup()
    try:
        await aiohttp.web.TCPSite(runner, "127.0.0.1", port).start()
    except OSError as exc:
        await runner.cleanup()
        await emulator.__aexit__(None, None, None)
        raise RuntimeError(f"the cluster stand-in cannot listen on 127.0.0.1:{port}: {exc.strerror}") from None
    url = f"http://127.0.0.1:{port}"
    write_kubeconfig(kubeconfig_path, url, namespace)
    return RunningCluster(emulator, url, kubeconfig_path, runner)


async def serve(args: argparse.Namespace) -> None:
    """The cluster stand-in process: API emulator, router, KServe and prometheus-operator stand-ins."""
    from devstack.kserve_standin import KServeStandIn
    from devstack.kubeapi import KubeApi
    from devstack.router import Router
    from devstack.rule_sync import RuleSync

    workdir = Path(args.workdir)
    cluster = await start_cluster(workdir / "kubeconfig", args.port, args.namespace)
    router = Router()
    runner = aiohttp.web.AppRunner(router.app(), access_log=None, shutdown_timeout=1.0)
    await runner.setup()
    tasks: list[asyncio.Task[None]] = []
    api = KubeApi(cluster.url)
    try:
        try:
            await aiohttp.web.TCPSite(runner, "127.0.0.1", args.router_port).start()
        except OSError as exc:
            raise RuntimeError(f"the router cannot listen on 127.0.0.1:{args.router_port}: {exc.strerror}") from None
        router_url = f"http://127.0.0.1:{args.router_port}"
        kserve = KServeStandIn(api, router, workdir, router_url, args.namespace, idle_grace=args.idle_grace)
        tasks.append(asyncio.create_task(kserve.run()))
        if args.prometheus_url:
            tasks.append(asyncio.create_task(RuleSync(api, Path(args.rules_dir), args.prometheus_url, args.namespace).run()))
        log.info("cluster stand-in: API %s, router %s", cluster.url, router_url)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        done = asyncio.create_task(stop.wait())
        finished, _ = await asyncio.wait([done, *tasks], return_when=asyncio.FIRST_COMPLETED)
        for task in finished:
            if task is not done and task.exception():
                raise task.exception()  # type: ignore[misc]
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await api.close()
        await runner.cleanup()
        await cluster.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m devstack.cluster", description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True, help="Kubernetes API port (loopback)")
    parser.add_argument("--router-port", type=int, required=True, help="inference router port (loopback)")
    parser.add_argument("--workdir", required=True, help="kubeconfig, downloaded models, predictor logs")
    parser.add_argument("--namespace", default="default")
    parser.add_argument("--prometheus-url", help="reload this Prometheus when PrometheusRules change")
    parser.add_argument("--rules-dir", help="where PrometheusRule groups are written (Prometheus rule_files)")
    parser.add_argument("--idle-grace", type=float, default=15.0, help="seconds before a revision without traffic stops")
    args = parser.parse_args(argv)
    if args.prometheus_url and not args.rules_dir:
        parser.error("--rules-dir is needed with --prometheus-url")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    try:
        asyncio.run(serve(args))
    except RuntimeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
