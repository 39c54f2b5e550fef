"""A load generator for the local demo: steady inference traffic, with an input shift that can be switched on.

Each request carries one row, sampled from a reference frame (the training data's features) with a little
multiplicative jitter, as V1 `{"instances": [{feature: value, ...}]}`. A `Shift` multiplies chosen features,
which is how the demo makes live traffic drift away from the training baseline. Each request names its inference
id (Ce-Id, which KServe's payload logger keeps); with `labels`, the generator also keeps each answered request's
true label under that id: the ground truth a labelling process would deliver later.

Every request's outcome is appended to a JSON-lines file: time, HTTP status, the revision and model version
that answered (the router's headers), latency, error. A request is *lost* when no model version answered it:
no connection, a timeout, or the router finding no revision to send it to.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections import Counter, deque
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import pandas as pd

from devstack.router import REVISION_HEADER, VERSION_HEADER

JITTER = 0.02


@dataclass(frozen=True)
class Shift:
    """Multiply each named feature by its factor (a covariate shift)."""

    factors: Mapping[str, float] = field(default_factory=dict)

    def apply(self, row: dict[str, float]) -> dict[str, float]:
        return {k: v * self.factors.get(k, 1.0) for k, v in row.items()}


@dataclass(frozen=True)
class Outcome:
    t: float
    status: int | None
    revision: str
    version: str
    ms: float
    error: str = ""

    @property
    def lost(self) -> bool:
        return self.status is None or not self.revision


@dataclass
class Summary:
    sent: int = 0
    lost: int = 0
    by_version: Counter[tuple[str, int]] = field(default_factory=Counter)

    def add(self, o: Outcome) -> None:
        self.sent += 1
        self.lost += int(o.lost)
        if not o.lost:
            assert o.status is not None
            self.by_version[(o.version or o.revision, o.status)] += 1


def read_outcomes(path: Path) -> list[Outcome]:
    if not path.exists():
        return []
    return [Outcome(**json.loads(line)) for line in path.read_text().splitlines() if line.strip()]


class LoadGenerator:
    def __init__(
        self, url: str, rows: pd.DataFrame, rate: float, out: Path, seed: int = 0, timeout: float = 10.0,
        max_inflight: int = 64, labels: Sequence[int] | None = None,
    ):
        if rate <= 0:
            raise ValueError(f"rate: {rate} must be positive")
        if rows.empty:
            raise ValueError("rows: the reference frame is empty")
        self.url = url
        self.features = [str(c) for c in rows.columns]
        self.values = rows.to_numpy(dtype=float)
        self.labels = list(labels) if labels is not None else None
        if self.labels is not None and len(self.labels) != len(self.values):
            raise ValueError(f"labels: {len(self.labels)} labels for {len(self.values)} rows")
        # (time answered, inference id, label) of answered requests, oldest first; bounded.
        self.answered: deque[tuple[float, str, int]] = deque(maxlen=100_000)
        self.rate = rate
        self.out = out
        self.timeout = timeout
        self.shift = Shift()
        self.summary = Summary()
        self._rng = np.random.default_rng(seed)
        self._slots = asyncio.Semaphore(max_inflight)
        self._stop = asyncio.Event()

    def row(self) -> dict[str, float]:
        return self._sample()[0]

    def _sample(self) -> tuple[dict[str, float], int | None]:
        i = int(self._rng.integers(len(self.values)))
        base = self.values[i]
        jittered = base * (1.0 + self._rng.normal(0.0, JITTER, size=base.shape))
        row = self.shift.apply({f: round(float(v), 6) for f, v in zip(self.features, jittered, strict=True)})
        return row, (self.labels[i] if self.labels is not None else None)

    def take_labels(self, older_than: float) -> list[tuple[str, int]]:
        """The labels of requests answered more than `older_than` seconds ago (delayed ground truth)."""
        out = []
        cutoff = time.monotonic() - older_than
        while self.answered and self.answered[0][0] <= cutoff:
            _, ident, label = self.answered.popleft()
            out.append((ident, label))
        return out

    def stop(self) -> None:
        self._stop.set()

    async def run(self) -> Summary:
        """Send `rate` requests a second until stop(); returns the summary once in-flight requests end."""
        self.out.parent.mkdir(parents=True, exist_ok=True)
        tasks: set[asyncio.Task[None]] = set()
        timeout = aiohttp.ClientTimeout(total=self.timeout)
        with self.out.open("a") as sink:
            async with aiohttp.ClientSession(timeout=timeout) as session:
                interval = 1.0 / self.rate
                next_at = time.monotonic()
                while not self._stop.is_set():
                    await self._slots.acquire()
                    task = asyncio.create_task(self._one(session, sink))
                    tasks.add(task)
                    task.add_done_callback(tasks.discard)
                    next_at += interval
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._stop.wait(), max(0.0, next_at - time.monotonic()))
                if tasks:
                    await asyncio.gather(*tasks, return_exceptions=True)
        return self.summary

    async def _one(self, session: aiohttp.ClientSession, sink: Any) -> None:
        started = time.monotonic()
        t = time.time()
        row, label = self._sample()
        ident = str(uuid.uuid4())
        try:
            async with session.post(self.url, json={"instances": [row]}, headers={"Ce-Id": ident}) as resp:
                await resp.read()
                if resp.status == 200 and label is not None:
                    self.answered.append((time.monotonic(), ident, int(label)))
                outcome = Outcome(t, resp.status, resp.headers.get(REVISION_HEADER, ""),
                                  resp.headers.get(VERSION_HEADER, ""), _ms(started),
                                  "" if resp.status == 200 else f"HTTP {resp.status}")
        except (aiohttp.ClientError, TimeoutError) as exc:
            outcome = Outcome(t, None, "", "", _ms(started), f"{type(exc).__name__}: {exc}")
        finally:
            self._slots.release()
        self.summary.add(outcome)
        sink.write(json.dumps(asdict(outcome)) + "\n")
        sink.flush()


def _ms(started: float) -> float:
    return round((time.monotonic() - started) * 1000.0, 2)
