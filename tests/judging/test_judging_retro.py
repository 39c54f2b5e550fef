"""The retro-verdict decision: rolls back a promoted version whose realised recall drops, inside the window
only, never on too few labels, and rarely when the version truly meets its floor."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import pytest
from kanari.judging.retro import retro_verdict

T0 = datetime(2026, 11, 30, 6, 0, tzinfo=UTC)


def verdict(realised: float, n: int, after: timedelta = timedelta(hours=2)) -> object:
    return retro_verdict(metric="recall", realised=realised, denominator=n, registered=0.9, tolerance=0.05,
                         promoted_at=T0, now=T0 + after, rollback_window=timedelta(hours=24))


def test_a_recall_drop_inside_the_window_rolls_back() -> None:
    v = verdict(0.6, 300)
    assert v.rollback and v.reason == "RealisedQualityDrop" and "0.6000" in v.message  # type: ignore[attr-defined]
    assert not verdict(0.6, 300, after=timedelta(hours=30)).rollback  # type: ignore[attr-defined]
    assert verdict(0.6, 10).reason == "TooFewLabels"  # type: ignore[attr-defined]
    assert verdict(0.88, 300).reason == "WithinTolerance"  # type: ignore[attr-defined]
    with pytest.raises(ValueError, match="proportions"):
        verdict(1.5, 300)


def test_a_version_meeting_its_floor_is_rarely_rolled_back() -> None:
    rng = np.random.default_rng(2)
    floor = 0.85
    checks = 2000
    rolled = sum(verdict(rng.binomial(n, floor) / n, n).rollback  # type: ignore[attr-defined]
                 for n in rng.integers(50, 2000, size=checks))
    assert rolled / checks <= 0.01 + 3 * (0.01 * 0.99 / checks) ** 0.5
