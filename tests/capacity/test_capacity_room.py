"""Room on the cluster for NeuronCore replicas, read from Karpenter objects validated against its CRDs."""

from __future__ import annotations

import pytest
from kanari.api.v1alpha1 import ServingSpec, SpecError
from kanari.capacity.cluster import neuron_cores, observe, pod_cores, room_for
from kanari.capacity.spec import check_fits_instance, node_selector, replica_cores
from kanari.capacity.topology import INSTANCES, PriceTableError, core_price_per_second, parse_price_table

from tests.capacity.capacity_fixtures import node, nodeclaim, nodepool, pod, shipped_nodepool
from tests.support.schemas import validate_custom

INF2 = {"karpenter.k8s.aws/instance-family": "inf2"}


def test_fixtures_are_valid_karpenter_objects() -> None:
    validate_custom(shipped_nodepool("inf2"))
    validate_custom(shipped_nodepool("trn1"))
    validate_custom(nodepool("inf2", {"aws.amazon.com/neuroncore": "8"}, {"aws.amazon.com/neuroncore": "4"}))
    validate_custom(nodeclaim("inf2-abc", "inf2", "inf2.xlarge", node_name="ip-10-0-0-1"))
    validate_custom(nodeclaim("inf2-def", "inf2", "inf2.48xlarge"))


def test_topology_matches_aws_documentation() -> None:
    assert [INSTANCES[t].cores for t in ("inf2.xlarge", "inf2.8xlarge", "inf2.24xlarge", "inf2.48xlarge")] == [2, 2, 12, 24]
    assert [INSTANCES[t].cores for t in ("trn1.2xlarge", "trn1.32xlarge")] == [2, 32]


def test_the_shipped_inf2_pool_limits_48_devices_as_96_cores() -> None:
    cluster = observe([shipped_nodepool("inf2")], [], [], [])
    room = room_for(cluster, INF2, 2)
    assert room.limit_cores == 96 and room.headroom_cores == 96
    # 96 cores: four inf2.48xlarge (24 cores each) hold 48 two-core replicas.
    assert room.slots == 48


def test_quantities_in_devices_cores_and_suffixes() -> None:
    assert neuron_cores({"aws.amazon.com/neuron": "3"}) == 6
    assert neuron_cores({"aws.amazon.com/neuroncore": 5}) == 5
    assert neuron_cores({"aws.amazon.com/neuron": "4", "aws.amazon.com/neuroncore": "6"}) == 6  # the tighter
    assert neuron_cores({"aws.amazon.com/neuroncore": "1k"}) == 1000
    assert neuron_cores({"aws.amazon.com/neuroncore": "garbage"}) is None
    assert neuron_cores({"cpu": "4"}) is None
    assert pod_cores(pod("p", 4, devices=True)) == 4


def test_room_counts_whole_replicas_per_node_not_scattered_cores() -> None:
    # Two inf2.xlarge with one core free each: 2 free cores, but no room for a 2-core replica.
    cluster = observe([], [], [node("a", "inf2.xlarge"), node("b", "inf2.xlarge")],
                      [pod("x", 1, "a"), pod("y", 1, "b")])
    room = room_for(cluster, INF2, 2)
    assert room.free_cores == 2 and room.slots == 0
    assert room_for(cluster, INF2, 1).slots == 2


def test_pool_headroom_uses_claims_when_the_status_lags() -> None:
    pool = nodepool("inf2", {"aws.amazon.com/neuroncore": "4"}, {"aws.amazon.com/neuroncore": "0"},
                    sizes=["xlarge"])
    claims = [nodeclaim("c1", "inf2", "inf2.xlarge")]  # launching: counts against the limit, and is room
    room = room_for(observe([pool], claims, [], []), INF2, 2)
    assert room.headroom_cores == 2 and room.slots == 2


