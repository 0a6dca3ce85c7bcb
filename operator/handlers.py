"""The kopf handlers of LLMService: a thin shell that reads the cluster, calls the pure reconcile,
applies the diff, and writes status and Events.

create, update (of the spec), resume (operator start) and a timer all run one reconcile; the timer
ticks every few seconds and reconciles a service once its `reallocation.interval` has passed. A
lock per service keeps two reconciles of one service from overlapping. Importing this module
registers the handlers with kopf's default registry.
"""
from __future__ import annotations

import asyncio
import datetime
from dataclasses import dataclass, field
from typing import Any

import kopf

from melange.operator.diff import diff
from melange.operator.kube import Cluster, load_config
from melange.operator.planner import GROUP, VERSION, Images, Owner
from melange.operator.problem import Inputs, config_refs
from melange.operator.reconcile import Observed, Outcome, reconcile
from melange.operator.spec import parse_spec
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
    cluster: Cluster | None = None


def _config(memo: Any) -> OperatorConfig:
    config = memo.get("config")
    if config is None:
        config = memo["config"] = OperatorConfig()
    if config.cluster is None:
        config.cluster = Cluster(load_config())
    return config


@kopf.on.startup()
async def configure(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    """kopf's bookkeeping goes to annotations under our group; the API client is made once."""
    settings.persistence.finalizer = FINALIZER
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=GROUP)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=GROUP, key="last-handled-configuration")
    settings.posting.level = 20  # INFO and above become Events only where we post them ourselves
    _config(memo)


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def _uses_node_pools(spec: Any) -> bool:
    return ((spec or {}).get("nodePools") or {}).get("provider") == "karpenter"


def _condition_status(body: Any, kind: str) -> str | None:
    conditions = (body.get("status") or {}).get("conditions") or []
    return next((c.get("status") for c in conditions if c.get("type") == kind), None)


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
        meta = body["metadata"]
        owner = Owner(meta["name"], meta["namespace"], meta["uid"])
        spec = dict(body.get("spec") or {})
        try:
            refs = config_refs(parse_spec(spec))
        except InputError:
            refs = []  # the reconcile reports the bad spec
        cluster = config.cluster
        config_data = await asyncio.to_thread(cluster.read_config_data, owner.namespace, refs)
        actual = await asyncio.to_thread(cluster.owned_objects, owner, _uses_node_pools(spec))
        observed = Observed(spec, meta.get("generation"), dict(body.get("status") or {}), actual, _now())
        outcome = reconcile(owner, observed, Inputs(config_data, config.catalog), config.images)
        if outcome.desired is not None:
            actions = diff(outcome.desired, actual)
            if not actions.empty:
                await asyncio.to_thread(cluster.apply, actions, actual)
        for key, value in outcome.status.items():
            patch.status[key] = value
        for event in outcome.events:
            kopf.event(body, type=event.type, reason=event.reason, message=event.message)
            logger.info(f"{event.reason}: {event.message}")
        memo["last_reconcile"] = asyncio.get_running_loop().time()
        return outcome


@kopf.on.resume(GROUP, VERSION, PLURAL)
@kopf.on.create(GROUP, VERSION, PLURAL)
@kopf.on.update(GROUP, VERSION, PLURAL, field="spec")
async def on_change(body: kopf.Body, patch: kopf.Patch, memo: kopf.Memo, logger: Any, **_: Any) -> None:
    """A new, changed or resumed service: reconcile now."""
    await reconcile_service(body, patch, memo, logger)


@kopf.timer(GROUP, VERSION, PLURAL, interval=TICK_S, initial_delay=TICK_S)
async def on_tick(body: kopf.Body, patch: kopf.Patch, memo: kopf.Memo, logger: Any, **_: Any) -> None:
    """Reconcile again once the service's interval has passed (drift, later live traffic), and at
    every tick while its pools are not all ready, so Ready turns True within a tick."""
    last = memo.get("last_reconcile")
    waiting = _condition_status(body, "Ready") != "True" and _condition_status(body, "Solved") == "True"
    if not waiting and last is not None and asyncio.get_running_loop().time() - last < _interval_s(body.get("spec")):
        return
    await reconcile_service(body, patch, memo, logger)


@kopf.on.delete(GROUP, VERSION, PLURAL, when=lambda spec, **_: _uses_node_pools(spec))
async def on_delete(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    """NodePools are cluster-scoped, out of reach of owner references: delete them by label.
    Everything else goes with the LLMService through its owner references."""
    meta = body["metadata"]
    cluster = _config(memo).cluster
    await asyncio.to_thread(cluster.delete_node_pools, Owner(meta["name"], meta["namespace"], meta["uid"]))
