"""The operator's own metrics: per-option capacity corrections from status.profileCorrections."""
from __future__ import annotations

from prometheus_client import generate_latest

from melange.operator.metrics import OperatorMetrics


def sample(metrics: OperatorMetrics, name: str, **labels: str) -> float | None:
    return metrics.registry.get_sample_value(name, labels)


def test_each_options_correction_is_a_gauge_and_goes_with_the_service():
    metrics = OperatorMetrics()
    status = {"allocation": {"a10g": 3, "l4": 1},
              "profileCorrections": {"a10g": {"factor": 0.72, "samples": 14}, "l4": {"factor": 1.0, "samples": 0}}}
    metrics.observe("ns", "svc", status, ["a10g", "l4"])
    assert sample(metrics, "melange_profile_correction_factor", namespace="ns", service="svc", option="a10g") == 0.72
    assert sample(metrics, "melange_profile_correction_samples", namespace="ns", service="svc", option="a10g") == 14
    assert sample(metrics, "melange_profile_correction_factor", namespace="ns", service="svc", option="l4") == 1.0
    metrics.forget("ns", "svc")
    assert b"melange_profile_correction_factor{" not in generate_latest(metrics.registry)
