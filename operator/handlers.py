"""The kopf handlers of LLMService: a thin shell that reads the cluster, calls the pure reconcile,
applies the diff, and writes status and Events.

create, update (of the spec), resume (operator start) and a timer all run one reconcile; the timer
ticks every few seconds and reconciles a service once its `reallocation.interval` has passed. A
lock per service keeps two reconciles of one service from overlapping. Importing this module
registers the handlers with kopf's default registry.
"""
from __future__ import annotations

import asyncio
import dataclasses
import time
from dataclasses import dataclass, field
from typing import Any

import kopf

from melange.operator.core.diff import diff
from melange.operator.core.moves import DEFAULT_DRAIN_S
from melange.operator.core.planner import GROUP, VERSION, Images, Owner
from melange.operator.core.problem import Inputs, config_refs, explicit_profiles, service_grid
from melange.operator.core.reconcile import LiveInput, Observed, Outcome, reconcile
from melange.operator.core.spec import ServiceSpec, parse_spec
from melange.operator.core.status import condition_status, status_merge_patch
from melange.operator.kube import Cluster, load_config
from melange.operator.live_workload import PrometheusDefaults, prometheus_config, read_live
from melange.operator.metrics import OperatorMetrics
from melange.solver.errors import InputError
from melange.solver.profiling.catalog import Catalog, shipped_catalog

PLURAL = "llmservices"
TICK_S = 5.0
DEFAULT_INTERVAL_S = 60.0
FINALIZER = f"{GROUP}/node-pools"


@dataclass
class OperatorConfig:
    """What the operator's flags set; handlers find it in kopf's memo as `memo.config`."""

    images: Images = field(default_factory=Images)
    catalog: Catalog = field(default_factory=shipped_catalog)
    prometheus: PrometheusDefaults = field(default_factory=PrometheusDefaults)
    drain_s: float = DEFAULT_DRAIN_S
    metrics_port: int | None = None  # serve the operator's /metrics here (None: do not serve)
    metrics: OperatorMetrics = field(default_factory=OperatorMetrics)
    cluster: Cluster | None = None
    clock_origin: tuple[float, float] | None = None  # (wall time, loop time) when the operator started

    def clock(self) -> float:
        """Seconds since the epoch, advancing with the event loop's clock (so tests can fast-forward it)."""
        loop_now = asyncio.get_running_loop().time()
        if self.clock_origin is None:
            self.clock_origin = (time.time(), loop_now)
        wall, loop_start = self.clock_origin
        return wall + (loop_now - loop_start)


def _config(memo: Any) -> OperatorConfig:
    config = memo.get("config")
    if config is None:
        config = memo["config"] = OperatorConfig()
    if config.cluster is None:
        config.cluster = Cluster(load_config())
    return config


@kopf.on.startup()
async def configure(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    """kopf's bookkeeping goes to annotations under our group; the API client and the clock are made once."""
    settings.persistence.finalizer = FINALIZER
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=GROUP)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=GROUP, key="last-handled-configuration")
    settings.posting.level = 20  # INFO and above become Events only where we post them ourselves
    config = _config(memo)
    config.clock()
    if config.metrics_port is not None:
        config.metrics.serve(config.metrics_port)


def _uses_node_pools(spec: Any) -> bool:
    return ((spec or {}).get("nodePools") or {}).get("provider") == "karpenter"


def _interval_s(spec: Any) -> float:
    try:
        return parse_spec(spec).reallocation.interval_s
    except InputError:
        return DEFAULT_INTERVAL_S


async def reconcile_service(body: kopf.Body, patch: kopf.Patch, memo: kopf.Memo, logger: Any) -> Outcome:
    """Observe, reconcile, apply, report: one pass for one service."""
    config = _config(memo)
    if "lock" not in memo:
        memo["lock"] = asyncio.Lock()
    async with memo["lock"]:
        started = time.perf_counter()
        try:
            outcome = await _reconcile_once(body, patch, config, logger)
        except Exception:
            config.metrics.errors.labels("Exception").inc()
            raise
        finally:
            config.metrics.reconcile_seconds.observe(time.perf_counter() - started)
        memo["last_reconcile"] = asyncio.get_running_loop().time()
        return outcome


async def _reconcile_once(body: kopf.Body, patch: kopf.Patch, config: OperatorConfig, logger: Any) -> Outcome:
    """Read what the service references and owns, reconcile, apply the diff, write status and Events."""
    meta = body["metadata"]
    owner = Owner(meta["name"], meta["namespace"], meta["uid"])
    spec = dict(body.get("spec") or {})
    cluster = config.cluster
    try:
        parsed = parse_spec(spec)
    except InputError:
        parsed = None  # the reconcile reports the bad spec
    refs = config_refs(parsed) if parsed else []
    config_data = await asyncio.to_thread(cluster.read_config_data, owner.namespace, refs)
    inputs = Inputs(config_data, config.catalog)
    live = None
    if parsed is not None and parsed.workload.source == "prometheus":
        live = await _read_live(parsed, inputs, config, owner.namespace)
    actual = await asyncio.to_thread(cluster.owned_objects, owner, _uses_node_pools(spec))
    observed = Observed(spec, meta.get("generation"), dict(body.get("status") or {}), actual, config.clock())
    # Solving takes tens of milliseconds: off the event loop, so watches and the health endpoint stay live.
    outcome = await asyncio.to_thread(reconcile, owner, observed, inputs, config.images, live, config.drain_s)
    if outcome.desired is not None:
        actions = diff(outcome.desired, actual)
        if not actions.empty:
            await asyncio.to_thread(cluster.apply, actions, actual)
    for key, value in status_merge_patch(body.get("status"), outcome.status).items():
        patch.status[key] = value
    for event in outcome.events:
        kopf.event(body, type=event.type, reason=event.reason, message=event.message)
        logger.info(f"{event.reason}: {event.message}")
    _count(config.metrics, owner, outcome, [o.get("name") for o in spec.get("gpuOptions") or [] if isinstance(o, dict)])
    if outcome.decision is not None and not outcome.decision.moves:
        logger.info(f"decision: {outcome.decision.reason}")
    return outcome


