"""Steady Poisson traffic moves nothing once the first allocation is made; a real 30% step up is
served within two passes.

The pure reconcile is driven pass by pass as the operator's shell drives it
(melange.testing.reconcile_passes): each pass reads a Prometheus window whose count is drawn from a
seeded Poisson process at the true rate, the status it returns is what the next pass observes, and
every Deployment it asks for is ready by the next pass, so moves complete. One pass per window, so
windows are independent (with the default 60 s interval a longer window overlaps the last one and
changes less from pass to pass; bench/steady_traffic.py measures both).

Two services: the paper's Arena example turned live (4 GPU types whose mixes differ by about 5% of
$/h around these rates, where a rule that takes the rate as exact moves again and again), and a
one-bucket service whose capacity is worked by hand here:

    small  $1.0/h  1 req/s per replica        big  $3.5/h  4 req/s per replica
    targetUtilisation 0.85; the solver gives each eighth of a bucket's traffic to one option.

The seeds are fixed, so each case is one draw. Over 10 seeds per case none of the steady cases
moved; a step is sized at the 97.7% upper bound of the first window after it, so about one step in 40
lands a hair short of the new rate (within the noise, where no window can tell) - bench/steady_traffic.py
measures the rates over many passes.
"""
from __future__ import annotations

import math

import pytest
import yaml

from melange.operator.core.noise import MARGINS, count_bound
from melange.operator.core.problem import default_inputs
from melange.testing.reconcile_passes import prometheus_spec, run_passes

from ..schema import ROOT

ARENA = yaml.safe_load((ROOT / "examples" / "operator" / "arena-llama2-7b.yaml").read_text())["spec"]
WARMUP = 10  # passes for the first allocation (and its move) before counting
STEADY = 30
STEP = 1.3


def one_bucket() -> dict:
    def option(name: str, gpu: str, price: float, rps: float) -> dict:
        profile = {"model": "demo-7b", "gpu": gpu, "gpus_per_replica": 1, "slo": {"tpot_ms": 100},
                   "grid": {"input_edges": [1000], "output_edges": [500]}, "max_rps": [[rps]]}
        return {"name": name, "gpu": gpu, "pricePerHour": price, "profile": {"inline": profile}}

    return {"model": "demo-7b", "slo": {"tpotMs": 100},
            "gpuOptions": [option("small", "L4", 1.0, 1.0), option("big", "A100", 3.5, 4.0)],
            "workload": {"source": "static", "static": {"rate": 1.0, "distribution": [[1.0]]},
                         "grid": {"inputEdges": [1000], "outputEdges": [500]}}}


def serves(replicas: dict[str, int], rate: float) -> bool:
    """By hand: some split of the eight slices keeps each option within replicas x req/s x 0.85."""
    return rate <= capacity(replicas) + 1e-9


def capacity(replicas: dict[str, int]) -> float:
    """By hand: the most req/s the replicas serve, k of the eight slices on big and the rest on small."""
    small, big = 0.85 * 1.0 * replicas.get("small", 0), 0.85 * 4.0 * replicas.get("big", 0)
    return max(min(8 * big / k if k else math.inf, 8 * small / (8 - k) if k < 8 else math.inf) for k in range(9))


def test_the_hand_capacity():
    assert capacity({"big": 1}) == pytest.approx(3.4) and capacity({"small": 3}) == pytest.approx(2.55)
    assert capacity({"small": 2, "big": 1}) == pytest.approx(4.533, abs=1e-3)  # 6 slices on big: 8 x 3.4 / 6
    assert serves({"small": 2, "big": 1}, 4.5) and not serves({"small": 1, "big": 1}, 4.0)  # 4/8 on small: 2 > 0.85


def moves(passes) -> list[str]:
    return [f"pass {k}: {p.outcome.decision.kind}: {p.outcome.decision.reason}" for k, p in enumerate(passes)
            if p.moved]


@pytest.mark.parametrize("spec, window, rate", [
    (ARENA, 60, 2.0), (ARENA, 60, 6.0), (ARENA, 180, 4.0), (ARENA, 600, 2.0),
    (one_bucket(), 60, 6.0), (one_bucket(), 180, 10.0), (one_bucket(), 600, 3.3),
], ids=lambda v: "arena" if v is ARENA else "one-bucket" if isinstance(v, dict) else f"{v:g}")
def test_steady_traffic_moves_nothing_after_the_first_allocation(spec, window, rate):
    live, mix = prometheus_spec(spec, window, window)
    passes = run_passes(live, default_inputs(), mix, [rate] * (WARMUP + STEADY), window, window, seed=int(rate * window))
    assert passes[0].outcome.decision.kind == "initial"
    assert moves(passes[WARMUP:]) == []


def well_above_the_noise(rate: float, window: float, running: dict[str, int]) -> bool:
    """A window of the new traffic two standard deviations low still has its lower bound above what runs
    can serve: the step is beyond the noise (a step that lands within the noise above what runs is
    not, and a rule that moves on noise would move on it)."""
    new = STEP * rate * window
    return count_bound(new - 2 * math.sqrt(new), -MARGINS.scale_up_z) / window > capacity(running)


@pytest.mark.parametrize("window, rate", [(60, 20.0), (180, 8.0), (600, 3.0), (600, 5.0)])
def test_a_real_step_up_is_served_within_two_passes(window, rate):
    live, mix = prometheus_spec(one_bucket(), window, window)
    passes = run_passes(live, default_inputs(), mix, [rate] * WARMUP + [STEP * rate] * 2, window, window,
                        seed=int(rate * window))
    before, after = passes[WARMUP - 1], passes[WARMUP:]
    assert moves(passes[2:WARMUP]) == []
    assert well_above_the_noise(rate, window, before.running)
    assert any(serves(p.running, STEP * rate) for p in after), moves(after)
    [first, *_] = [p.outcome.decision for p in after if p.moved]
    # (from the window, or from the 2m scale-up window when the window is longer and reads it first)
    assert first.kind == "scale-up" and "demand exceeds what runs: at least " in first.reason
