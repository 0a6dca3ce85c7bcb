"""The pure reconcile: from spec to objects and status; bad input changes nothing and says why."""
from __future__ import annotations

import copy

import yaml

from melange.operator.core.planner import Owner
from melange.operator.core.problem import build_problem, default_inputs, solver_settings
from melange.operator.core.reconcile import LiveInput, Observed, reconcile
from melange.operator.core.spec import parse_spec
from melange.solver.solve import solve
from melange.solver.workload import make_workload

from ..schema import ROOT

ARENA = yaml.safe_load((ROOT / "examples" / "operator" / "arena-llama2-7b.yaml").read_text())
OWNER = Owner("llama2-arena", "default", "uid-1")
NOW = 1_790_000_000.0  # seconds since the epoch


def observe(spec: dict, status: dict | None = None, actual: list | None = None, generation: int = 1) -> Observed:
    return Observed(spec, generation, status or {}, actual or [], NOW)


def conditions(status: dict) -> dict[str, str]:
    return {c["type"]: c["status"] for c in status["conditions"]}


def test_the_papers_mix_for_the_arena_example():
    """Table 3 of the Mélange paper, Arena at 4 req/s, 120 ms: 1 x L4 + 1 x A100 at $4.37/h; A10G alone
    needs 5 replicas (5 x $1.01); the H100-only baseline is ceil(load) x $7.516 (41.86% saving in the paper)."""
    outcome = reconcile(OWNER, observe(ARENA["spec"]), default_inputs())
    status = outcome.status
    assert status["allocation"] == {"l4": 1, "a10g": 0, "a100-80gb": 1, "h100": 0}
    assert status["costPerHour"] == 4.37
    assert status["bestSingleType"] == {"name": "a10g", "costPerHour": 5.05}
    assert status["savingsPercent"] == round(100 * (5.05 - 4.37) / 5.05, 2)
    assert status["otherModeCostPerHour"] is not None
    assert status["workload"] == {"rate": 4.0, "source": "static"}
    assert status["observedGeneration"] == 1 and status["routingConfigMap"] == "llama2-arena-routing"
    assert conditions(status) == {"Ready": "False", "Solved": "True", "Infeasible": "False", "InvalidSpec": "False"}
    names = sorted(o["metadata"]["name"] for o in outcome.desired)
    assert names == ["llama2-arena", "llama2-arena-a100-80gb", "llama2-arena-a100-80gb", "llama2-arena-l4",
                     "llama2-arena-l4", "llama2-arena-router", "llama2-arena-routing"]
    [event] = outcome.events
    assert event.reason == "Reallocated" and "nothing -> 1 x l4 + 1 x a100-80gb ($4.37/h)" in event.message


def test_ready_when_every_deployment_has_its_replicas_and_no_event_when_nothing_changed():
    first = reconcile(OWNER, observe(ARENA["spec"]), default_inputs())
    actual = copy.deepcopy(first.desired)
    for obj in actual:
        if obj["kind"] == "Deployment":
            obj["status"] = {"readyReplicas": obj["spec"]["replicas"]}
    again = reconcile(OWNER, observe(ARENA["spec"], first.status, actual), default_inputs())
    assert conditions(again.status)["Ready"] == "True" and again.events == ()
    actual[0]["status"]["readyReplicas"] = 0
    waiting = reconcile(OWNER, observe(ARENA["spec"], first.status, actual), default_inputs())
    ready = next(c for c in waiting.status["conditions"] if c["type"] == "Ready")
    assert ready["status"] == "False" and actual[0]["metadata"]["name"] in ready["message"]


def test_recommend_mode_writes_no_objects():
    spec = dict(ARENA["spec"], mode="recommend")
    outcome = reconcile(OWNER, observe(spec), default_inputs())
    assert outcome.desired is None and outcome.status["costPerHour"] == 4.37
    assert outcome.events[0].reason == "Recommended"


