"""The demo's load generator: steady rate, every outcome recorded, lost requests told apart, the shift."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pandas as pd
from aiohttp import web

from devstack.loadgen import LoadGenerator, Shift, read_outcomes
from devstack.router import REVISION_HEADER, VERSION_HEADER
from devstack.stack import free_port


async def _server(status: int = 200) -> tuple[web.AppRunner, str, list[dict]]:
    bodies: list[dict] = []

    async def predict(request: web.Request) -> web.Response:
        bodies.append(await request.json())
        return web.json_response({"predictions": [0]}, status=status,
                                 headers={REVISION_HEADER: "fraud-predictor-00001", VERSION_HEADER: "fraud/1"})

    app = web.Application()
    app.router.add_post("/predict", predict)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return runner, f"http://127.0.0.1:{port}/predict", bodies


ROWS = pd.DataFrame({"mean radius": [10.0, 20.0], "mean texture": [1.0, 2.0]})


async def test_requests_go_out_at_the_rate_and_every_outcome_is_recorded(tmp_path: Path) -> None:
    runner, url, bodies = await _server()
    gen = LoadGenerator(url, ROWS, rate=40, out=tmp_path / "requests.jsonl", seed=1)
    task = asyncio.create_task(gen.run())
    await asyncio.sleep(1.0)
    gen.stop()
    summary = await task
    await runner.cleanup()
    outcomes = read_outcomes(tmp_path / "requests.jsonl")
    assert 30 <= summary.sent <= 50 and len(outcomes) == summary.sent == len(bodies)
    assert summary.lost == 0 and summary.by_version == {("fraud/1", 200): summary.sent}
    row = bodies[0]["instances"][0]
    assert set(row) == {"mean radius", "mean texture"}
    assert any(abs(row["mean radius"] - base) / base < 0.1 for base in (10.0, 20.0))


async def test_a_request_nobody_answers_is_lost_an_error_from_a_model_is_not(tmp_path: Path) -> None:
    runner, url, _ = await _server(status=500)
    gen = LoadGenerator(url, ROWS, rate=20, out=tmp_path / "a.jsonl")
    task = asyncio.create_task(gen.run())
    await asyncio.sleep(0.3)
    gen.stop()
    answered = await task
    await runner.cleanup()
    assert answered.sent > 0 and answered.lost == 0  # a 500 from a model version is an answer

    dead = LoadGenerator(url, ROWS, rate=20, out=tmp_path / "b.jsonl", timeout=1.0)  # the server is gone
    task = asyncio.create_task(dead.run())
    await asyncio.sleep(0.3)
    dead.stop()
    lost = await task
    assert lost.sent > 0 and lost.lost == lost.sent
    first = json.loads((tmp_path / "b.jsonl").read_text().splitlines()[0])
    assert first["status"] is None and first["error"]


def test_a_shift_multiplies_the_named_features_only() -> None:
    assert Shift({"mean area": 2.0}).apply({"mean area": 3.0, "mean texture": 4.0}) == {"mean area": 6.0,
                                                                                     "mean texture": 4.0}


async def test_every_request_names_its_inference_id_and_answered_ones_keep_their_label(tmp_path: Path) -> None:
    ids: list[str] = []

    async def predict(request: web.Request) -> web.Response:
        ids.append(request.headers["Ce-Id"])
        row = (await request.json())["instances"][0]
        return web.json_response({"predictions": [0]}, status=200 if row["mean radius"] < 15 else 500)

    app = web.Application()
    app.router.add_post("/predict", predict)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    gen = LoadGenerator(f"http://127.0.0.1:{port}/predict", ROWS, rate=40, out=tmp_path / "r.jsonl", seed=2,
                        labels=[1, 0])
    task = asyncio.create_task(gen.run())
    await asyncio.sleep(1.0)
    gen.stop()
    await task
    await runner.cleanup()
    assert len(set(ids)) == len(ids) > 20  # one id per request
    assert gen.take_labels(older_than=3600) == []  # not old enough yet: labels arrive later
    labelled = gen.take_labels(older_than=0)
    # Only the answered rows (mean radius 10, label 1) are labelled, under the id their request carried.
    assert labelled and {label for _, label in labelled} == {1} and {i for i, _ in labelled} < set(ids)
    assert gen.take_labels(older_than=0) == [], "each label is handed out once"
