"""The capacity benchmark's short version: rollouts on a cluster with little headroom all finish, none is
rolled back for waiting, and no plan needs a node beyond the NodePool limit."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.capacity_bench import main


@pytest.mark.timeout(120)
def test_ten_rollouts_with_20_percent_headroom(tmp_path: Path) -> None:
    out = tmp_path / "capacity.json"
    assert main(["--deployments", "10", "--out", str(out)]) == 0
    runs = {r["policy"]: r for r in json.loads(out.read_text())["runs"]}
    for r in runs.values():
        assert r["never_exceeded_limit"] and r["plans_beyond_limit"] == 0
        assert r["promoted"] == 10 and r["rolled_back"] == 0
        assert r["peak_neuroncores_in_use"] <= r["nodepool_limit_neuroncores"]
    # 8 spare replicas: Surge starts only rollouts whose peak (4 replicas) fits, Replace needs one each.
    assert runs["Surge"]["proceeded_at_once"] == 2 and runs["Replace"]["proceeded_at_once"] == 8
