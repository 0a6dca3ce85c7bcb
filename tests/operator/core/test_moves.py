"""The make-before-break state machine, step by step, with the ready replicas a cluster would report."""
from __future__ import annotations

from melange.operator.core.moves import next_wake_s, Move, advance, peak, stage

SOURCE = {"l4": 2, "a10g": 1, "a100": 0}
TARGET = {"l4": 1, "a10g": 0, "a100": 1}


def test_the_steps_of_one_move():
    move = Move(SOURCE, TARGET, "scaling-up", 0.0, "saving 30%")
    assert peak(move) == {"a100": 1, "a10g": 1, "l4": 2}
    assert stage(move).replicas == {"a100": 1, "a10g": 1, "l4": 2} and stage(move).routing == "source"
    # The new A100 is not ready yet: stay.
    assert advance(move, {"l4": 2, "a10g": 1}, 10.0) == move
    switching = advance(move, {"l4": 2, "a10g": 1, "a100": 1}, 20.0)
    assert (switching.step, switching.since_s) == ("switching", 20.0)
    assert stage(switching).routing == "target" and stage(switching).replicas == peak(move)
    # A router does not serve the new table yet: the switch waits, whatever the time.
    assert advance(switching, {"l4": 2, "a10g": 1, "a100": 1}, 500.0, switched=False) == switching
    draining = advance(switching, {"l4": 2, "a10g": 1, "a100": 1}, 25.0)
    assert (draining.step, draining.since_s) == ("draining", 25.0)  # the drain counts from the acknowledgement
    assert advance(draining, {"l4": 2, "a10g": 1, "a100": 1}, 114.0, drain_s=90) == draining
    down = advance(draining, {"l4": 2, "a10g": 1, "a100": 1}, 115.0, drain_s=90)
    assert down.step == "scaling-down" and stage(down).replicas == TARGET
    assert advance(down, {"l4": 2, "a10g": 1, "a100": 1}, 120.0) == down  # old pods still up
    assert advance(down, {"l4": 1, "a100": 1}, 130.0) is None


def test_status_round_trip_and_a_malformed_record():
    move = Move(SOURCE, TARGET, "draining", 1_790_000_042.0, "why", 1_790_000_000.0)
    assert Move.from_status(move.to_status()) == move
    older = move.to_status()
    del older["started"]  # written before moves had a start: began when its step did
    assert Move.from_status(older).began_s == 1_790_000_042.0
    assert Move.from_status({"step": "teleporting"}) is None
    assert Move.from_status({"step": "draining", "from": {"l4": "x"}, "to": {}, "since": "2026-11-28T00:00:00Z"}) is None
    assert Move.from_status(None) is None


def test_the_next_pass_a_move_needs_without_a_pool_change():
    """The switch follows at once, the drain ends drain_s after the switch, a scale-up at its deadline
    (counted from the move's start, not its step's)."""
    up = Move(SOURCE, TARGET, "scaling-up", 100.0, "", 40.0)
    assert next_wake_s(up, drain_s=90, timeout_s=600) == 640.0
    assert next_wake_s(up.at("switching", 200.0), drain_s=90, timeout_s=600) == 200.0
    assert next_wake_s(up.at("draining", 200.0), drain_s=90, timeout_s=600) == 290.0
