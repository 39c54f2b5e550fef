"""An async client for Prometheus' HTTP query API (and Amazon Managed Prometheus, signed with SigV4).

Configuration comes from the environment:
  KANARI_PROMETHEUS_URL                 base URL, e.g. http://prometheus-operated.monitoring:9090 or
                                        https://aps-workspaces.us-east-1.amazonaws.com/workspaces/ws-.../
  KANARI_PROMETHEUS_HEADERS             extra headers, "Name=value,Other=value" (e.g. X-Scope-OrgID=team-a)
  KANARI_PROMETHEUS_BEARER_TOKEN_FILE   file holding a bearer token, re-read on each request (it rotates)
  KANARI_PROMETHEUS_SIGV4_REGION        sign requests for Amazon Managed Prometheus (service "aps") with
                                        the default AWS credential chain (IRSA, env, profile)

Connection errors, timeouts, 429 and 5xx answers are retried with exponential backoff, then raised as
PrometheusUnavailable. A query Prometheus rejects (400/422) raises PrometheusQueryError with its message.
Neither is ever turned into a result.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import botocore.session
import httpx
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest

ENV_URL = "KANARI_PROMETHEUS_URL"
ENV_HEADERS = "KANARI_PROMETHEUS_HEADERS"
ENV_TOKEN_FILE = "KANARI_PROMETHEUS_BEARER_TOKEN_FILE"
ENV_SIGV4_REGION = "KANARI_PROMETHEUS_SIGV4_REGION"


def label_value(value: str) -> str:
    """`value` inside a PromQL double-quoted label matcher: a quote in a name cannot end the string early."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


class PrometheusError(Exception):
    pass


class PrometheusUnavailable(PrometheusError):
    """Prometheus could not answer (down, unreachable, overloaded, refusing our credentials)."""


class PrometheusQueryError(PrometheusError):
    """Prometheus answered that the query is wrong (errorType bad_data, execution, ...)."""

    def __init__(self, error_type: str, message: str):
        super().__init__(f"{error_type}: {message}")
        self.error_type = error_type
        self.message = message


class ConfigError(ValueError):
    """A bad setting; the message names the environment variable."""


@dataclass(frozen=True)
class PrometheusConfig:
    url: str
    headers: Mapping[str, str] = field(default_factory=dict)
    bearer_token_file: str | None = None
    sigv4_region: str | None = None
    timeout: float = 10.0
    attempts: int = 4
    backoff: float = 0.25

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> PrometheusConfig:
        env = os.environ if env is None else env
        url = env.get(ENV_URL, "").strip()
        if not url:
            raise ConfigError(f"{ENV_URL}: not set (the Prometheus base URL, e.g. http://prometheus:9090)")
        if not url.startswith(("http://", "https://")):
            raise ConfigError(f"{ENV_URL}: {url!r} is not an http(s) URL")
        headers: dict[str, str] = {}
        for item in filter(None, (p.strip() for p in env.get(ENV_HEADERS, "").split(","))):
            name, sep, value = item.partition("=")
            if not sep or not name.strip():
                raise ConfigError(f"{ENV_HEADERS}: {item!r} is not Name=value")
            headers[name.strip()] = value.strip()
        token_file = env.get(ENV_TOKEN_FILE) or None
        if token_file and not Path(token_file).is_file():
            raise ConfigError(f"{ENV_TOKEN_FILE}: {token_file} is not a readable file")
        region = env.get(ENV_SIGV4_REGION) or None
        if region and token_file:
            raise ConfigError(f"{ENV_SIGV4_REGION}: set it or {ENV_TOKEN_FILE}, not both (both use Authorization)")
        return cls(url=url.rstrip("/"), headers=headers, bearer_token_file=token_file, sigv4_region=region)


@dataclass(frozen=True)
class Sample:
    labels: dict[str, str]
    value: float


@dataclass(frozen=True)
class RangeSeries:
    labels: dict[str, str]
    points: list[tuple[float, float]]


def run_blocking(config: PrometheusConfig, work: Any) -> Any:
    """`await work(client)` from synchronous code (reports, scripts), in a loop of its own."""

    async def go() -> Any:
        async with PrometheusClient(config) as client:
            return await work(client)

    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(go())
    import concurrent.futures

    with concurrent.futures.ThreadPoolExecutor(1) as pool:  # called from async code: not on its loop
        return pool.submit(asyncio.run, go()).result()


