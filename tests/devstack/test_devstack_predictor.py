"""The reference predictor (a kserve.Model): what it answers, how it rejects bad input, and that a
fault-injection model fails and slows down exactly as its artifact says."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from kserve.errors import InferenceError, InvalidInput

from devstack.predictor import TabularModel
from kfp_pipelines.training.mlp import load, predict_proba
from tests.devstack.devstack_testlib import FEATURES, model_tar_gz, unpack


def _model(tmp_path: Path, fault: dict[str, float] | None = None, seed: int = 1) -> TabularModel:
    model_dir = unpack(model_tar_gz(tmp_path / "model.tar.gz", fault), tmp_path / "model")
    model = TabularModel("fraud", model_dir, seed=seed)
    assert model.load() and model.ready
    return model


async def test_named_and_positional_rows_get_the_trained_models_decisions(tmp_path: Path) -> None:
    model = _model(tmp_path)
    rows = [[1.0, 2.0, 3.0], [-4.0, 0.5, 10.0], [0.0, 0.0, 0.0]]
    named = await model.predict({"instances": [dict(zip(FEATURES, r, strict=True)) for r in rows]})
    positional = await model.predict({"instances": rows})
    net, meta = load(tmp_path / "model" / "model.pt")
    expected = [int(p >= meta["threshold"]) for p in predict_proba(net, rows)]
    assert named == positional == {"predictions": expected}


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        ({"instances": [{"mean radius": 1.0}]}, "missing features mean area, mean texture"),
        ({"instances": [[1.0, 2.0]]}, "each row needs 3 values"),
        ({"instances": [["a", "b", "c"]]}, "must be numbers"),
        ({"instances": []}, "non-empty list"),
        ({"inputs": []}, "non-empty list"),
    ],
)
async def test_bad_rows_are_rejected_naming_the_problem(tmp_path: Path, payload: dict, message: str) -> None:
    model = _model(tmp_path)
    with pytest.raises(InvalidInput, match=message):
        await model.predict(payload)


async def test_a_fault_injection_model_fails_its_share_of_requests_and_adds_latency(tmp_path: Path) -> None:
    model = _model(tmp_path, {"errorRate": 0.4, "latencySeconds": 0.01})
    assert model.fault is not None and model.fault.error_rate == 0.4
    failures = 0
    started = time.monotonic()
    for _ in range(200):
        try:
            await model.predict({"instances": [[1.0, 2.0, 3.0]]})
        except InferenceError as exc:
            assert "fault-injection model" in str(exc)
            failures += 1
    assert time.monotonic() - started >= 200 * 0.01
    assert 50 <= failures <= 110  # 40% of 200, with room for chance


async def test_a_normal_model_never_fails(tmp_path: Path) -> None:
    model = _model(tmp_path)
    assert model.fault is None
    for _ in range(50):
        assert len((await model.predict({"instances": [[1.0, 2.0, 3.0]]}))["predictions"]) == 1


def test_an_impossible_fault_file_is_refused_at_load(tmp_path: Path) -> None:
    model_dir = unpack(model_tar_gz(tmp_path / "m.tar.gz", {"errorRate": 1.5}), tmp_path / "m")
    with pytest.raises(ValueError, match="errorRate must be in"):
        TabularModel("fraud", model_dir).load()


async def test_a_quality_fault_model_misses_positives_without_errors(tmp_path: Path) -> None:
    """The quality demo's model: the same decisions except that positives are missed at missRate; never an error."""
    honest = _model(tmp_path / "a")
    faulty = _model(tmp_path / "b", {"missRate": 0.6})
    import numpy as np

    rows = np.random.default_rng(0).normal(0, 10, size=(3000, 3)).round(3).tolist()
    truth = (await honest.predict({"instances": rows}))["predictions"]
    served = (await faulty.predict({"instances": rows}))["predictions"]
    positives = sum(truth)
    assert positives > 100
    assert all(s <= t for s, t in zip(served, truth, strict=True)), "only positives turn negative"
    kept = sum(served) / positives
    assert 0.25 <= kept <= 0.55  # 40% of them kept, with room for chance
