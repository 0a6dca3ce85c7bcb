from __future__ import annotations

import pytest

from melange.solver.errors import InputError
from melange.solver.options import GpuOption, option_from_dict, options_from_list


def test_tensor_parallel_replica_costs_all_its_gpus():
    option = option_from_dict({"name": "h100-tp2", "gpu": "H100", "price_per_hour": 7.5, "gpus_per_replica": 2}, "o")
    assert option.replica_price == 15.0 and option.gpu_type == "H100"
    assert GpuOption("L4", 0.7).gpu_type == "L4"


@pytest.mark.parametrize("data,where", [
    ({"name": "a", "price_per_hour": 0}, "o.price_per_hour"),
    ({"name": "a", "price_per_hour": "cheap"}, "o.price_per_hour"),
    ({"name": "a", "price_per_hour": 1, "gpus_per_replica": 1.5}, "o.gpus_per_replica"),
    ({"name": "a", "price_per_hour": 1, "max_replicas": -1}, "o.max_replicas"),
    ({"name": "a", "price_per_hour": 1, "spot": "yes"}, "o.spot"),
    ({"name": "a", "price_per_hour": 1, "min_replicas": -1}, "o.min_replicas"),
    ({"name": "a", "price_per_hour": 1, "min_replicas": 3, "max_replicas": 2}, "o.min_replicas"),
    ({"name": "a", "price_per_hour": 1, "prise": 2}, "o.prise"),
    ({"price_per_hour": 1}, "o"),
    ({"name": "a", "price_per_hour": 1, "node_price_per_hour": 8}, "o.node_price_per_hour"),
    ({"name": "a", "price_per_hour": 1, "gpus_per_node": 0}, "o.gpus_per_node"),
    ({"name": "a", "price_per_hour": 1, "gpus_per_replica": 4, "gpus_per_node": 2}, "o.gpus_per_node"),
])
def test_bad_options_name_the_field(data, where):
    with pytest.raises(InputError) as error:
        option_from_dict(data, "o")
    assert str(error.value).startswith(where)


def test_duplicate_names_are_rejected():
    with pytest.raises(InputError, match="duplicate option name 'a'"):
        options_from_list([{"name": "a", "price_per_hour": 1}, {"name": "a", "price_per_hour": 2}], "options")


def test_a_node_priced_option_costs_the_nodes_its_replicas_fill():
    """p4de.24xlarge: 8 A100-80GB at $40.966/h. One replica costs the whole node; a tensor-parallel
    replica of 3 GPUs leaves 2 GPUs idle per node (replicas never span nodes): 2 per node."""
    a100 = option_from_dict({"name": "a100", "gpu": "A100", "price_per_hour": 3.67, "gpus_per_node": 8,
                             "node_price_per_hour": 40.966}, "o")
    assert a100.node_priced and a100.replicas_per_node == 8
    assert [a100.nodes(n) for n in (0, 1, 8, 9)] == [0, 1, 1, 2]
    assert [a100.cost(n) for n in (0, 1, 8, 9)] == [0, 40.966, 40.966, 81.932]
    tp3 = GpuOption("a100-tp3", 3.67, gpus_per_replica=3, gpus_per_node=8, node_price_per_hour=40.966)
    assert tp3.replicas_per_node == 2 and tp3.nodes(5) == 3 and tp3.cost(5) == pytest.approx(3 * 40.966)


def test_a_node_size_without_a_node_price_keeps_the_per_gpu_price():
    option = GpuOption("a100", 3.67, gpus_per_node=8)
    assert not option.node_priced and option.nodes(3) == 1 and option.cost(3) == pytest.approx(3 * 3.67)
    assert GpuOption("l4", 0.7).nodes(3) is None
