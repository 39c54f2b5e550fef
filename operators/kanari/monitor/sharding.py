"""Several drift-monitor replicas sharing the load by model.

Each model (namespace/name) is owned by exactly one replica of the monitor's StatefulSet: jump consistent
hashing (Lamping & Veach 2014) of a process-independent hash (BLAKE2b) of "namespace/name" over
the replica ordinals. Going from n to n+1 replicas moves only the models the new replica takes (1/(n+1) of
them); the rest keep their windows. KServe's payload logger posts to the monitor's Service, so an event lands
on any replica; one that does not own the event's model forwards it, once, to the owner's stable pod address
(the headless Service gives each pod a DNS name). A forwarded event carries FORWARDED_HEADER and is never
forwarded again: if two replicas disagree on the membership (during a scale change) the second one keeps it,
so an event takes at most one hop and is never lost to a loop.

Losing a replica loses at most its current windows; they rebuild from new traffic once it is back (its
models are not re-hashed onto the others: a model's window must not be split across replicas).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import socket
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

if TYPE_CHECKING:
    import aiohttp
    from prometheus_client import CollectorRegistry, Counter

FORWARDED_HEADER = "X-Kanari-Forwarded-By"
# Headers that describe one hop's connection, not the event; the rest (ce-*, content-type) go on unchanged.
HOP_HEADERS = frozenset({"host", "content-length", "transfer-encoding", "connection", "keep-alive", FORWARDED_HEADER.lower()})
FORWARD_TIMEOUT = 10.0
STRUCTURED = "application/cloudevents+json"


def stable_key(namespace: str, model: str) -> int:
    """A 64-bit hash of namespace/model, the same in every process (unlike hash() with PYTHONHASHSEED)."""
    digest = hashlib.blake2b(f"{namespace}/{model}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def jump_hash(key: int, buckets: int) -> int:
    """Jump consistent hash: the bucket in [0, buckets) of a 64-bit key."""
    if buckets < 1:
        raise ValueError(f"buckets: {buckets} must be at least 1")
    b, j = -1, 0
    while j < buckets:
        b = j
        key = (key * 2862933555777941757 + 1) & 0xFFFFFFFFFFFFFFFF
        j = int((b + 1) * (float(1 << 31) / float((key >> 33) + 1)))
    return b


def owner(namespace: str, model: str, replicas: int) -> int:
    """The ordinal of the replica that keeps this model's windows."""
    return jump_hash(stable_key(namespace, model), replicas)


def routing_key(headers: Mapping[str, str], body: bytes) -> tuple[str, str] | None:
    """(namespace, model) of a delivery, from the binary-mode headers or a structured-mode body; None when
    it has neither (the owner check is skipped and the monitor reports the event as malformed)."""
    lower = {k.lower(): v for k, v in headers.items()}
    ns, model = lower.get("ce-namespace"), lower.get("ce-inferenceservicename")
    if ns and model:
        return ns, model
    if lower.get("content-type", "").split(";")[0].strip().lower() == STRUCTURED:
        try:
            doc = json.loads(body)
        except (json.JSONDecodeError, UnicodeDecodeError):
            return None
        if isinstance(doc, dict) and isinstance(doc.get("namespace"), str) and isinstance(doc.get("inferenceservicename"), str):
            return doc["namespace"], doc["inferenceservicename"]
    return None


def ordinal_from_hostname(hostname: str) -> int:
    """A StatefulSet pod's ordinal: its hostname is <statefulset>-<ordinal>."""
    match = re.search(r"-(\d+)$", hostname)
    if match is None:
        raise ValueError(f"replica ordinal: hostname {hostname!r} does not end in -<ordinal>; pass --replica-ordinal")
    return int(match.group(1))


@dataclass(frozen=True)
class ShardSettings:
    peers: tuple[str, ...]  # the base URL of each replica, by ordinal
    ordinal: int
    ca_file: str | None = None  # the CA that signed the peers' certificate, for https:// peers

    def __post_init__(self) -> None:
        if not self.peers:
            raise ValueError("peers: at least one replica URL is needed")
        for i, url in enumerate(self.peers):
            parts = urlsplit(url)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise ValueError(f"peers[{i}]: {url!r} is not an http(s) URL")
        if any(p.startswith("https://") for p in self.peers) and self.ca_file is not None:
            try:
                with open(self.ca_file, "rb"):
                    pass
            except OSError as exc:
                raise ValueError(f"peer CA file: cannot read: {type(exc).__name__}") from None
        if not 0 <= self.ordinal < len(self.peers):
            raise ValueError(f"replica ordinal: {self.ordinal} is not in [0, {len(self.peers)}) (peers: {len(self.peers)})")

    @property
    def replicas(self) -> int:
        return len(self.peers)

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> ShardSettings | None:
        peers = tuple(p.strip() for p in (args.peers or "").split(",") if p.strip())
        if len(peers) <= 1:
            return None
        ordinal = args.replica_ordinal if args.replica_ordinal is not None else ordinal_from_hostname(socket.gethostname())
        return cls(peers, ordinal, args.peer_ca_file)


