"""Whole nodes against per-GPU prices: how buying GPUs the way a cloud sells them (an A100-80GB only
8 per p4de.24xlarge, an H100 8 per p5.48xlarge, L4 and A10G one per g6.xlarge / g5.xlarge) changes
the cheapest mix and its cost, on the shipped examples (the Arena bundle and the operator examples).

Two price sets, each solved twice with the same profiles, workload and settings:

1. the example's own per-GPU prices (the Mélange paper's Table 1 for Arena, the catalog's for
   llama-3-8b), nodes of the AWS sizes priced at their GPUs x that per-GPU price: only the rounding
   to whole nodes differs;
2. AWS instance prices (the catalog's node_shapes: us-east-1 on-demand list prices before June 2025), per GPU
   as the instance's $/h divided by its GPUs, against whole instances.

For each: the per-GPU optimum (the paper's model), what that mix costs when its GPUs come in whole
nodes, the node-priced optimum, and the saving of the latter over the former bought in nodes.

Usage: python bench/node_pricing.py
"""
from __future__ import annotations

import copy
from dataclasses import replace

import yaml
from common import ROOT, print_table

from melange.operator.core.problem import build_problem, default_inputs, solver_settings
from melange.operator.core.spec import parse_spec
from melange.solver.ilp import IlpSettings
from melange.solver.inputs import load_bundle
from melange.solver.options import GpuOption
from melange.solver.problem import Problem
from melange.solver.profiling.catalog import shipped_catalog
from melange.solver.solve import solve

CATALOG = shipped_catalog()


def _mix(replicas: dict[str, int]) -> str:
    return " + ".join(f"{n} {name}" for name, n in replicas.items() if n) or "-"


def _instances(options: tuple[GpuOption, ...], replicas: dict[str, int]) -> str:
    shapes = {o.name: CATALOG.gpu(o.gpu_type).node_shape(o.gpus_per_replica) for o in options}
    return " + ".join(f"{o.nodes(replicas[o.name])} {shapes[o.name].instance_type}" for o in options
                      if replicas.get(o.name)) or "-"


def in_nodes(problem: Problem, aws_prices: bool) -> tuple[Problem, Problem]:
    """The problem priced per GPU and bought in whole nodes of the catalog's AWS sizes: at the
    example's per-GPU prices (a node costs its GPUs), or at AWS instance prices."""
    per_gpu, nodes = [], []
    for option in problem.options:
        shape = CATALOG.gpu(option.gpu_type).node_shape(option.gpus_per_replica)
        gpu_price = shape.price_per_hour / shape.gpus if aws_prices else option.price_per_hour
        per_gpu.append(replace(option, price_per_hour=gpu_price))
        nodes.append(replace(option, price_per_hour=gpu_price, gpus_per_node=shape.gpus,
                             node_price_per_hour=shape.price_per_hour if aws_prices else gpu_price * shape.gpus))
    return replace(problem, options=tuple(per_gpu)), replace(problem, options=tuple(nodes))


def row(example: str, problem: Problem, settings: IlpSettings, mode: str, aws_prices: bool) -> list[object]:
    per_gpu, nodes = in_nodes(problem, aws_prices)
    gpu = solve(per_gpu, settings, mode, compare_modes=False).allocation
    node = solve(nodes, settings, mode, compare_modes=False).allocation
    gpu_in_nodes = sum(o.cost(gpu.replicas[o.name]) for o in nodes.options)
    saving = 100 * (gpu_in_nodes - node.cost_per_hour) / gpu_in_nodes
    return [example, f"{problem.workload.rate:g}", f"{_mix(gpu.replicas)}", f"${gpu.cost_per_hour:.2f}",
            f"${gpu_in_nodes:.2f}", f"{_mix(node.replicas)} ({_instances(nodes.options, node.replicas)})",
            f"${node.cost_per_hour:.2f}", f"{saving:.0f}%"]


def operator_problem(path: str, rate: float | None = None) -> tuple[Problem, IlpSettings, str]:
    """An operator example's problem and settings as the operator solves it (at `rate` if given)."""
    spec = copy.deepcopy(yaml.safe_load((ROOT / path).read_text())["spec"])
    if rate is not None:
        spec["workload"]["static"]["rate"] = rate
    parsed = parse_spec(spec)
    return build_problem(parsed, None, default_inputs()), solver_settings(parsed), parsed.routing_mode


def main() -> None:
    cases = []
    bundle = load_bundle(ROOT / "examples" / "arena-llama2-7b" / "bundle.yaml")
    settings = IlpSettings(slice_factor=int(bundle.settings.get("slice_factor", 8)))
    for rate in (1, 2, 4, 8, 16, 32):
        cases.append(("arena bundle (paper)", replace(bundle.problem, workload=bundle.problem.workload.with_rate(rate)),
                      settings, "paper"))
    for path, rates in (("examples/operator/arena-llama2-7b.yaml", (None,)),
                        ("examples/operator/llama-3-8b.yaml", (None, 2, 12, 24, 48))):
        for rate in rates:
            problem, settings, mode = operator_problem(path, rate)
            cases.append((f"{path.rsplit('/', 1)[1].removesuffix('.yaml')} ({mode}, u={settings.target_utilisation:g})",
                          problem, settings, mode))
    headers = ["example", "req/s", "per-GPU optimum", "$/h", "in whole nodes", "node-priced optimum", "$/h",
               "saved"]
    for title, aws in (("The example's own per-GPU prices; a node costs its GPUs:", False),
                       ("AWS instance prices (per GPU: the instance's $/h over its GPUs):", True)):
        print(title)
        print_table(headers, [row(name, problem, settings, mode, aws) for name, problem, settings, mode in cases])
        print()


if __name__ == "__main__":
    main()