def test_an_invalid_spec_changes_nothing_and_names_the_field():
    good = reconcile(OWNER, observe(ARENA["spec"]), default_inputs())
    spec = copy.deepcopy(ARENA["spec"])
    spec["gpuOptions"][1]["profile"]["inline"]["max_rps"] = [[1.0]]
    outcome = reconcile(OWNER, observe(spec, good.status, generation=2), default_inputs())
    assert outcome.desired is None
    assert "allocation" not in outcome.status  # kopf merges: the last good allocation stays
    invalid = next(c for c in outcome.status["conditions"] if c["type"] == "InvalidSpec")
    assert invalid["status"] == "True" and "spec.gpuOptions[1].profile.inline.max_rps" in invalid["message"]
    assert invalid["observedGeneration"] == 2
    assert conditions(outcome.status)["Solved"] == "False"
    assert outcome.events[0].type == "Warning"


def test_an_infeasible_slo_names_the_buckets_and_changes_nothing():
    spec = copy.deepcopy(ARENA["spec"])
    for option in spec["gpuOptions"]:  # no GPU can serve the longest input bucket with the longest outputs
        option["profile"]["inline"]["max_rps"][5][5] = None
    outcome = reconcile(OWNER, observe(spec), default_inputs())
    assert outcome.desired is None
    infeasible = next(c for c in outcome.status["conditions"] if c["type"] == "Infeasible")
    assert infeasible["status"] == "True" and "in(1000,2000] out(1000,2000]" in infeasible["message"]


def test_condition_times_move_only_when_the_status_flips():
    first = reconcile(OWNER, Observed(ARENA["spec"], 1, {}, [], 1_767_225_600.0), default_inputs())
    later = reconcile(OWNER, Observed(ARENA["spec"], 1, first.status, [], 1_767_312_000.0), default_inputs())
    solved = next(c for c in later.status["conditions"] if c["type"] == "Solved")
    assert solved["lastTransitionTime"] == "2026-01-01T00:00:00Z"


def test_dropping_an_option_in_use_moves_from_what_remains_and_never_waits_for_it():
    """The stored status still names the dropped option (a merge patch keeps keys it does not name):
    its replicas are not part of the service any more, and a move that needs it is abandoned."""
    first = reconcile(OWNER, observe(ARENA["spec"]), default_inputs())
    assert first.status["allocation"]["a100-80gb"] == 1
    spec = copy.deepcopy(ARENA["spec"])
    spec["gpuOptions"] = [o for o in spec["gpuOptions"] if o["name"] != "a100-80gb"]
    stale = {**first.status, "move": {"from": {"l4": 1, "a100-80gb": 1}, "to": {"l4": 2, "a100-80gb": 1},
                                      "step": "scaling-up", "since": "2026-01-01T00:00:00Z", "reason": "r"}}
    outcome = reconcile(OWNER, observe(spec, stale, generation=2), default_inputs())
    move = outcome.status["move"]
    assert move is not None and {k: v for k, v in move["from"].items() if v} == {"l4": 1}
    assert "a100-80gb" not in move["from"] and "a100-80gb" not in move["to"]
    assert "a100-80gb" not in outcome.status["allocation"]
    assert all("a100-80gb" not in o["metadata"]["name"] for o in outcome.desired)


def test_a_counted_rate_is_reported_as_measured_and_sized_at_its_upper_bound():
    """6 req/s read from 360 requests: status says 6 req/s; the allocation is the optimum for 400
    requests' worth (360 + 2 + 2 sqrt(361), 6.67 req/s), what `melange solve` gives at that rate."""
    spec = copy.deepcopy(ARENA["spec"])
    static = spec["workload"]
    spec["workload"] = {"source": "prometheus", "grid": static["grid"]}
    grid = parse_spec(ARENA["spec"]).workload.grid
    mix = make_workload(6.0, grid, static["static"]["distribution"], "w")
    outcome = reconcile(OWNER, observe(spec), default_inputs(), live=LiveInput(mix, "360 requests in 1m", "1m", 360))
    assert outcome.status["workload"] == {"rate": 6.0, "source": "prometheus", "window": "1m"}
    sized = build_problem(parse_spec(spec), mix.with_rate(400 / 60), default_inputs())
    assert outcome.status["allocation"] == solve(sized, solver_settings(parse_spec(spec)), mode="paper").allocation.replicas
    assert outcome.status["recommendedCostPerHour"] == outcome.status["costPerHour"]