class _SigV4:
    """Signs each request with botocore's SigV4Auth for service "aps"."""

    def __init__(self, region: str):
        credentials = botocore.session.get_session().get_credentials()
        if credentials is None:
            raise ConfigError(f"{ENV_SIGV4_REGION}: set, but no AWS credentials found (IRSA, env or profile)")
        self._credentials = credentials
        self._region = region

    def headers(self, method: str, url: str, body: bytes, headers: Mapping[str, str]) -> dict[str, str]:
        request = AWSRequest(method=method, url=url, data=body, headers=dict(headers))
        SigV4Auth(self._credentials.get_frozen_credentials(), "aps", self._region).add_auth(request)
        return dict(request.headers.items())


class PrometheusClient:
    """`query()` is one logical query; `queries` and `requests` count them (requests include retries)."""

    def __init__(self, config: PrometheusConfig, transport: httpx.AsyncBaseTransport | None = None):
        self.config = config
        self._http = httpx.AsyncClient(timeout=config.timeout, transport=transport)
        self._signer = _SigV4(config.sigv4_region) if config.sigv4_region else None
        self.queries = 0
        self.requests = 0

    async def __aenter__(self) -> PrometheusClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        await self._http.aclose()

    def _headers(self, url: str, body: bytes) -> dict[str, str]:
        headers = {"Content-Type": "application/x-www-form-urlencoded", "Accept": "application/json"}
        headers.update(self.config.headers)
        if self.config.bearer_token_file:
            token = Path(self.config.bearer_token_file).read_text().strip()
            headers["Authorization"] = f"Bearer {token}"
        if self._signer:
            headers = self._signer.headers("POST", url, body, headers)
        return headers

    async def query(self, promql: str, at: datetime | None = None) -> list[Sample]:
        """Instant query; a scalar result comes back as one unlabelled sample."""
        self.queries += 1
        params = {"query": promql}
        if at is not None:
            params["time"] = f"{at.timestamp():.3f}"
        data = await self._post("/api/v1/query", urlencode(params).encode())
        kind, result = data.get("resultType"), data.get("result")
        if kind == "vector":
            return [Sample(dict(r.get("metric", {})), float(r["value"][1])) for r in result or []]
        if kind == "scalar" and isinstance(result, list):
            return [Sample({}, float(result[1]))]
        raise PrometheusQueryError("bad_data", f"result type {kind!r} is not a number (use a vector or scalar)")

    async def query_range(self, promql: str, start: float, end: float, step: float) -> list[RangeSeries]:
        """Range query (unix seconds); NaN points are kept as NaN for the caller to drop or show as gaps."""
        self.queries += 1
        params = {"query": promql, "start": f"{start:.3f}", "end": f"{end:.3f}", "step": f"{step:g}"}
        data = await self._post("/api/v1/query_range", urlencode(params).encode())
        if data.get("resultType") != "matrix":
            raise PrometheusQueryError("bad_data", f"result type {data.get('resultType')!r} is not a matrix")
        return [RangeSeries(dict(r.get("metric", {})), [(float(t), float(v)) for t, v in r.get("values") or []])
                for r in data.get("result") or []]

    async def _post(self, path: str, body: bytes) -> dict[str, Any]:
        url = self.config.url + path
        last = ""
        for attempt in range(self.config.attempts):
            if attempt:
                await asyncio.sleep(self.config.backoff * 2 ** (attempt - 1))
            self.requests += 1
            try:
                resp = await self._http.post(url, content=body, headers=self._headers(url, body))
            except httpx.TransportError as exc:
                last = f"{type(exc).__name__}: {exc or 'no answer'} ({url})"
                continue
            if resp.status_code in (400, 422):
                payload = _json(resp)
                raise PrometheusQueryError(
                    str(payload.get("errorType", "bad_data")), str(payload.get("error", resp.text[:500]))
                )
            if resp.status_code == 429 or resp.status_code >= 500:
                last = f"HTTP {resp.status_code} from {url}: {resp.text[:300]}"
                continue
            if resp.status_code != 200:
                raise PrometheusUnavailable(f"HTTP {resp.status_code} from {url}: {resp.text[:300]}")
            payload = _json(resp)
            if payload.get("status") != "success":
                raise PrometheusQueryError(str(payload.get("errorType", "unknown")), str(payload.get("error", "")))
            return dict(payload.get("data") or {})
        raise PrometheusUnavailable(f"{last} (after {self.config.attempts} attempts)")


def _json(resp: httpx.Response) -> dict[str, Any]:
    try:
        body = resp.json()
    except ValueError:
        raise PrometheusUnavailable(f"HTTP {resp.status_code}: not JSON: {resp.text[:200]!r}") from None
    return body if isinstance(body, dict) else {}
