"""The status's shapes; here the merge patch that makes the stored status equal what a pass wrote."""
from __future__ import annotations

from melange.operator.core.status import status_merge_patch
# RFC 7386 as the emulated API server applies it: what is stored after a JSON merge patch.
from melange.testing.kube_emulator import merge_patch as apply_merge_patch


def test_the_stored_fields_become_what_the_pass_wrote_and_other_fields_stay():
    old = {"allocation": {"l4": 1, "a100": 1}, "move": {"from": {"l4": 1, "x": 2}, "step": "draining"},
           "workload": {"rate": 4, "notes": ["n"]}, "costPerHour": 4.37, "other": {"kept": True}}
    new = {"allocation": {"l4": 2}, "move": {"from": {"l4": 1}, "step": "switching"}, "workload": {"rate": 1},
           "costPerHour": 1.4}
    stored = apply_merge_patch(old, status_merge_patch(old, new))
    assert stored == {**new, "other": {"kept": True}}


def test_without_a_stored_status_the_patch_is_the_status():
    new = {"allocation": {"l4": 1}, "conditions": [{"type": "Ready", "status": "False"}], "move": None}
    assert status_merge_patch(None, new) == new
    assert status_merge_patch({"allocation": "not an object"}, new) == new
