"""Recently logged inference requests, per model: what a BlueGreen preview is fed by replay, and what the
controller reads through `GET /v1/recent-requests/{namespace}/{name}` (the warm-up gate's inputs).

Bounded whatever arrives: at most `max_models` models (least recently fed dropped), per model a ring of
`per_model` bodies holding at most `max_model_bytes` of canonical JSON (oldest dropped first), and a body
over `max_body_bytes` is never stored. Memory only: request bodies are the users' data and are never written
to disk. Only requests that already passed the monitor's intake are offered here (a ModelDeployment with
monitoring on, a V1/V2 body within the row limit, bound to the stable model), so a malformed or oversized
event cannot reach a preview.
"""

from __future__ import annotations

import json
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from typing import Any

# The Ce-Id the replayer gives its requests. KServe's logger uses a request's Ce-Id header as the event id,
# so a replayed request logged by the preview comes back marked: it is never stored again (no replay of
# replays) and never counted in the stable model's window. A caller forging the prefix only gets its own
# events left out.
REPLAY_ID_PREFIX = "kanari-replay-"


def protocol_of(body: dict[str, Any]) -> str | None:
    """KServe's protocol of a request body, which decides the path it is replayed to (None: neither)."""
    if "instances" in body:
        return "v1"
    if "inputs" in body:
        return "v2"
    return None


@dataclass
class _Ring:
    bodies: deque[bytes] = field(default_factory=deque)
    size: int = 0


class RecentRequests:
    def __init__(self, per_model: int = 200, max_models: int = 100, max_body_bytes: int = 64 * 1024,
                 max_model_bytes: int = 512 * 1024):
        for name, value in (("per_model", per_model), ("max_models", max_models),
                            ("max_body_bytes", max_body_bytes), ("max_model_bytes", max_model_bytes)):
            if value < 1:
                raise ValueError(f"recent requests: {name} must be at least 1, got {value}")
        self.per_model = per_model
        self.max_models = max_models
        self.max_body_bytes = min(max_body_bytes, max_model_bytes)
        self.max_model_bytes = max_model_bytes
        self._rings: OrderedDict[tuple[str, str], _Ring] = OrderedDict()
        self.refused = 0

    def add(self, namespace: str, model: str, body: Any) -> bool:
        """Keep one request body; False (nothing kept) when it is not a V1/V2 request object or too large."""
        if not isinstance(body, dict) or protocol_of(body) is None:
            self.refused += 1
            return False
        try:
            raw = json.dumps(body, separators=(",", ":"), allow_nan=False).encode()
        except (TypeError, ValueError):  # NaN/Infinity: not JSON a model server would take back
            self.refused += 1
            return False
        if len(raw) > self.max_body_bytes:
            self.refused += 1
            return False
        key = (namespace, model)
        ring = self._rings.get(key)
        if ring is None:
            ring = self._rings[key] = _Ring()
            while len(self._rings) > self.max_models:
                self._rings.popitem(last=False)
        self._rings.move_to_end(key)
        ring.bodies.append(raw)
        ring.size += len(raw)
        while len(ring.bodies) > self.per_model or ring.size > self.max_model_bytes:
            ring.size -= len(ring.bodies.popleft())
        return True

    def recent(self, namespace: str, model: str, limit: int | None = None) -> list[dict[str, Any]]:
        """The newest `limit` bodies (all when None), newest last."""
        ring = self._rings.get((namespace, model))
        if ring is None or (limit is not None and limit <= 0):
            return []
        bodies = list(ring.bodies)
        if limit is not None:
            bodies = bodies[-limit:]
        return [json.loads(b) for b in bodies]

    def drop(self, namespace: str, model: str) -> None:
        self._rings.pop((namespace, model), None)

    def models(self) -> list[tuple[str, str]]:
        return list(self._rings)

    def count(self, namespace: str, model: str) -> int:
        ring = self._rings.get((namespace, model))
        return len(ring.bodies) if ring else 0

    def bytes(self) -> int:
        return sum(r.size for r in self._rings.values())

    def __len__(self) -> int:
        return sum(len(r.bodies) for r in self._rings.values())
