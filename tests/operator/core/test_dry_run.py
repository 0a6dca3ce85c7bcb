"""operator/core/dry_run.py: the operator's first pass over a manifest, off the cluster.

Expected mixes: the Mélange paper's Table 3 (Arena, Llama-2-7B, 120 ms mean TPOT, paper mode)."""
from __future__ import annotations

import pytest
import yaml

from melange.operator.core.dry_run import PLACEHOLDER_UID, DryRun, first_pass, refusal
from melange.operator.core.problem import default_inputs
from melange.operator.core.reconcile import Observed, reconcile
from melange.operator.core.planner import Owner
from melange.solver.errors import InputError

from ..schema import crd
from ..test_crd import example


def arena() -> dict:
    return example("arena-llama2-7b.yaml")


def test_the_first_pass_of_the_arena_example_deploys_table_3():
    dry = first_pass(arena(), "arena.yaml", crd(), default_inputs())
    assert isinstance(dry, DryRun)
    assert dry.outcome.status["allocation"] == {"l4": 1, "a10g": 0, "a100-80gb": 1, "h100": 0}
    assert dry.owner == Owner("llama2-arena", "default", PLACEHOLDER_UID)
    pools = {o["metadata"]["name"]: o["spec"]["replicas"] for o in dry.outcome.desired if o["kind"] == "Deployment"}
    assert pools == {"llama2-arena-l4": 1, "llama2-arena-a100-80gb": 1, "llama2-arena-router": 2}
    assert dry.outcome.problem is not None and [o.name for o in dry.outcome.problem.options] == \
        ["l4", "a10g", "a100-80gb", "h100"]


def test_the_rate_stands_in_for_the_static_rate():
    dry = first_pass(arena(), "arena.yaml", crd(), default_inputs(), rate=1.0)
    assert dry.outcome.status["allocation"] == {"l4": 1, "a10g": 1, "a100-80gb": 0, "h100": 0}
    assert dry.outcome.report.rate_source == "given by --rate"


def test_the_stored_object_has_the_servers_defaults_and_no_namespace_means_default():
    manifest = arena()
    del manifest["metadata"]["namespace"]
    dry = first_pass(manifest, "arena.yaml", crd(), default_inputs())
    assert dry.owner.namespace == "default"
    assert dry.stored["spec"]["gpuOptions"][0]["minReplicas"] == 0 and dry.stored["spec"]["mode"] == "apply"
    assert "namespace" not in manifest["metadata"]


def test_a_refusal_is_the_operators_condition_message():
    manifest = arena()
    manifest["spec"]["workload"]["static"]["distribution"][0][0] = 0.5
    with pytest.raises(InputError) as refused:
        first_pass(manifest, "arena.yaml", crd(), default_inputs())
    # what the operator's own pass writes into status for the same spec
    outcome = reconcile(Owner("llama2-arena", "default", "u"), Observed(manifest["spec"], 1, {}, [], 0.0),
                        default_inputs())
    assert str(refused.value) == f"arena.yaml: {refusal(outcome)}"
    assert refusal(outcome).startswith("spec.workload.static.distribution: shares sum to 1.44")


def test_refusal_is_none_for_a_spec_the_operator_takes():
    outcome = reconcile(Owner("a", "default", "u"), Observed(arena()["spec"], 1, {}, [], 0.0), default_inputs())
    assert refusal(outcome) is None


def test_a_server_refusal_comes_before_the_operator_is_asked():
    manifest = arena()
    manifest["spec"]["gpuOptions"][0]["gpu"] = "l5"
    manifest["spec"]["slo"] = {}
    with pytest.raises(InputError) as refused:
        first_pass(manifest, "arena.yaml", crd(), default_inputs())
    assert str(refused.value) == "arena.yaml: spec.slo: Invalid value: set tpotMs and/or ttftMs"
