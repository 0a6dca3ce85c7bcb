"""`melange demo --plain` (no terminal): each printed line carries what the live view shows (the rate
the operator sees, $/h, the best single type and the savings, the move's step) and every Event once,
so a move's steps all appear even when a step lasted less than the one-second sampling."""
from __future__ import annotations

from melange.demo.view import Snapshot, View


def snapshot(elapsed: float, status: dict, events: list[str]) -> Snapshot:
    return Snapshot(elapsed, "chat", "the traffic player's counts, read directly", 4.0, status, {}, events)


STATUS = {"allocation": {"l4": 1, "a10g": 2, "h100": 0}, "costPerHour": 2.72,
          "bestSingleType": {"name": "a10g", "costPerHour": 3.03}, "savingsPercent": 10.23,
          "workload": {"rate": 3.87, "source": "static"}}
MOVING = {**STATUS, "move": {"step": "draining", "reason": "saving 36.0%"}}
EVENTS = ["Reallocated: nothing -> 1 x l4 + 2 x a10g ($2.72/h)",
          "MoveStarted: 1 x l4 + 2 x a10g -> 3 x a10g: demand exceeds what runs",
          "MoveStep: scaling-up: 1 x l4 + 2 x a10g -> 3 x a10g",
          "MoveStep: switching: 1 x l4 + 2 x a10g -> 3 x a10g",
          "MoveStep: draining: 1 x l4 + 2 x a10g -> 3 x a10g"]


def test_plain_lines_show_the_rate_the_price_the_best_single_type_and_the_savings(capsys):
    view = View(live=False)
    view.show(snapshot(12, STATUS, EVENTS[:1]))
    out = capsys.readouterr().out
    line = next(line for line in out.splitlines() if "a10g x2" in line)
    assert "3.87 req/s" in line  # what the operator sees
    assert "$2.72/h" in line and "a10g $3.03/h" in line and "10.2%" in line
    assert EVENTS[0] in out


def test_every_event_is_printed_once_so_a_move_shows_all_its_steps(capsys):
    view = View(live=False)
    view.show(snapshot(1, STATUS, EVENTS[:2]))
    # one second later the move has gone through three steps; the status shows only the last
    view.show(snapshot(2, MOVING, EVENTS))
    view.show(snapshot(3, MOVING, EVENTS))
    out = capsys.readouterr().out
    for event in EVENTS:
        assert out.count(event) == 1, out
    assert "draining" in out.splitlines()[-1] or any("move draining" in line for line in out.splitlines())


def test_a_note_is_printed_at_once(capsys):
    view = View(live=False)
    view.note("no prometheus binary found")
    assert capsys.readouterr().out == "note: no prometheus binary found\n"
