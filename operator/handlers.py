"""The kopf handlers of LLMService: a thin shell that reads the cluster, calls the pure reconcile,
applies what it wants, and writes status and Events.

A pass runs when something it depends on changed: the spec (create, update, resume at start), one of
the service's Deployments (a watch: pods became ready or went away, someone scaled or edited it), a
time a move waits for (the routers' acknowledgements and requests in flight, the drain's bound, the move's
deadline), or the service's `reallocation.interval` (new traffic; the first such pass after a create,
resume or edit half an interval plus the service's own phase later, operator/core/schedule.py, so
services created together do not tick together). Each service has a kopf daemon that sleeps until its
next pass is due and is woken by the watches and by every pass to look again: between passes a
service costs no API call and no handler call; passes other than interval passes come at most one a
second. A pass writes its own status before the service's next pass may start. At most `max_passes` passes run at once (one per core by default): a burst
of due passes queues for a core instead of sharing the cores all at once, so each pass takes what its
own work takes. A failed pass sets `Reconciled=False` with the reason, posts one Warning (not one per
retry), and is retried with a backoff. A lock per service keeps two passes of one
service from overlapping. Importing this module registers the handlers with kopf's default registry.
"""
from __future__ import annotations

import asyncio
import dataclasses
import os
import time
from dataclasses import dataclass, field
from collections.abc import Mapping
from typing import Any

import kopf

from melange.operator.core.diff import diff
from melange.operator.core.moves import DEFAULT_DRAIN_S
from melange.operator.core.planner import GROUP, MANAGED_BY, SERVICE_LABEL, VERSION, Images, Owner, PodMonitorSettings
from melange.operator.core.problem import Inputs, config_refs, explicit_profiles, service_grid
from melange.operator.core.reconcile import LiveInput, Observed, Outcome, reconcile
from melange.operator.core.schedule import next_interval_pass_s
from melange.operator.core.spec import ServiceSpec, parse_spec
from melange.operator.core.status import condition, condition_status, iso, merge_conditions, status_merge_patch
from melange.operator.kube import PLURAL, Cluster, describe_error, load_config
from melange.operator.live_workload import PrometheusDefaults, prometheus_config, read_live
from melange.operator.metrics import OperatorMetrics
from melange.solver.errors import InputError
from melange.solver.ilp import use_memo
from melange.solver.memo import SolveMemo
from melange.solver.profiling.catalog import Catalog, shipped_catalog
from melange.solver.workload import Workload

TICK_S = 1.0  # the least time between two passes of a service other than its interval passes
DEFAULT_INTERVAL_S = 60.0
RETRY_S = 5.0  # the first retry of a failed pass; doubled each time, at most the interval
API_TIMEOUT_S = 30.0  # kopf's own calls (watches, status patches, Events)
FINALIZER = f"{GROUP}/node-pools"