def _count(metrics: OperatorMetrics, owner: Owner, outcome: Outcome, options: list[str]) -> None:
    """The pass in the operator's metrics."""
    metrics.observe(owner.namespace, owner.name, outcome.status, options)
    if outcome.report is not None:
        metrics.solve_seconds.observe(outcome.report.allocation.wall_time_s)
    if outcome.decision is not None:
        metrics.decisions.labels(outcome.decision.kind).inc()
    for condition in outcome.status.get("conditions") or []:
        if condition.get("status") == "True" and condition["type"] in ("InvalidSpec", "Infeasible"):
            metrics.errors.labels(condition["type"]).inc()
        if condition.get("status") == "False" and condition["type"] == "MetricsAvailable":
            metrics.errors.labels("MetricsUnavailable").inc()


async def _read_live(spec: ServiceSpec, inputs: Inputs, config: OperatorConfig, namespace: str) -> LiveInput | None:
    """The service's live workload from Prometheus; None when the spec itself is wrong (reported then)."""
    try:
        grid = service_grid(spec, explicit_profiles(spec, inputs))
    except InputError:
        return None
    prometheus = spec.workload.prometheus
    window = prometheus.window if prometheus else "10m"
    token, ca_bundle = None, None
    if prometheus is not None and prometheus.bearer_token_ref is not None:
        token = await asyncio.to_thread(config.cluster.read_secret, namespace, prometheus.bearer_token_ref)
        if token is None:
            return LiveInput(None, f"Secret {prometheus.bearer_token_ref.name} has no key "
                                   f"{prometheus.bearer_token_ref.key}", window)
    if prometheus is not None and prometheus.ca_ref is not None:
        ca_bundle = await asyncio.to_thread(config.cluster.ca_bundle_file, namespace, prometheus.ca_ref)
        if ca_bundle is None:
            return LiveInput(None, f"ConfigMap {prometheus.ca_ref.name} has no key {prometheus.ca_ref.key}", window)
    source = prometheus_config(spec, config.prometheus, token, ca_bundle)
    return await asyncio.to_thread(read_live, source, grid, window)


@kopf.on.resume(GROUP, VERSION, PLURAL)
@kopf.on.create(GROUP, VERSION, PLURAL)
@kopf.on.update(GROUP, VERSION, PLURAL, field="spec")
async def on_change(body: kopf.Body, patch: kopf.Patch, memo: kopf.Memo, logger: Any, **_: Any) -> None:
    """A new, changed or resumed service: reconcile now."""
    await reconcile_service(body, patch, memo, logger)


@kopf.timer(GROUP, VERSION, PLURAL, interval=TICK_S, initial_delay=TICK_S)
async def on_tick(body: kopf.Body, patch: kopf.Patch, memo: kopf.Memo, logger: Any, **_: Any) -> None:
    """Reconcile again once the service's interval has passed (new traffic, drift), and at every tick
    while its pools are not all ready or a move is under way, so each step follows within a tick."""
    last = memo.get("last_reconcile")
    status = body.get("status") or {}
    waiting = (condition_status(status, "Ready") != "True" and condition_status(status, "Solved") == "True") \
        or bool(status.get("move"))
    if not waiting and last is not None and asyncio.get_running_loop().time() - last < _interval_s(body.get("spec")):
        return
    await reconcile_service(body, patch, memo, logger)


def _without_finalizer(timer: Any) -> None:
    """kopf gives every timer a finalizer, to stop it before its object goes. A tick holds nothing that
    needs stopping, and a finalizer on every service hangs its deletion (and the CRD's) once the
    operator is gone: the same timer, without one. Only Karpenter services keep a finalizer, for their
    cluster-scoped NodePools (the delete handler below); kopf removes it from the others."""
    spawning = kopf.get_default_registry()._spawning
    spawning._handlers[:] = [dataclasses.replace(handler, requires_finalizer=False) if handler.fn is timer
                             else handler for handler in spawning._handlers]


_without_finalizer(on_tick)


@kopf.on.delete(GROUP, VERSION, PLURAL, when=lambda spec, **_: _uses_node_pools(spec))
async def on_delete(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    """NodePools are cluster-scoped, out of reach of owner references: delete them by label.
    Everything else goes with the LLMService through its owner references."""
    meta = body["metadata"]
    cluster = _config(memo).cluster
    await asyncio.to_thread(cluster.delete_node_pools, Owner(meta["name"], meta["namespace"], meta["uid"]))


@kopf.on.delete(GROUP, VERSION, PLURAL, optional=True)
async def forget_metrics(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    """A deleted service's series leave the operator's /metrics (no finalizer needed for that)."""
    _config(memo).metrics.forget(body["metadata"]["namespace"], body["metadata"]["name"])
