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
])
def test_bad_options_name_the_field(data, where):
    with pytest.raises(InputError) as error:
        option_from_dict(data, "o")
    assert str(error.value).startswith(where)


def test_duplicate_names_are_rejected():
    with pytest.raises(InputError, match="duplicate option name 'a'"):
        options_from_list([{"name": "a", "price_per_hour": 1}, {"name": "a", "price_per_hour": 2}], "options")