def cores() -> int:
    """The CPUs this process may run on (a container's CPU set, not the host's count)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


@dataclass
class OperatorConfig:
    """What the operator's flags set; handlers find it in kopf's memo as `memo.config`."""

    images: Images = field(default_factory=Images)
    catalog: Catalog = field(default_factory=shipped_catalog)
    prometheus: PrometheusDefaults = field(default_factory=PrometheusDefaults)
    drain_s: float | None = DEFAULT_DRAIN_S  # the drain's bound; None: the removed pools' termination grace
    metrics_port: int | None = None  # serve the operator's /metrics here (None: do not serve)
    pod_monitors: str = "auto"  # auto: where the PodMonitor CRD is installed; on: always; off: never
    pod_monitor: PodMonitorSettings = field(default_factory=PodMonitorSettings)
    metrics: OperatorMetrics = field(default_factory=OperatorMetrics)
    cluster: Cluster | None = None
    clock_origin: tuple[float, float] | None = None  # (wall time, loop time) when the operator started
    woken: set[tuple[str, str]] = field(default_factory=set)  # (namespace, name) of services a watch woke
    wakeups: dict[tuple[str, str], asyncio.Event] = field(default_factory=dict)  # each service daemon's alarm
    max_passes: int = field(default_factory=cores)  # passes running at once, at most
    solve_memo: SolveMemo | None = field(default_factory=SolveMemo)  # answers of solves whose inputs recur
    _pass_slots: asyncio.Semaphore | None = None

    @property
    def pass_slots(self) -> asyncio.Semaphore:
        """What a pass holds while it runs: `max_passes` of them."""
        if self._pass_slots is None:
            self._pass_slots = asyncio.Semaphore(self.max_passes)
        return self._pass_slots

    def wake(self, namespace: str, name: str) -> None:
        """Ask for a pass of the service."""
        self.woken.add((namespace, name))
        self.look_again(namespace, name)

    def look_again(self, namespace: str, name: str) -> None:
        """Have the service's daemon work out again when its next pass is due."""
        event = self.wakeups.get((namespace, name))
        if event is not None:
            event.set()

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
    settings.networking.request_timeout = API_TIMEOUT_S
    config = _config(memo)
    config.clock()
    use_memo(config.solve_memo)
    if config.pod_monitors == "on" and not await asyncio.to_thread(config.cluster.serves_pod_monitors):
        raise kopf.PermanentError("--pod-monitors on, but the API server does not serve monitoring.coreos.com/v1 "
                                  "podmonitors: install the Prometheus Operator's CRDs, or use --pod-monitors auto "
                                  "(chart: podMonitor.enabled auto)")
    if config.metrics_port is not None:
        config.metrics.serve(config.metrics_port)


def _uses_node_pools(spec: Any, status: Any = None) -> bool:
    """Whether the service has NodePools: its provider is karpenter, or its status still names
    NodePools it had (the provider changed away: they are listed, so that the pass deletes them)."""
    return ((spec or {}).get("nodePools") or {}).get("provider") == "karpenter" \
        or bool((status or {}).get("nodePools"))


def _monitoring(config: OperatorConfig) -> PodMonitorSettings | None:
    """The PodMonitor each service gets this pass (blocking: asks the API server, at most once a minute)."""
    if config.pod_monitors == "off":
        return None
    if config.pod_monitors == "on" or config.cluster.serves_pod_monitors():
        return config.pod_monitor
    return None


def _interval_s(spec: Any) -> float:
    try:
        return parse_spec(spec).reallocation.interval_s
    except InputError:
        return DEFAULT_INTERVAL_S


def _service_interval_s(passes: "Passes", body: kopf.Body) -> float:
    """The service's interval, read from its spec once per generation (every tick asks)."""
    generation = body["metadata"].get("generation")
    if passes.interval is None or passes.interval[0] != generation:
        passes.interval = (generation, _interval_s(body.get("spec")))
    return passes.interval[1]


@dataclass
class Passes:
    """What the shell remembers of one service between passes (in its kopf memo)."""

    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    last_s: float | None = None  # loop time of the last pass
    fresh_at_s: float | None = None  # start of the last pass on fresh traffic, seconds since the epoch
    fresh_on_phase: bool = False  # whether that pass was an interval pass (else: create, resume, edit)
    interval: tuple[int | None, float] | None = None  # (generation, its reallocation interval in seconds)
    live: tuple[int | None, LiveInput | None] | None = None  # (generation, reading) of that read
    trusted: Workload | None = None  # the workload of the last reading with enough requests for its mix
    wake_s: float | None = None  # wall time a move waits for
    retry_s: float | None = None  # loop time to retry a failed pass
    failures: int = 0
    # (resourceVersion after the last status write, the status written): until the watch brings that
    # write, the body kopf hands over still holds a status before it.
    written: tuple[str, dict[str, Any]] | None = None


def _passes(memo: kopf.Memo) -> Passes:
    if "passes" not in memo:
        memo["passes"] = Passes()
    return memo["passes"]


