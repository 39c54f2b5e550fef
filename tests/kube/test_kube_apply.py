"""How the controller writes what it owns: a field it stops setting is removed from the InferenceService,
fields KServe defaults (and anyone else's) are left alone, and nothing is written when nothing changed.

Against the API emulator (which applies every PATCH as a merge patch, as the patch is sent), plus the merge
patch algebra as a property over random object trees."""

from __future__ import annotations

import asyncio
import copy
import json
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from kanari import mergepatch
from kanari.controller.kube import ISVC, LAST_APPLIED, Kube, merge_patch_for, with_last_applied

from tests.operator.harness import Cluster
from tests.operator.harness import Kube as UserKube

pytestmark = pytest.mark.timeout(60)
NS = "ml"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    with Cluster(tmp_path_factory.mktemp("apiserver")) as c:
        yield c


def isvc(name: str, **predictor: Any) -> dict[str, Any]:
    pred = {"minReplicas": 1, "model": {"modelFormat": {"name": "sklearn"}, "storageUri": "s3://m/v1"}, **predictor}
    return {"apiVersion": "serving.kserve.io/v1beta1", "kind": "InferenceService",
            "metadata": {"name": name, "namespace": NS, "labels": {"app.kubernetes.io/managed-by": "kanari"},
                         "annotations": {"kanari.dev/revision": "r1"}},
            "spec": {"predictor": pred}}


def test_dropped_fields_are_removed_and_kserve_defaults_kept(cluster):
    kube, user = Kube(cluster.client()), UserKube(cluster, NS)
    name = "fraud"

    def current() -> dict[str, Any]:
        obj = user.isvc(name)
        assert obj is not None
        return obj

    first = isvc(name, canaryTrafficPercent=10, nodeSelector={"pool": "inf2", "zone": "a"},
                 logger={"mode": "all", "url": "http://drift"})
    assert asyncio.run(kube.apply(ISVC, first, None)) == "created"
    # KServe's webhook and controller default fields Kanari never sets; someone else labels the object.
    user.merge_patch(ISVC, name, {"metadata": {"labels": {"team": "fraud"}, "annotations": {
        "serving.kserve.io/deploymentMode": "Serverless"}},
        "spec": {"predictor": {"model": {"protocolVersion": "v1"}, "containerConcurrency": 0}}})
    second = isvc(name, nodeSelector={"pool": "inf2"})  # no canary, no logger, one selector key fewer
    second["metadata"]["annotations"] = {"kanari.dev/revision": "r2"}
    assert asyncio.run(kube.apply(ISVC, second, current())) == "updated"
    got = current()
    pred = got["spec"]["predictor"]
    assert "canaryTrafficPercent" not in pred and "logger" not in pred, "fields Kanari stopped setting must go"
    assert pred["nodeSelector"] == {"pool": "inf2"}
    assert pred["model"]["protocolVersion"] == "v1" and pred["containerConcurrency"] == 0, "KServe's defaults stay"
    assert got["metadata"]["labels"]["team"] == "fraud"
    assert got["metadata"]["annotations"]["serving.kserve.io/deploymentMode"] == "Serverless"
    assert got["metadata"]["annotations"]["kanari.dev/revision"] == "r2"
    # Steady state: nothing to write.
    before = got["metadata"]["resourceVersion"]
    assert asyncio.run(kube.apply(ISVC, second, got)) == "unchanged"
    assert current()["metadata"]["resourceVersion"] == before
    # Someone edits a field Kanari sets: it is put back (and only that).
    user.merge_patch(ISVC, name, {"spec": {"predictor": {"minReplicas": 7}}})
    assert asyncio.run(kube.apply(ISVC, second, current())) == "updated"
    assert current()["spec"]["predictor"]["minReplicas"] == 1
    assert current()["spec"]["predictor"]["containerConcurrency"] == 0