def test_pending_pods_take_room_first() -> None:
    cluster = observe([], [], [node("a", "inf2.xlarge")], [pod("waiting", 2, selector=INF2)])
    assert room_for(cluster, INF2, 2).slots == 0
    other = observe([], [], [node("a", "inf2.xlarge")], [pod("elsewhere", 2, selector={"karpenter.k8s.aws/instance-family": "trn1"})])
    assert room_for(other, INF2, 2).slots == 1


def test_finished_pods_and_cordoned_nodes() -> None:
    cordoned = node("a", "inf2.xlarge")
    cordoned["spec"] = {"unschedulable": True}
    cluster = observe([], [], [cordoned, node("b", "inf2.xlarge")], [pod("done", 2, "b", phase="Succeeded")])
    assert room_for(cluster, INF2, 2).slots == 1


def test_an_instance_type_pin_selects_pools_that_can_launch_it() -> None:
    small = nodepool("small", {"aws.amazon.com/neuroncore": "100"}, sizes=["xlarge"])
    big = nodepool("big", {"aws.amazon.com/neuroncore": "48"}, sizes=["48xlarge"])
    cluster = observe([small, big], [], [], [])
    room = room_for(cluster, {"node.kubernetes.io/instance-type": "inf2.48xlarge"}, 4)
    assert room.pools == ("big",) and room.slots == 12
    # trn1 pools never serve an inf2 selector.
    trn = nodepool("trn", {"aws.amazon.com/neuron": "64"}, family="trn1", sizes=["2xlarge", "32xlarge"])
    assert room_for(observe([trn], [], [], []), INF2, 2).slots == 0


def test_a_pool_without_neuron_limit_is_unbounded() -> None:
    room = room_for(observe([nodepool("inf2", None)], [], [], []), INF2, 2)
    assert room.slots is None and "limit none" in room.describe()


def test_selector_and_cores_mirror_the_inferenceservice() -> None:
    from kanari.api.v1alpha1 import ModelDeployment, ObjectMeta, parse_spec
    from kanari.controller import inferenceservice
    from kanari.controller.config import OperatorConfig
    from kanari.controller.model_source import model_ref
    from kanari.controller.serving_runtime import RuntimeChoice

    config = OperatorConfig()
    for serving in ({"neuronCores": 4}, {"neuronDevices": 2, "instanceType": "inf2.24xlarge"}, {}):
        spec = parse_spec({"model": {"storageUri": "s3://m/v1"}, "serving": serving})
        md = ModelDeployment(metadata=ObjectMeta(name="m"), spec=spec)
        pred = inferenceservice.predictor(md, model_ref(spec, None), RuntimeChoice("kanari-neuron", "pytorch-neuronx"),
                                          config, None)
        assert pred["nodeSelector"] == node_selector(spec.serving, config.inf2_selector_key)
        assert pod_cores({"spec": {"containers": [pred["model"]]}}) == replica_cores(spec.serving)


def test_a_replica_larger_than_its_instance_is_refused_naming_the_field() -> None:
    with pytest.raises(SpecError) as err:
        check_fits_instance(ServingSpec(instanceType="inf2.xlarge", neuronCores=4))
    assert err.value.field == "spec.serving.neuronCores" and "inf2.xlarge has 2" in err.value.message
    check_fits_instance(ServingSpec(instanceType="inf2.24xlarge", neuronDevices=6))


def test_price_table() -> None:
    prices = parse_price_table('{"inf2.xlarge": 0.5}')
    assert prices["inf2.xlarge"] == 0.5 and prices["inf2.48xlarge"] == INSTANCES["inf2.48xlarge"].on_demand_usd_hour
    assert core_price_per_second("inf2.xlarge", prices) == pytest.approx(0.5 / 3600 / 2)
    for bad, field in (('{"inf2.xlarge": -1}', "inf2.xlarge"), ("[1]", "KANARI_NEURON_PRICES"),
                       ("{", "KANARI_NEURON_PRICES"), ('{"inf2.xlarge": "cheap"}', "inf2.xlarge")):
        with pytest.raises(PriceTableError, match=field):
            parse_price_table(bad)
