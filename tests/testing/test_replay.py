"""The replay's traffic generator (deterministic, diurnal bounds, Poisson counts) and its cost accounting
(pools that start slowly, paid while starting), each against values worked out by hand."""
from __future__ import annotations

import math

import numpy as np
import pytest

from melange.operator.core.problem import default_inputs
from melange.operator.core.reconcile import reconcile
from melange.solver.buckets import BucketGrid
from melange.testing.replay import (START_S, Replica, Schedule, Traffic, TrafficShape, bill, diurnal_rate,
                                    ready_counts, replay, scale, true_rates, week_traffic, window_workload)

TWO = {"chat": np.array([[0.75, 0.25]]), "mixed": np.array([[0.5, 0.5]]), "documents": np.array([[0.25, 0.75]])}


def test_the_same_seed_gives_the_same_week_and_another_seed_another():
    shape = TrafficShape(days=1)
    first, again, other = week_traffic(shape, TWO, 7), week_traffic(shape, TWO, 7), week_traffic(shape, TWO, 8)
    assert np.array_equal(first.counts, again.counts) and np.array_equal(first.rates, again.rates)
    assert not np.array_equal(first.counts, other.counts)


def test_the_diurnal_rate_is_the_peak_at_the_peak_hour_and_peak_over_the_ratio_twelve_hours_later():
    shape = TrafficShape(peak_rate=8.0, peak_to_trough=6.0, peak_hour=15.0, weekend=0.5)
    assert diurnal_rate(shape, 15 * 60) == pytest.approx(8.0)
    assert diurnal_rate(shape, 3 * 60) == pytest.approx(8.0 / 6)
    # Six hours from the peak the cosine is 0: halfway between trough and peak.
    assert diurnal_rate(shape, 21 * 60) == pytest.approx((8.0 + 8.0 / 6) / 2)
    # Day 5 (Saturday) at half.
    assert diurnal_rate(shape, 5 * 1440 + 15 * 60) == pytest.approx(4.0)
    weekday = [diurnal_rate(shape, m) for m in range(1440)]
    assert 4 <= max(weekday) / min(weekday) <= 10


def test_regimes_follow_the_schedule_across_midnight():
    schedule = Schedule(documents_from=22, documents_to=4, mixed_hours=2)
    assert [schedule.regime(h) for h in (21.5, 23, 3.9, 4, 5.9, 6, 12, 19.9, 20)] == \
        ["mixed", "documents", "documents", "mixed", "mixed", "chat", "chat", "chat", "mixed"]


def test_bursts_multiply_the_rate_within_their_range_and_batches_follow_their_cycle():
    shape = TrafficShape(days=2, bursts_per_day=6, schedule=Schedule(documents_from=0, documents_to=6, mixed_hours=1),
                         batch_minutes=90, gap_minutes=30, batch_factor=1.5, gap_factor=0.3)
    rates, regimes, bursts = true_rates(shape, 3)
    assert bursts.any()
    for m in range(len(rates)):
        base = diurnal_rate(shape, m)
        if (m % 1440) < 360:  # documents from midnight: 90 minutes at 1.5x, 30 at 0.3x
            base *= 1.5 if (m % 1440) % 120 < 90 else 0.3
        ratio = rates[m] / base
        assert (2.0 <= ratio <= 3.0) if bursts[m] else ratio == pytest.approx(1.0)