async def reconcile_service(body: kopf.Body, memo: kopf.Memo, logger: Any, fresh_metrics: bool = True,
                            on_phase: bool = False) -> Outcome | None:
    """Observe, reconcile, apply, report: one pass for one service, its status written before the next
    pass of the service may start. A failure is reported in status and once as an Event, and the pass
    is retried; None then. `on_phase`: an interval pass following an earlier one
    (operator/core/schedule.py)."""
    config = _config(memo)
    passes = _passes(memo)
    async with passes.lock:
        loop = asyncio.get_running_loop()
        started = time.perf_counter()
        meta = body["metadata"]
        previous = dict(body.get("status") or {})
        if passes.written is not None and _older(meta.get("resourceVersion"), passes.written[0]):
            previous = dict(passes.written[1])
        try:
            async with config.pass_slots:
                fresh_at = config.clock()
                outcome, error = await _reconcile_once(body, previous, passes, config, logger, fresh_metrics)
        except Exception as failure:  # reading the cluster failed: nothing was decided
            outcome, error, fresh_at = None, failure, config.clock()
        finally:
            config.metrics.reconcile_seconds.observe(time.perf_counter() - started)
        status = dict(outcome.status) if outcome is not None else {}
        status["conditions"] = merge_conditions(status.get("conditions") or previous.get("conditions") or [],
                                                [_reconciled(previous, error, meta.get("generation"), config)])
        _report_failure(body, previous, error, config, logger)
        changes = status_merge_patch(previous, status)
        if changes:
            try:
                version = await asyncio.to_thread(config.cluster.patch_status, meta["namespace"], meta["name"],
                                                  {"status": changes})
                passes.written = None if version is None else (version, _merged(previous, status))
            except Exception as failure:  # the next pass decides again from what the API server holds
                logger.warning(f"status not written: {describe_error(failure)[1]}")
                passes.written = None
        passes.last_s = loop.time()
        if fresh_metrics:
            passes.fresh_at_s, passes.fresh_on_phase = fresh_at, on_phase
        passes.wake_s = outcome.wake_s if outcome is not None else None
        passes.failures = passes.failures + 1 if error is not None else 0
        passes.retry_s = None if error is None else \
            loop.time() + min(RETRY_S * 2 ** (passes.failures - 1), _interval_s(body.get("spec")))
        config.look_again(meta["namespace"], meta["name"])
        return outcome if error is None else None


def _older(version: str | None, written: str) -> bool:
    """Whether the service as kopf hands it over (its resourceVersion `version`) predates the status
    this shell wrote last (the API server's version after that write): the watch has not brought the
    write yet. Versions are compared as the integers the API server gives (etcd's revisions)."""
    if version is None or not version.isdigit() or not written.isdigit():
        return version != written
    return int(version) < int(written)


def _merged(previous: Mapping[str, Any], status: Mapping[str, Any]) -> dict[str, Any]:
    """The stored status once the pass's status is written (a key set to None is deleted)."""
    merged = {**previous, **status}
    return {key: value for key, value in merged.items() if value is not None}


def _reconciled(previous: Mapping[str, Any], error: BaseException | None, generation: int | None,
                config: OperatorConfig) -> dict[str, Any]:
    conditions = previous.get("conditions") or []
    now = iso(config.clock())
    if error is None:
        return condition("Reconciled", True, "Applied", "the cluster holds what the last pass decided", now,
                         generation, conditions)
    reason, message = describe_error(error)
    return condition("Reconciled", False, reason, message, now, generation, conditions)


def _report_failure(body: kopf.Body, previous: Mapping[str, Any], error: BaseException | None,
                    config: OperatorConfig, logger: Any) -> None:
    """One Warning per failure (not per retry), one Normal when passes succeed again."""
    before = next((c for c in previous.get("conditions") or [] if c.get("type") == "Reconciled"), None)
    failing_before = before is not None and before.get("status") == "False"
    if error is None:
        if failing_before:
            kopf.event(body, type="Normal", reason="Reconciled", message="the pass succeeded again")
        return
    reason, message = describe_error(error)
    config.metrics.errors.labels(reason).inc()
    logger.warning(f"pass failed: {reason}: {message}", exc_info=error)
    if not (failing_before and before.get("reason") == reason):
        kopf.event(body, type="Warning", reason="ReconcileFailed", message=f"{reason}: {message}")


