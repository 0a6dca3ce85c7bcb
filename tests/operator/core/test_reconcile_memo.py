"""The pure reconcile with the operator's solve memo: a pass whose solves are remembered decides, plans and
reports exactly what the same pass solving everything afresh does."""
from __future__ import annotations

import copy

import pytest
import yaml

from melange.operator.core.planner import Owner
from melange.operator.core.problem import default_inputs
from melange.operator.core.reconcile import LiveInput, Observed, reconcile
from melange.solver import ilp
from melange.solver.buckets import BucketGrid
from melange.solver.memo import SolveMemo
from melange.solver.workload import make_workload

from ..schema import ROOT

ARENA = yaml.safe_load((ROOT / "examples" / "operator" / "arena-llama2-7b.yaml").read_text())


@pytest.fixture
def memo():
    memo = SolveMemo()
    ilp.use_memo(memo)
    yield memo
    ilp.use_memo(None)


def live(rate: float, requests: float) -> LiveInput:
    grid = BucketGrid(tuple(ARENA["spec"]["workload"]["grid"]["inputEdges"]),
                      tuple(ARENA["spec"]["workload"]["grid"]["outputEdges"]))
    shares = [[1.0 / (len(grid.input_edges) * len(grid.output_edges))] * len(grid.output_edges)
              for _ in grid.input_edges]
    return LiveInput(make_workload(rate, grid, shares, "prometheus"), "read", "5m", requests)


def test_a_pass_with_remembered_solves_decides_what_a_fresh_pass_decides(memo):
    """The pure reconcile of one service, three passes as the operator runs them (the first; the same
    reading again, as a pass woken by a pool becoming ready; a new reading): each with every solve the
    memo knows skipped, compared with the same pass with no memo at all."""
    owner = Owner("arena", "default", "uid-1")
    spec = copy.deepcopy(ARENA["spec"])
    spec["workload"] = {"source": "prometheus", "prometheus": {"window": "5m"}, "grid": spec["workload"]["grid"]}
    status: dict = {}
    for k, reading in enumerate([live(4.0, 1200), live(4.0, 1200), live(4.4, 1320)]):
        observed = Observed(spec, 1, status, [], 1_790_000_000.0 + 60 * k)
        before = memo.hits
        remembered = reconcile(owner, observed, default_inputs(), live=reading)
        ilp.use_memo(None)
        try:
            solved = reconcile(owner, observed, default_inputs(), live=reading)
        finally:
            ilp.use_memo(memo)
        assert remembered.status == solved.status and remembered.desired == solved.desired
        assert remembered.events == solved.events and remembered.decision == solved.decision
        if k == 1:
            assert memo.hits > before  # the same reading: its solves were remembered
        status = remembered.status