def test_arrivals_are_poisson_per_minute_and_split_by_the_mix():
    # A flat 2 req/s (no diurnal swing, bursts or batches) of chat: 120 expected requests a minute.
    shape = TrafficShape(days=2, peak_rate=2.0, peak_to_trough=1.0, weekend=1.0, bursts_per_day=0,
                         schedule=Schedule(documents_from=0, documents_to=0, mixed_hours=0))
    traffic = week_traffic(shape, TWO, 11)
    per_minute = traffic.counts.sum(axis=(1, 2))
    minutes = len(per_minute)
    # The total is Poisson(120 x 2880): within 4 of its standard deviations.
    expected = 120 * minutes
    assert abs(per_minute.sum() - expected) < 4 * math.sqrt(expected)
    # A Poisson count's variance equals its mean: the dispersion index of 2880 minutes has a
    # standard deviation of sqrt(2 / 2879) = 0.026 about 1.
    assert abs(per_minute.var(ddof=1) / per_minute.mean() - 1) < 4 * math.sqrt(2 / (minutes - 1))
    # Chat puts 3/4 of the requests in the first bucket: binomial within 4 standard deviations.
    first, total = traffic.counts[:, 0, 0].sum(), per_minute.sum()
    assert abs(first - 0.75 * total) < 4 * math.sqrt(total * 0.75 * 0.25)


def test_a_window_reads_the_requests_of_its_minutes_as_a_rate_and_mix():
    grid = BucketGrid((100,), (100, 200))
    counts = np.array([[[30, 30]], [[60, 0]], [[0, 120]]])
    traffic = Traffic(np.array([1.0, 1.0, 2.0]), np.zeros(3, dtype=int), np.zeros(3, dtype=bool), counts)
    workload, requests = window_workload(traffic, 3, 2, grid)  # minutes 1 and 2
    assert requests == 180
    assert workload.rate == pytest.approx(180 / 120)
    assert workload.distribution[0] == pytest.approx((60 / 180, 120 / 180))
    # Before a whole window has passed, the first window stands for the history before minute 0.
    assert window_workload(traffic, 1, 2, grid)[1] == 120


def test_a_pool_pays_its_replicas_from_creation_and_serves_from_ready():
    startup = {"a": 300.0, "b": 600.0}
    pods = scale((), {"a": 2}, 0.0, startup)
    pods = scale(pods, {"a": 1, "b": 1}, 3600.0, startup)  # one ready a goes, one b starts
    assert ready_counts(pods, 4000.0) == {"a": 1}
    assert ready_counts(pods, 4200.0) == {"a": 1, "b": 1}
    cost = bill(pods, {"a": 2.0, "b": 4.0}, {"a": 1, "b": 2}, 0.0, 7200.0)
    # a: 2 h + 1 h at $2; b: 1 h at $4. Starting: 300 s + 300 s on one GPU, 600 s on two.
    assert cost.dollars == pytest.approx(2 * 2.0 + 1 * 2.0 + 1 * 4.0)
    assert cost.replica_hours == pytest.approx({"a": 3.0, "b": 1.0})
    assert cost.started == 3
    assert cost.starting_gpu_hours == pytest.approx((300 + 300 + 2 * 600) / 3600)


def test_a_shrinking_pool_removes_a_replica_still_starting_before_a_ready_one():
    startup = {"a": 300.0}
    pods = scale(scale((), {"a": 1}, 0.0, startup), {"a": 2}, 1000.0, startup)
    pods = scale(pods, {"a": 1}, 1100.0, startup)
    assert [p.deleted_s for p in pods] == [None, 1100.0]
    cost = bill(pods, {"a": 2.0}, {"a": 1}, 0.0, 3600.0)
    assert cost.dollars == pytest.approx(2.0 + 2.0 * 100 / 3600)
    assert cost.starting_gpu_hours == pytest.approx((300 + 100) / 3600)


def _one_bucket_service() -> tuple[dict, BucketGrid]:
    grid = BucketGrid((100,), (100,))
    profile = {"model": "m", "gpu": "L4", "gpus_per_replica": 1, "slo": {"tpot_ms": 100},
               "grid": {"input_edges": [100], "output_edges": [100]},
               "provenance": {"source": "measured"}, "max_rps": [[10.0]]}
    spec = {"model": "m", "slo": {"tpotMs": 100},
            "gpuOptions": [{"name": "a", "gpu": "L4", "pricePerHour": 1.0, "profile": {"inline": profile}}],
            "workload": {"source": "prometheus", "prometheus": {"window": "60s"},
                         "grid": {"inputEdges": [100], "outputEdges": [100]}},
            "reallocation": {"interval": "60s", "targetUtilisation": 1.0}}
    return spec, grid


