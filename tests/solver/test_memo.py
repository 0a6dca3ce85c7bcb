"""Solves kept under exactly their inputs: a remembered answer is the answer a fresh solve gives, and any
change to the inputs is solved again."""
from __future__ import annotations

from dataclasses import replace

import pytest

from melange.solver import ilp
from melange.solver.ilp import IlpSettings, Item, OptionSpec, solve_ilp
from melange.solver.memo import SolveMemo

ITEMS = [Item("short", 3.0, (0.2, 0.5)), Item("long", 1.0, (2.0, None))]
OPTIONS = [OptionSpec("a100", 3.67), OptionSpec("l4", 0.70)]


@pytest.fixture
def memo():
    memo = SolveMemo()
    ilp.use_memo(memo)
    yield memo
    ilp.use_memo(None)


def fresh(items, options, settings):
    """The same solve with no memo in use."""
    saved = ilp._memo
    ilp.use_memo(None)
    try:
        return solve_ilp(items, options, settings)
    finally:
        ilp.use_memo(saved)


def same(a, b) -> bool:
    return replace(a, wall_time_s=0.0) == replace(b, wall_time_s=0.0)


def test_a_remembered_solve_is_the_fresh_answer(memo):
    settings = IlpSettings(slice_factor=4, current={"l4": 2, "a100": 1}, move_cost=0.05)
    first = solve_ilp(ITEMS, OPTIONS, settings)
    again = solve_ilp(ITEMS, OPTIONS, IlpSettings(slice_factor=4, current={"a100": 1, "l4": 2}, move_cost=0.05))
    assert (memo.hits, memo.misses) == (1, 1)  # the current allocation in another order is the same input
    assert same(again, first) and same(again, fresh(ITEMS, OPTIONS, settings))


@pytest.mark.parametrize("change", [
    lambda items, options, s: ([replace(items[0], rate=3.0000000001)] + items[1:], options, s),
    lambda items, options, s: (items, [replace(options[0], replica_price=3.66)] + options[1:], s),
    lambda items, options, s: (items, options, replace(s, slice_factor=8)),
    lambda items, options, s: (items, options, replace(s, current={"l4": 1})),
    lambda items, options, s: (items, options, replace(s, target_utilisation=0.9)),
])
def test_any_change_of_the_inputs_is_solved_again(memo, change):
    settings = IlpSettings(slice_factor=4, current={"l4": 2})
    solve_ilp(ITEMS, OPTIONS, settings)
    items, options, changed = change(list(ITEMS), list(OPTIONS), settings)
    answer = solve_ilp(items, options, changed)
    assert (memo.hits, memo.misses) == (0, 2)
    assert same(answer, fresh(items, options, changed))


def test_only_proven_answers_are_kept_and_the_oldest_go_first():
    memo = SolveMemo(entries=2)
    memo.put(b"a", 1)
    memo.put(b"b", 2)
    assert memo.get(b"a") == 1  # a is now the most recent
    memo.put(b"c", 3)
    assert memo.get(b"b") is None and memo.get(b"a") == 1 and memo.get(b"c") == 3 and len(memo) == 2
