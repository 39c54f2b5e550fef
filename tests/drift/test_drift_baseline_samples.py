"""`kanari drift baseline` also writes samples.jsonl: a few request bodies of training rows (label left out),
bounded, which the warm-up gate reads as its inputs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
from kanari.cli.main import main
from kanari.controller.warmup import parse_samples_jsonl, read_baseline_samples
from kanari.drift.model_monitor import SAMPLE_LIMIT, SAMPLES


def test_baseline_writes_bounded_warm_up_samples_the_prober_reads(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    n = 5000
    df = pd.DataFrame({
        "amount": rng.gamma(2.0, 30.0, n),
        "age": rng.integers(18, 90, n),
        "country": rng.choice(["DE", "FR", "US"], n),
        "label": rng.integers(0, 2, n),
    })
    df.loc[::7, "amount"] = np.nan  # rows with a missing value are not picked while complete rows exist
    data = tmp_path / "train.csv"
    df.to_csv(data, index=False)
    out = tmp_path / "baseline"
    assert main(["drift", "baseline", "--data", str(data), "--out", str(out), "--target", "label"]) == 0

    lines = (out / SAMPLES).read_text().splitlines()
    assert len(lines) == SAMPLE_LIMIT
    bodies = [json.loads(line) for line in lines]
    for body in bodies:
        (row,) = body["instances"]
        assert set(row) == {"amount", "age", "country"}  # the label is not part of a request
        assert row["amount"] is not None and isinstance(row["age"], int) and row["country"] in ("DE", "FR", "US")
    # Spread over the data, not the first rows only.
    assert len({b["instances"][0]["amount"] for b in bodies}) == SAMPLE_LIMIT
    assert parse_samples_jsonl((out / SAMPLES).read_text()) == bodies
    assert read_baseline_samples(f"file://{out}") == bodies
    assert read_baseline_samples(str(out)) == bodies


def test_parquet_samples_leave_a_named_index_out(tmp_path: Path) -> None:
    """The Parquet baseline picks its samples from the profile's own pass (one read of the file, the first
    rows): a pandas index stored in the file is the index, as the DataFrame path reads it, not a feature a model
    would be sent (the second read for the samples took every column of the file)."""
    rng = np.random.default_rng(3)
    n = 3000
    df = pd.DataFrame({
        "amount": rng.gamma(2.0, 30.0, n),
        "age": rng.integers(18, 90, n),
        "label": rng.integers(0, 2, n),
    }, index=pd.Index(rng.permutation(n) + 10_000, name="customer_id"))
    df.loc[df.index[::5], "amount"] = np.nan
    data = tmp_path / "train.parquet"
    df.to_parquet(data)
    out = tmp_path / "baseline"
    assert main(["drift", "baseline", "--data", str(data), "--out", str(out), "--target", "label"]) == 0
    rows = [json.loads(line)["instances"][0] for line in (out / SAMPLES).read_text().splitlines()]
    assert len(rows) == SAMPLE_LIMIT
    training = {(float(a), int(g)) for a, g in zip(df["amount"], df["age"], strict=True)}
    for row in rows:
        assert set(row) == {"amount", "age"}, row
        assert row["amount"] is not None and (row["amount"], row["age"]) in training
