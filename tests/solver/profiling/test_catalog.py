"""The GPU/model catalog: shipped data, user extensions, Hugging Face configs."""
from __future__ import annotations

import json

import pytest
import yaml

from melange.solver.profiling.catalog import load_catalog, model_from_hf_config, resolve_model, shipped_catalog
from melange.solver.errors import InputError

REQUIRED_GPUS = ("T4", "L4", "A10G", "L40S", "A100-40GB", "A100-80GB", "H100-SXM", "H100-PCIe", "H200", "B200", "MI300X")
REQUIRED_MODELS = ("llama-2-7b", "llama-3-8b", "llama-3-70b", "mistral-7b", "qwen2.5-7b", "qwen2.5-72b", "mixtral-8x7b")


def test_shipped_catalog_has_every_gpu_and_model_with_dated_prices():
    catalog = shipped_catalog()
    for name in REQUIRED_GPUS:
        gpu = catalog.gpu(name)
        assert gpu.price_source and gpu.price_date and gpu.price_per_hour > 0
    for name in REQUIRED_MODELS:
        assert catalog.model(name).parameters_b > 1


def test_lookups_accept_aliases_and_name_the_choices():
    catalog = shipped_catalog()
    assert catalog.gpu("h100").name == "H100-SXM" and catalog.gpu("A100").name == "A100-80GB"
    assert catalog.model("meta-llama/Meta-Llama-3-8B").name == "llama-3-8b"
    with pytest.raises(InputError) as error:
        catalog.gpu("v100")
    assert "unknown GPU 'v100'" in str(error.value) and "L4" in str(error.value)


def test_derived_sizes():
    llama2, llama3 = shipped_catalog().model("llama-2-7b"), shipped_catalog().model("llama-3-8b")
    assert llama2.kv_bytes_per_token == 2 * 32 * 32 * 128 * 2  # 0.5 MiB per token without GQA
    assert llama3.kv_bytes_per_token == llama2.kv_bytes_per_token / 4  # 8 KV heads instead of 32
    mixtral = shipped_catalog().model("mixtral-8x7b")
    assert mixtral.active_parameters < mixtral.weight_bytes / 2  # experts held, not all run


def test_user_catalog_extends_and_overrides(tmp_path):
    extra = tmp_path / "mine.yaml"
    extra.write_text(yaml.safe_dump({"gpus": [{"name": "L4", "memory_gb": 24, "bandwidth_gb_s": 300,
                                               "fp16_tflops": 121, "price_per_hour": 0.45, "aliases": ["l4"]},
                                              {"name": "RTX-6000", "memory_gb": 48, "bandwidth_gb_s": 960,
                                               "fp16_tflops": 182, "price_per_hour": 1.2}]}))
    catalog = load_catalog([extra])
    assert catalog.gpu("l4").price_per_hour == 0.45 and catalog.gpu("rtx-6000").memory_gb == 48
    extra.write_text(yaml.safe_dump({"gpus": [{"name": "X", "memory_gb": -1, "bandwidth_gb_s": 1,
                                               "fp16_tflops": 1, "price_per_hour": 1}]}))
    with pytest.raises(InputError) as error:
        load_catalog([extra])
    assert "gpus[0].memory_gb" in str(error.value)


def test_node_shapes_match_the_cluster_tests_instance_types():
    """The catalog's AWS shapes are the ones the real-cluster tests give Karpenter (same GPUs, same prices)."""
    from melange.testing.gpu_nodes import SHAPES
    catalog = shipped_catalog()
    products = {"NVIDIA-L4": "L4", "NVIDIA-A10G": "A10G", "NVIDIA-A100-SXM4-80GB": "A100-80GB",
                "NVIDIA-H100-80GB-HBM3": "H100-SXM"}
    for shape in SHAPES.values():
        if shape.gpu_product:
            found = catalog.gpu(products[shape.gpu_product]).node_shape(1, shape.instance_type)
            assert (found.gpus, found.price_per_hour) == (shape.gpu_count, shape.price_per_hour), shape


def test_a_replica_runs_on_the_cheapest_instance_per_replica_that_holds_it():
    catalog = shipped_catalog()
    l4, a100 = catalog.gpu("l4"), catalog.gpu("a100-80gb")
    assert l4.node_shape(1).instance_type == "g6.xlarge"  # $0.8048 per GPU against g6.12xlarge's $1.1504
    assert l4.node_shape(2).instance_type == "g6.12xlarge"  # a 2-GPU replica needs the 4-GPU instance
    assert l4.node_shape(8) is None and catalog.gpu("h200").node_shape(1) is None
    assert a100.node_shape(1).gpus == 8 and a100.node_shape(1).instance_type == "p4de.24xlarge"
    assert l4.node_shape(1, "g6.12xlarge").gpus == 4 and l4.node_shape(1, "p4de.24xlarge") is None


def test_a_bad_node_shape_is_named(tmp_path):
    extra = tmp_path / "mine.yaml"
    extra.write_text(yaml.safe_dump({"gpus": [{"name": "X", "memory_gb": 1, "bandwidth_gb_s": 1, "fp16_tflops": 1,
                                               "price_per_hour": 1, "node_shapes": [
                                                   {"instance_type": "x8", "gpus": 0, "price_per_hour": 8}]}]}))
    with pytest.raises(InputError) as error:
        load_catalog([extra])
    assert "gpus[0].node_shapes[0].gpus" in str(error.value)


LLAMA2_CONFIG = {"num_hidden_layers": 32, "hidden_size": 4096, "num_attention_heads": 32, "num_key_value_heads": 32,
                 "intermediate_size": 11008, "vocab_size": 32000, "max_position_embeddings": 4096}


def test_hugging_face_config_gives_the_catalog_shape(tmp_path):
    model = model_from_hf_config(LLAMA2_CONFIG, "mine")
    shipped = shipped_catalog().model("llama-2-7b")
    assert model.parameters_b == pytest.approx(shipped.parameters_b, rel=0.01)
    assert model.kv_bytes_per_token == shipped.kv_bytes_per_token and model.context_length == 4096
    mixtral = model_from_hf_config({**LLAMA2_CONFIG, "num_key_value_heads": 8, "intermediate_size": 14336,
                                    "num_local_experts": 8, "num_experts_per_tok": 2}, "moe")
    assert mixtral.parameters_b == pytest.approx(46.7, rel=0.01)
    assert mixtral.active_parameters_b == pytest.approx(12.9, rel=0.01)
    folder = tmp_path / "my-model"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(LLAMA2_CONFIG))
    assert resolve_model(shipped_catalog(), str(folder)).name == "my-model"


def test_bad_hugging_face_config_is_named():
    with pytest.raises(InputError) as error:
        model_from_hf_config({"hidden_size": 4096}, "broken")
    assert "num_hidden_layers" in str(error.value)