async def _reconcile_once(body: kopf.Body, previous: dict[str, Any], passes: Passes, config: OperatorConfig,
                          logger: Any, fresh_metrics: bool) -> tuple[Outcome, BaseException | None]:
    """Read what the service references and owns, reconcile, apply; the outcome, and the error of the
    apply if it failed (reading errors raise)."""
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
    inputs = Inputs(config_data, config.catalog, await asyncio.to_thread(_monitoring, config))
    live = None
    if parsed is not None and parsed.workload.source == "prometheus":
        live = await _live(parsed, inputs, config, owner.namespace, passes, meta.get("generation"), fresh_metrics)
    actual = await asyncio.to_thread(cluster.owned_objects, owner, _uses_node_pools(spec, previous),
                                     inputs.monitoring is not None)
    problems = {}
    if parsed is not None and parsed.mode == "apply" and condition_status(previous, "Ready") != "True":
        problems = await asyncio.to_thread(cluster.pod_problems, owner)
    routers = None
    if parsed is not None and parsed.mode == "apply" and (previous.get("move") or {}).get("step") in ("switching",
                                                                                                      "draining"):
        routers = await asyncio.to_thread(cluster.ready_routers, owner)
    observed = Observed(spec, meta.get("generation"), previous, actual, config.clock(), problems, routers)
    # Solving takes tens of milliseconds: off the event loop, so watches and the health endpoint stay live.
    outcome = await asyncio.to_thread(reconcile, owner, observed, inputs, config.images, live, config.drain_s)
    error = None
    if outcome.desired is not None:
        try:
            await asyncio.to_thread(cluster.apply, outcome.desired, actual, diff(outcome.desired, actual))
        except Exception as failure:
            error = failure
    for event in outcome.events:
        kopf.event(body, type=event.type, reason=event.reason, message=event.message)
        logger.info(f"{event.reason}: {event.message}")
    _count(config.metrics, owner, outcome, [o.get("name") for o in spec.get("gpuOptions") or [] if isinstance(o, dict)])
    if outcome.decision is not None and not outcome.decision.moves:
        logger.info(f"decision: {outcome.decision.reason}")
    return outcome, error


async def _live(spec: ServiceSpec, inputs: Inputs, config: OperatorConfig, namespace: str, passes: Passes,
                generation: int | None, fresh: bool) -> LiveInput | None:
    """The live workload: read again when the pass is due for new traffic or the spec changed, else the
    reading of the last pass (a pool becoming ready is no reason to query Prometheus)."""
    if not fresh and passes.live is not None and passes.live[0] == generation:
        return passes.live[1]
    live = await _read_live(spec, inputs, config, namespace, passes.trusted)
    passes.live = (generation, live)
    if live is not None and live.mix_trusted:
        passes.trusted = live.workload
    return live


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


async def _read_live(spec: ServiceSpec, inputs: Inputs, config: OperatorConfig, namespace: str,
                     trusted: Workload | None) -> LiveInput | None:
    """The service's live workload from Prometheus (`trusted`: the last with enough requests, whose mix a
    window with too few uses); None when the spec itself is wrong (reported then)."""
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
    pools = [o.name for o in spec.options] if spec.profile_correction.enabled else []
    scale_up = prometheus.scale_up if prometheus else None
    return await asyncio.to_thread(read_live, source, grid, window, pools, spec.slo, trusted, scale_up)


@kopf.on.resume(GROUP, VERSION, PLURAL)
@kopf.on.create(GROUP, VERSION, PLURAL)
@kopf.on.update(GROUP, VERSION, PLURAL, field="spec")
async def on_change(body: kopf.Body, memo: kopf.Memo, logger: Any, **_: Any) -> None:
    """A new, changed or resumed service: reconcile now."""
    await reconcile_service(body, memo, logger)


def _present(memo: kopf.Memo, **_: Any) -> bool:
    return not memo.get("deleted")


