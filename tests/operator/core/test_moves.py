"""The make-before-break state machine, step by step, with the ready replicas a cluster would report."""
from __future__ import annotations

from melange.operator.core.moves import Drain, Move, advance, drain_waits, next_wake_s, peak, removed, stage

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
    assert advance(draining, {"l4": 2, "a10g": 1, "a100": 1}, 114.0, Drain(None, 90)) == draining
    down = advance(draining, {"l4": 2, "a10g": 1, "a100": 1}, 115.0, Drain(None, 90))
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
    """The switch follows at once, the drain looks at the routers every 2 s and ends at its bound at the
    latest (at the bound when routers are not followed), a scale-up at its deadline (counted from the
    move's start, not its step's)."""
    up = Move(SOURCE, TARGET, "scaling-up", 100.0, "", 40.0)
    assert next_wake_s(up, Drain(None, 90), timeout_s=600) == 640.0
    assert next_wake_s(up.at("switching", 200.0), Drain(None, 90), timeout_s=600) == 200.0
    assert next_wake_s(up.at("draining", 200.0), Drain(None, 90), timeout_s=600) == 290.0
    followed = Drain({"router-a": {"a10g": 1}}, 90)
    assert next_wake_s(up.at("draining", 200.0), followed, timeout_s=600, now_s=200.0) == 200.0
    assert next_wake_s(up.at("draining", 200.0), followed, timeout_s=600, now_s=250.0) == 252.0
    assert next_wake_s(up.at("draining", 200.0), followed, timeout_s=600, now_s=289.0) == 290.0


# The drain by requests in flight. SOURCE -> TARGET removes the A10G pool (1 -> 0); the L4 pool only
# shrinks (2 -> 1) and stays in the table. Each case is worked by hand: the drain began at t = 100 s,
# its bound (the pools' termination grace) is 262 s, so it ends at t = 362 s at the latest.
DRAINING = Move(SOURCE, TARGET, "draining", 100.0, "saving 30%", 0.0)
PEAK = {"l4": 2, "a10g": 1, "a100": 1}


def test_only_pools_the_move_takes_away_are_drained():
    assert removed(DRAINING) == ("a10g",)
    assert removed(Move({"l4": 2}, {"l4": 3}, "draining", 0.0)) == ()


def test_a_request_in_flight_to_a_removed_pool_keeps_the_move_draining():
    drain = Drain({"router-a": {"a10g": 2}, "router-b": {}}, 262.0)
    assert advance(DRAINING, PEAK, 150.0, drain) == DRAINING
    assert drain_waits(DRAINING, drain, 150.0) == ("waiting for requests in flight to a10g: router-a has 2 to a10g "
                                                   "(at most 212 s more, the pools' termination grace)")
    assert advance(DRAINING, PEAK, 361.9, drain) == DRAINING  # 261.9 s < 262 s


def test_zero_in_flight_ends_the_drain_at_once():
    # Requests to pools that stay (l4) do not hold it; a reported zero is no request.
    drain = Drain({"router-a": {"a10g": 0, "l4": 5}, "router-b": {}}, 262.0)
    assert drain_waits(DRAINING, drain, 100.0) is None
    down = advance(DRAINING, PEAK, 100.0, drain)
    assert (down.step, down.since_s) == ("scaling-down", 100.0)
    assert advance(DRAINING, PEAK, 100.0, Drain({}, 262.0)).step == "scaling-down"  # no ready router: none in flight
    # A move that removes no pool has nothing to drain.
    shrink = Move({"l4": 2}, {"l4": 1}, "draining", 100.0)
    assert advance(shrink, {"l4": 2}, 100.0, Drain({"router-a": None}, 262.0)).step == "scaling-down"


def test_the_grace_bounds_the_drain():
    drain = Drain({"router-a": {"a10g": 3}}, 262.0)
    assert advance(DRAINING, PEAK, 361.0, drain) == DRAINING
    assert advance(DRAINING, PEAK, 362.0, drain).step == "scaling-down"  # 262 s after the drain began


def test_a_silent_router_holds_the_drain_until_the_grace_only():
    # router-b reported nothing for the new table (an older router, or it stopped writing).
    drain = Drain({"router-a": {}, "router-b": None}, 262.0)
    assert advance(DRAINING, PEAK, 300.0, drain) == DRAINING
    assert "router-b reports none" in drain_waits(DRAINING, drain, 300.0)
    assert advance(DRAINING, PEAK, 362.0, drain).step == "scaling-down"
    # Routers not followed at all: the drain takes its whole bound.
    assert advance(DRAINING, PEAK, 361.0, Drain(None, 262.0)) == DRAINING
    assert advance(DRAINING, PEAK, 362.0, Drain(None, 262.0)).step == "scaling-down"
