"""The LLMService status's shapes: conditions, the mix in words, times as Kubernetes writes them."""
from __future__ import annotations

import datetime
from collections.abc import Mapping, Sequence
from typing import Any

CONDITION_TYPES = ("Ready", "Progressing", "Reconciled", "Solved", "Infeasible", "InvalidSpec", "MetricsAvailable")


def condition(kind: str, true: bool, reason: str, message: str, now: str, generation: int | None,
              previous: Sequence[Mapping[str, Any]] = ()) -> dict[str, Any]:
    """One condition in Kubernetes' shape; `lastTransitionTime` moves only when the status flips."""
    status = "True" if true else "False"
    old = next((c for c in previous if c.get("type") == kind), None)
    since = old.get("lastTransitionTime", now) if old is not None and old.get("status") == status else now
    result = {"type": kind, "status": status, "reason": reason, "message": message[:1024],
              "lastTransitionTime": since}
    if generation is not None:
        result["observedGeneration"] = generation
    return result


def condition_status(status: Mapping[str, Any] | None, kind: str) -> str | None:
    """The status ("True"/"False") of the condition `kind` in an object's status, or None."""
    return next((c.get("status") for c in (status or {}).get("conditions") or [] if c.get("type") == kind), None)


def merge_conditions(previous: Sequence[Mapping[str, Any]], updates: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Previous conditions with `updates` replacing those of the same type, in a stable order."""
    by_type = {c["type"]: dict(c) for c in previous if "type" in c}
    by_type.update({c["type"]: dict(c) for c in updates})
    order = {kind: k for k, kind in enumerate(CONDITION_TYPES)}
    return sorted(by_type.values(), key=lambda c: (order.get(c["type"], len(order)), c["type"]))


def describe_mix(allocation: Mapping[str, int]) -> str:
    """'2 x l4 + 1 x a100' (options with replicas only), or 'nothing'."""
    parts = [f"{count} x {name}" for name, count in allocation.items() if count > 0]
    return " + ".join(parts) or "nothing"


def iso(seconds: float) -> str:
    """RFC 3339 UTC time, as Kubernetes writes it."""
    moment = datetime.datetime.fromtimestamp(seconds, datetime.timezone.utc).replace(microsecond=0)
    return moment.isoformat().replace("+00:00", "Z")


def from_iso(text: Any) -> float | None:
    """Seconds since the epoch of an RFC 3339 time, or None."""
    if not isinstance(text, str):
        return None
    try:
        return datetime.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def status_merge_patch(old: Mapping[str, Any] | None, new: Mapping[str, Any]) -> dict[str, Any]:
    """`new` status fields as a JSON merge patch (RFC 7386) over the stored `old` status: inside each
    object-valued field, the keys `old` has and `new` lacks are sent as null, so that the stored field
    becomes `new`'s (a merge patch keeps any key it does not name). Top-level fields `new` does not
    name are left alone: a pass writes only the fields it decides."""
    patch: dict[str, Any] = {}
    for key, value in new.items():
        before = (old or {}).get(key)
        if isinstance(value, Mapping) and isinstance(before, Mapping):
            nested = status_merge_patch(before, value)
            nested.update({gone: None for gone in before if gone not in value})
            patch[key] = nested
        else:
            patch[key] = value
    return patch