def _due_in_s(body: kopf.Body, passes: Passes, config: OperatorConfig) -> tuple[float, bool]:
    """Seconds until the service's next pass falls due (0: now), and whether that pass reads fresh
    traffic: a watch woke the service, a move's timed step came, or the interval passed (then with a
    fresh reading of the traffic); after a failure, only its retry."""
    meta = body["metadata"]
    now = config.clock()
    interval_at = now if passes.fresh_at_s is None else next_interval_pass_s(
        passes.fresh_at_s, passes.fresh_on_phase, meta["uid"], _service_interval_s(passes, body))
    fresh = interval_at <= now
    loop_now = asyncio.get_running_loop().time()
    if passes.retry_s is not None:
        return max(0.0, passes.retry_s - loop_now), fresh
    if fresh:
        return 0.0, True
    # Other passes at most one a second: the watch events of one change (a Deployment's replicas becoming
    # ready one by one) make one pass, not one each.
    soonest = 0.0 if passes.last_s is None else max(0.0, passes.last_s + TICK_S - loop_now)
    if (meta["namespace"], meta["name"]) in config.woken:
        return soonest, False
    due_at = interval_at if passes.wake_s is None else min(interval_at, passes.wake_s)
    return max(soonest, due_at - now), False


@kopf.daemon(GROUP, VERSION, PLURAL, initial_delay=TICK_S, cancellation_timeout=API_TIMEOUT_S, when=_present)
async def run_passes(body: kopf.Body, memo: kopf.Memo, logger: Any, stopped: Any, **_: Any) -> None:
    """Run each pass of the service when it falls due (`_due_in_s`), sleeping in between: a watch, an
    edit or another pass wakes it to look again, so an idle service costs nothing (a timer would run a
    handler every tick for every service). The pass's status is written here, as kopf writes a
    handler's."""
    config = _config(memo)
    passes = _passes(memo)
    meta = body["metadata"]
    key = (meta["namespace"], meta["name"])
    wakeup = config.wakeups.setdefault(key, asyncio.Event())
    stopping = asyncio.ensure_future(stopped.wait())
    try:
        while not stopped:
            delay, fresh = _due_in_s(body, passes, config)
            if delay == 0 and passes.lock.locked():
                # A wake that comes while a pass runs (or waits for a slot) stays for the pass after it:
                # that pass may have read the Deployments before the change that woke it.
                delay = TICK_S
            if delay > 0:
                wakeup.clear()
                waking = asyncio.ensure_future(wakeup.wait())
                await asyncio.wait({waking, stopping}, timeout=delay, return_when=asyncio.FIRST_COMPLETED)
                waking.cancel()
                continue
            config.woken.discard(key)
            await reconcile_service(body, memo, logger, fresh_metrics=fresh,
                                    on_phase=fresh and passes.fresh_at_s is not None)
    finally:
        stopping.cancel()
        if config.wakeups.get(key) is wakeup:
            del config.wakeups[key]


@kopf.on.event(GROUP, VERSION, PLURAL)
async def on_service_event(type: str, memo: kopf.Memo, **_: Any) -> None:
    """kopf stops an object's daemon on deletion only through a finalizer; without one, the daemon's filter
    (`_present`) stops it once the watch says the service is gone."""
    if type == "DELETED":
        memo["deleted"] = True


@kopf.on.event("apps", "v1", "deployments",
               labels={"app.kubernetes.io/managed-by": MANAGED_BY, SERVICE_LABEL: kopf.PRESENT})
async def on_owned_deployment(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    """A pool or router Deployment changed (replicas became ready, someone scaled or edited it): its
    service runs a pass."""
    meta = body["metadata"]
    _config(memo).wake(meta["namespace"], meta["labels"][SERVICE_LABEL])


def _without_finalizer(daemon: Any) -> None:
    """kopf gives every daemon a finalizer, to stop it before its object goes. The daemon holds nothing
    that needs stopping, and a finalizer on every service hangs its deletion (and the CRD's) once the
    operator is gone: the same daemon, without one. Only Karpenter services keep a finalizer, for their
    cluster-scoped NodePools (the delete handler below); kopf removes it from the others."""
    spawning = kopf.get_default_registry()._spawning
    spawning._handlers[:] = [dataclasses.replace(handler, requires_finalizer=False) if handler.fn is daemon
                             else handler for handler in spawning._handlers]


_without_finalizer(run_passes)


@kopf.on.delete(GROUP, VERSION, PLURAL, when=lambda spec, status, **_: _uses_node_pools(spec, status))
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
