"""The operator's own Prometheus metrics (on `--metrics-port`, path /metrics), for dashboards and alerts.

    melange_service_cost_per_hour{namespace,service}                  $/h of the running mix
    melange_service_best_single_type_cost_per_hour{namespace,service} $/h of the cheapest single GPU type
    melange_service_savings_percent{namespace,service}                saving of the mix against it
    melange_service_replicas{namespace,service,option}                replicas per GPU option (running mix)
    melange_service_metrics_available{namespace,service}              1 when the live workload was read
    melange_service_move_in_progress{namespace,service}               1 while a make-before-break move runs
    melange_profile_correction_factor{namespace,service,option}       capacity factor the option is planned with
    melange_profile_correction_samples{namespace,service,option}      windows that informed it
    melange_solve_seconds, melange_reconcile_seconds                  histograms of one solve / one pass
    melange_decisions_total{kind}                                     initial, scale-up, rebalance, keep
    melange_reconcile_errors_total{reason}                            InvalidSpec, Infeasible, MetricsUnavailable, Exception
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

SERVICE = ("namespace", "service")
_SECONDS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class OperatorMetrics:
    """One registry per operator (tests run several in one process)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.cost = Gauge("melange_service_cost_per_hour", "$/h of the running mix", SERVICE, registry=r)
        self.best_single = Gauge("melange_service_best_single_type_cost_per_hour",
                                 "$/h of the cheapest single GPU type for the same workload", SERVICE, registry=r)
        self.savings = Gauge("melange_service_savings_percent", "saving of the mix against the best single type",
                             SERVICE, registry=r)
        self.replicas = Gauge("melange_service_replicas", "replicas per GPU option in the running mix",
                              SERVICE + ("option",), registry=r)
        self.metrics_available = Gauge("melange_service_metrics_available",
                                       "1 when the service's live workload could be read", SERVICE, registry=r)
        self.moving = Gauge("melange_service_move_in_progress", "1 while a make-before-break move runs", SERVICE,
                            registry=r)
        self.correction = Gauge("melange_profile_correction_factor", "capacity factor an option's profile is "
                                "planned with (status.profileCorrections)", SERVICE + ("option",), registry=r)
        self.correction_samples = Gauge("melange_profile_correction_samples", "windows that informed the "
                                        "option's capacity factor", SERVICE + ("option",), registry=r)
        self.solve_seconds = Histogram("melange_solve_seconds", "wall time of one ILP solve", buckets=_SECONDS,
                                       registry=r)
        self.reconcile_seconds = Histogram("melange_reconcile_seconds", "wall time of one reconcile pass "
                                           "(read, solve, plan, diff, apply)", buckets=_SECONDS, registry=r)
        self.decisions = Counter("melange_decisions", "decisions taken, by kind", ("kind",), registry=r)
        self.errors = Counter("melange_reconcile_errors", "passes that changed nothing because of bad input or "
                              "missing metrics, or failed", ("reason",), registry=r)

    def serve(self, port: int, address: str = "0.0.0.0") -> None:
        """Expose /metrics on `port` in a background thread."""
        start_http_server(port, addr=address, registry=self.registry)

    def observe(self, namespace: str, service: str, status: Mapping[str, Any], options: list[str]) -> None:
        """Set a service's gauges from the status just written (fields missing from a partial status,
        e.g. after a refused spec, leave the last values)."""
        labels = (namespace, service)
        if status.get("costPerHour") is not None:
            self.cost.labels(*labels).set(status["costPerHour"])
        best = status.get("bestSingleType")
        if best:
            self.best_single.labels(*labels).set(best["costPerHour"])
        if status.get("savingsPercent") is not None:
            self.savings.labels(*labels).set(status["savingsPercent"])
        for option in options:
            self.replicas.labels(namespace, service, option).set((status.get("allocation") or {}).get(option, 0))
        corrections = status.get("profileCorrections")
        if isinstance(corrections, Mapping):
            for option, state in corrections.items():
                if isinstance(state, Mapping) and state.get("factor") is not None:
                    self.correction.labels(namespace, service, option).set(state["factor"])
                    self.correction_samples.labels(namespace, service, option).set(state.get("samples") or 0)
        if "move" in status:
            self.moving.labels(*labels).set(1 if status["move"] else 0)
        for condition in status.get("conditions") or []:
            if condition.get("type") == "MetricsAvailable":
                self.metrics_available.labels(*labels).set(1 if condition.get("status") == "True" else 0)

    def forget(self, namespace: str, service: str) -> None:
        """Drop a deleted service's series."""
        for gauge in (self.cost, self.best_single, self.savings, self.metrics_available, self.moving):
            try:
                gauge.remove(namespace, service)
            except KeyError:
                pass
        for gauge in (self.replicas, self.correction, self.correction_samples):
            for labels in [key for key in gauge._metrics if key[:2] == (namespace, service)]:
                gauge.remove(*labels)