def test_the_replay_bills_a_step_up_as_worked_out_by_hand():
    """5 req/s for 30 minutes, then 20 req/s, on replicas serving 10 req/s each, a 2-minute start-up.

    Before the step the window's 300 requests size 1 replica (the +2 bound, (300 + 2 + 2 sqrt 301) / 60
    = 5.6 req/s). The pass at minute 31 reads the first window of 1200: its -2 bound, 19.4 req/s, is
    above what 1 replica serves, so the operator scales up at once to the +2 bound's optimum (21.2 req/s:
    3 replicas). Two replicas start at 31 x 60 s and are ready 120 s later, at minute 33."""
    spec, grid = _one_bucket_service()
    minutes = 60
    per_minute = np.array([300] * 30 + [1200] * 30)
    traffic = Traffic(per_minute / 60.0, np.zeros(minutes, dtype=int), np.zeros(minutes, dtype=bool),
                      per_minute.reshape(minutes, 1, 1))
    run = replay(spec, default_inputs(), traffic, grid, 60.0, 60.0, {"a": 120.0})
    assert [(t - START_S, kind) for t, kind, _ in run.moves] == [(31 * 60.0, "scale-up")]
    assert [dict(r) for r in run.ready[30:34]] == [{"a": 1}, {"a": 1}, {"a": 1}, {"a": 3}]
    cost = bill(run.replicas, {"a": 1.0}, {"a": 1}, START_S, START_S + minutes * 60)
    assert cost.dollars == pytest.approx(1.0 + 2 * (3600 - 31 * 60) / 3600)
    assert cost.started == 2 and cost.starting_gpu_hours == pytest.approx(2 * 120 / 3600)
    assert isinstance(run.replicas[0], Replica) and run.replicas[0].created_s == START_S


def test_the_replay_reads_the_scale_up_window_and_a_step_is_met_from_it():
    """The same step under a 10-minute window with a 2-minute scale-up window. The pass at minute 31
    reads 3900 requests in the 10-minute window (9 x 300 + 1200) and 1500 in the last 2 minutes.
    At 3 sigma the short window holds at least 1500 + 4.5 - 3 sqrt(1502.25) = 1388.7 requests, 11.6
    req/s, above the 10 one replica serves, while the 10-minute window's -2 bound (3900 + 2 - 2
    sqrt(3901) = 3777, 6.3 req/s) is not: the move at minute 31 is the scale-up window's."""
    spec, grid = _one_bucket_service()
    spec["workload"]["prometheus"] = {"window": "10m", "scaleUpWindow": "2m"}
    minutes = 60
    per_minute = np.array([300] * 30 + [1200] * 30)
    traffic = Traffic(per_minute / 60.0, np.zeros(minutes, dtype=int), np.zeros(minutes, dtype=bool),
                      per_minute.reshape(minutes, 1, 1))
    seen = []

    def recording(owner, observed, inputs, live=None, **kwargs):
        seen.append((observed.now_s, live.requests, live.recent.window, live.recent.requests))
        return reconcile(owner, observed, inputs, live=live, **kwargs)

    run = replay(spec, default_inputs(), traffic, grid, 60.0, 600.0, {"a": 120.0}, reconcile_fn=recording)
    at_31 = [s for s in seen if s[0] == START_S + 31 * 60.0][0]
    assert at_31[1:] == (300 * 9 + 1200, "2m", 300 + 1200)
    [(when, kind, reason)] = run.moves[:1]
    assert (when - START_S, kind) == (31 * 60.0, "scale-up") and reason.startswith("over the last 2m: ")
