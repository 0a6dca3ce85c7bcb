"""A service edited at random, during and outside moves, converges after each edit to what
`melange solve` gives for its spec, with a routing table that names only pools that exist and are
ready, and no move left waiting."""
from __future__ import annotations

import copy
import json
import random
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from ..operator.test_make_before_break import ready_pods
from .conftest import arena, condition, llmservice, wait_until

pytestmark = pytest.mark.cluster

OPTIONAL = ("a10g", "h100")  # l4 and a100-80gb stay: between them every bucket has a GPU that serves it
RATES = (1.0, 2.0, 3.0, 4.0, 5.5, 7.0)
MODELS = ("meta-llama/Llama-2-7b-chat-hf", "meta-llama/Llama-2-7b-hf")


def melange_solve(spec: dict, folder: Path) -> dict[str, int]:
    """The optimum `melange solve` gives for the spec's static workload, options and inline profiles."""
    workload = spec["workload"]["static"]
    grid = spec["workload"]["grid"]
    profiles = []
    for option in spec["gpuOptions"]:
        path = folder / f"{option['name']}.yaml"
        path.write_text(yaml.safe_dump(option["profile"]["inline"]))
        profiles.append(str(path))
    bundle = {"workload": {"rate": workload["rate"], "distribution": workload["distribution"],
                           "grid": {"input_edges": grid["inputEdges"], "output_edges": grid["outputEdges"]}},
              "options": [{"name": o["name"], "gpu": o["gpu"], "price_per_hour": o["pricePerHour"]}
                          for o in spec["gpuOptions"]],
              "profiles": profiles}
    path = folder / "bundle.yaml"
    path.write_text(yaml.safe_dump(bundle))
    target = str(spec.get("reallocation", {}).get("targetUtilisation", 0.85))
    answer = subprocess.run([str(Path(sys.executable).parent / "melange"), "solve", str(path), "--output", "json",
                             "--mode", spec.get("routingMode", "routable"), "--target-utilisation", target],
                            capture_output=True, text=True, check=True)
    return {name: count for name, count in json.loads(answer.stdout)["replicas"].items()}


def converged(cluster, name: str, namespace: str, expected: dict[str, int], generation: int):
    """Status at this generation runs `expected` with no move, Ready; every pool the routing table
    names exists with ready pods, and no other pool has any."""
    def check():
        service = llmservice(cluster, name, namespace)
        status = (service or {}).get("status") or {}
        if status.get("observedGeneration") != generation or status.get("move"):
            return None
        if {k: v for k, v in (status.get("allocation") or {}).items() if v} != \
                {k: v for k, v in expected.items() if v} or condition(service, "Ready") != "True":
            return None
        deployments = {d["metadata"]["name"]: d for d in cluster.get("deployments", namespace=namespace)["items"]}
        table = json.loads(cluster.get("configmap", f"{name}-routing", namespace)["data"]["routing.json"])
        for pool in table["pools"]:
            if ready_pods(deployments.get(f"{name}-{pool}", {})) < expected.get(pool, 0) or not expected.get(pool):
                return None
        extra = [d for d, obj in deployments.items() if d.startswith(f"{name}-") and d != f"{name}-router"
                 and d.removeprefix(f"{name}-") not in {k for k, v in expected.items() if v} and ready_pods(obj)]
        return None if extra else status
    return check


def test_twenty_random_edits_converge_to_what_melange_solve_gives(cluster, operator, namespace, tmp_path):
    rng = random.Random(20)
    manifest = arena(namespace, reallocation={"targetUtilisation": 1.0})
    name = manifest["metadata"]["name"]
    all_options = {o["name"]: o for o in manifest["spec"]["gpuOptions"]}
    cluster.apply(manifest)
    expected = melange_solve(manifest["spec"], tmp_path)
    wait_until(converged(cluster, name, namespace, expected, 1), "the first mix", timeout_s=120)
    generation, history = 1, []
    for edit in range(20):
        spec = copy.deepcopy(manifest["spec"])
        kind = rng.choice(["rate", "rate", "drop", "add", "model"])
        present = [o["name"] for o in spec["gpuOptions"]]
        if kind == "drop" and any(o in present for o in OPTIONAL):
            spec["gpuOptions"] = [o for o in spec["gpuOptions"] if o["name"] != rng.choice(
                [o for o in OPTIONAL if o in present])]
        elif kind == "add" and any(o not in present for o in OPTIONAL):
            added = rng.choice([o for o in OPTIONAL if o not in present])
            spec["gpuOptions"] = [all_options[n] for n in all_options if n in present or n == added]
        elif kind == "model":
            spec["model"] = MODELS[(MODELS.index(spec["model"]) + 1) % len(MODELS)]
        else:
            kind = "rate"
            spec["workload"]["static"]["rate"] = rng.choice([r for r in RATES if r != spec["workload"]["static"]["rate"]])
        during_move = rng.random() < 0.4
        manifest["spec"] = spec
        cluster.apply(manifest)
        generation += 1
        expected = melange_solve(spec, tmp_path)
        history.append((kind, spec["workload"]["static"]["rate"], sorted(o["name"] for o in spec["gpuOptions"]),
                        during_move, expected))
        if during_move and edit < 19:
            # the next edit comes while this one's move is under way, when it starts one
            wait_until(lambda: ((s := (llmservice(cluster, name, namespace) or {}).get("status") or {})
                                .get("observedGeneration") == generation) and s, "the edit's first pass")
            continue
        wait_until(converged(cluster, name, namespace, expected, generation),
                   f"edit {edit + 1} ({history[-1]}) to converge", timeout_s=120)
    assert len(history) == 20