def shard_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--peers",
        help="comma-separated base URLs of all monitor replicas, by StatefulSet ordinal; with more than one, "
        "each replica keeps only the models it owns and forwards the others' events once",
    )
    parser.add_argument(
        "--replica-ordinal", type=int, help="this replica's ordinal among --peers (default: from the hostname's -N suffix)"
    )
    parser.add_argument("--peer-ca-file", help="CA bundle that signed the https:// peers' certificate (default: system CAs)")


class Shards:
    """The routing decision (pure: `route_to`) and the one-hop forward (`forward`)."""

    def __init__(self, settings: ShardSettings, registry: CollectorRegistry, events: Counter):
        from prometheus_client import Counter

        self.settings = settings
        self.forwarded = Counter(
            "kanari_drift_forwarded_events",
            "Events this replica passed to the replica owning their model, by outcome.",
            ["outcome"],
            registry=registry,
        )
        self.events = events  # the monitor's kanari_drift_events: an event the owner never got is dropped
        self._session: aiohttp.ClientSession | None = None

    def route_to(self, headers: Mapping[str, str], body: bytes) -> int | None:
        """The ordinal to forward to, or None to handle here (ours, already forwarded once, or unroutable)."""
        if any(k.lower() == FORWARDED_HEADER.lower() for k in headers):
            return None
        key = routing_key(headers, body)
        if key is None:
            return None
        target = owner(key[0], key[1], self.settings.replicas)
        return None if target == self.settings.ordinal else target

    def owner_of(self, namespace: str, model: str, headers: Mapping[str, str] | None = None) -> int | None:
        """The ordinal keeping this model's state (its window, labels and recent requests), None when it is this
        one or when the request was already forwarded once (never twice)."""
        if any(k.lower() == FORWARDED_HEADER.lower() for k in headers or {}):
            return None
        target = owner(namespace, model, self.settings.replicas)
        return None if target == self.settings.ordinal else target

    async def fetch(self, target: int, path: str, headers: Mapping[str, str]) -> tuple[int, dict[str, Any]]:
        """A GET of the owner's read API (its recent requests), once: the caller's Authorization goes along."""
        import aiohttp

        assert self._session is not None, "Shards.context must be in the app's cleanup_ctx"
        out = {k: v for k, v in headers.items() if k.lower() in ("authorization", "accept")}
        out[FORWARDED_HEADER] = str(self.settings.ordinal)
        try:
            async with self._session.get(self.settings.peers[target].rstrip("/") + path, headers=out) as resp:
                try:
                    answer = await resp.json(content_type=None)
                except (json.JSONDecodeError, aiohttp.ContentTypeError):
                    answer = {}
                return resp.status, answer if isinstance(answer, dict) else {}
        except (TimeoutError, aiohttp.ClientError) as exc:
            return 503, {"error": f"replica {target}: {type(exc).__name__}"}

    async def forward(
        self, target: int, headers: Mapping[str, str], body: bytes, path: str = ""
    ) -> tuple[int, dict[str, Any]]:
        import aiohttp

        assert self._session is not None, "Shards.context must be in the app's cleanup_ctx"
        out = {k: v for k, v in headers.items() if k.lower() not in HOP_HEADERS}
        out[FORWARDED_HEADER] = str(self.settings.ordinal)
        try:
            url = self.settings.peers[target].rstrip("/") + path if path else self.settings.peers[target]
            async with self._session.post(url, data=body, headers=out) as resp:
                try:
                    answer = await resp.json(content_type=None)
                except (json.JSONDecodeError, aiohttp.ContentTypeError):
                    answer = {}
                self.forwarded.labels("ok" if resp.status < 500 else "owner_error").inc()
                result = answer if isinstance(answer, dict) else {}
                return resp.status, {**result, "replica": target}
        except (TimeoutError, aiohttp.ClientError) as exc:
            self.forwarded.labels("unreachable").inc()
            self.events.labels("owner_unreachable").inc()
            # 503: the sender may retry; the event is not taken for accepted.
            return 503, {"outcome": "owner_unreachable", "replica": target, "error": f"replica {target}: {type(exc).__name__}"}

    async def context(self, _app: Any) -> AsyncIterator[None]:
        import ssl

        import aiohttp

        # Peers are verified like any server (an https:// peer's certificate covers *.<peers service>).
        tls = ssl.create_default_context(cafile=self.settings.ca_file) if self.settings.ca_file else None
        self._session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=FORWARD_TIMEOUT), connector=aiohttp.TCPConnector(ssl=tls if tls else True)
        )
        yield
        await self._session.close()


def peer_urls(statefulset: str, service: str, namespace: str, port: int, replicas: int) -> Sequence[str]:
    """The pods' stable addresses behind a headless Service (what the chart passes as --peers)."""
    return [f"http://{statefulset}-{i}.{service}.{namespace}.svc:{port}/" for i in range(replicas)]