def test_objects_written_before_the_record_still_drop_the_canary(cluster):
    """An InferenceService from an older Kanari (no record): the fields it was known to drop still go."""
    user = UserKube(cluster, NS)
    old = isvc("legacy", canaryTrafficPercent=20)
    user.custom.create_namespaced_custom_object(*ISVC[:2], NS, ISVC[2], old)
    kube = Kube(cluster.client())
    assert asyncio.run(kube.apply(ISVC, isvc("legacy"), user.isvc("legacy"))) == "updated"
    got = user.isvc("legacy")
    assert got is not None and "canaryTrafficPercent" not in got["spec"]["predictor"]
    assert json.loads(got["metadata"]["annotations"][LAST_APPLIED])["spec"] == isvc("legacy")["spec"]


# ------------------------------------------------------------------------------- the merge patch algebra
OURS = st.sampled_from(["a", "b", "c"])
THEIRS = st.sampled_from(["x", "y"])
LEAF = st.one_of(st.integers(0, 3), st.lists(st.integers(0, 3), max_size=2))


def trees(keys: st.SearchStrategy[str]) -> st.SearchStrategy[dict[str, Any]]:
    return st.recursive(st.dictionaries(keys, LEAF, max_size=3),
                        lambda children: st.dictionaries(keys, st.one_of(LEAF, children), max_size=3), max_leaves=8)


def graft(base: dict[str, Any], foreign: dict[str, Any]) -> dict[str, Any]:
    """`base` with `foreign`'s keys (never ours) added at every level where `base` has a dict."""
    out = copy.deepcopy(base)
    for k, v in foreign.items():
        out[k] = v
    for k, v in out.items():
        if isinstance(v, dict) and k in base:
            out[k] = graft(v, foreign)
    return out


def contains(big: Any, small: Any) -> bool:
    if isinstance(small, dict):
        return isinstance(big, dict) and all(k in big and contains(big[k], v) for k, v in small.items())
    return big == small


def dropped(last: Any, desired: Any, path: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    if not isinstance(last, dict):
        return
    for k, v in last.items():
        if not isinstance(desired, dict) or k not in desired:
            yield (*path, k)
        elif isinstance(desired[k], dict):
            yield from dropped(v, desired[k], (*path, k))


def lookup(obj: Any, path: tuple[str, ...]) -> bool:
    for k in path:
        if not isinstance(obj, dict) or k not in obj:
            return False
        obj = obj[k]
    return True


@settings(max_examples=300, deadline=None)
@given(last=trees(OURS), desired=trees(OURS), foreign=st.dictionaries(THEIRS, LEAF, max_size=2))
def test_three_way_patch_sets_ours_drops_what_we_dropped_and_keeps_theirs(last, desired, foreign):
    current = graft(last, foreign)  # what we applied last time, plus others' fields inside it
    result = mergepatch.apply(current, mergepatch.three_way(last, desired, current))
    assert contains(result, desired)
    for path in dropped(last, desired):
        assert not lookup(result, path), f"{path} was ours and is no longer wanted"
    for k, v in foreign.items():  # others' top-level fields survive any change of ours
        assert result.get(k) == v
    # Applying again changes nothing and writes nothing.
    assert mergepatch.three_way(desired, desired, result) == {}


@settings(max_examples=200, deadline=None)
@given(current=trees(OURS), desired=trees(OURS))
def test_diff_turns_one_object_into_the_other(current, desired):
    assert mergepatch.apply(current, mergepatch.diff(current, desired)) == desired


def test_the_record_is_what_was_applied_and_excludes_itself():
    desired = isvc("m", canaryTrafficPercent=5)
    applied = with_last_applied(desired)
    record = json.loads(applied["metadata"]["annotations"][LAST_APPLIED])
    assert LAST_APPLIED not in record["metadata"]["annotations"] and record["spec"] == desired["spec"]
    assert with_last_applied(applied) == applied, "recording twice changes nothing"
    assert merge_patch_for(applied, applied) == {}
