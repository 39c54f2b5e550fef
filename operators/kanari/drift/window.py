"""A sliding window of traffic in constant memory: a ring of profile buckets.

The window holds the last `size` rows at bucket granularity: rows fill the newest bucket, and when
the ring is full the oldest bucket is dropped whole, so the window covers between size*(B-1)/B and
size rows. Each bucket is a Profile (KLL sketch + category counters), so memory is bounded by the
number of buckets and the sketch size, not by `size`.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Mapping, Sequence

import numpy as np

from kanari.drift.profile import Feature, Profile
from kanari.drift.sketch import DEFAULT_K

DEFAULT_BUCKETS = 10
WINDOW_SKETCH_K = DEFAULT_K  # see sketch.DEFAULT_K: the KS error bound needs both sides sized


class SlidingWindow:
    def __init__(self, features: Sequence[Feature], size: int, buckets: int = DEFAULT_BUCKETS, k: int = WINDOW_SKETCH_K):
        if size < 1:
            raise ValueError(f"size: {size} must be positive")
        self.features = list(features)
        self.size = size
        self.bucket_rows = max(1, math.ceil(size / buckets))
        self.k = k
        self._buckets: deque[Profile] = deque(maxlen=max(1, math.ceil(size / self.bucket_rows)))
        self._merged: Profile | None = None
        self.version = 0  # bumps on every change, so readers know when to recompute

    def _new_bucket(self) -> Profile:
        return Profile.empty(self.features, k=self.k)

    @property
    def samples(self) -> int:
        return sum(b.rows for b in self._buckets)

    def add(self, numeric: np.ndarray, categorical: Mapping[str, np.ndarray], rows: int) -> None:
        start = 0
        while start < rows:
            if not self._buckets or self._buckets[-1].rows >= self.bucket_rows:
                self._buckets.append(self._new_bucket())
            bucket = self._buckets[-1]
            take = min(rows - start, self.bucket_rows - bucket.rows)
            end = start + take
            bucket.add_rows(numeric[start:end], {k: v[start:end] for k, v in categorical.items()}, take)
            start = end
        self._merged = None
        self.version += 1

    def profile(self) -> Profile:
        """The whole window as one profile (cached until the next add)."""
        if self._merged is None:
            merged = self._new_bucket()
            for b in self._buckets:
                merged.merge(b.copy())
            self._merged = merged
        return self._merged
