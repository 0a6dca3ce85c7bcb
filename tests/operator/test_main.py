"""The operator's command line: the PodMonitor flags are checked before anything runs."""
from __future__ import annotations

import pytest

from melange.operator.main import main, pod_monitor_settings


def test_pod_monitor_labels_and_interval_are_read_sorted():
    settings = pod_monitor_settings(["release=kps", "example.com/team=llm", "empty="], "1m30s")
    assert settings.labels == (("empty", ""), ("example.com/team", "llm"), ("release", "kps"))
    assert settings.interval == "1m30s"
    assert pod_monitor_settings([], None).interval is None


@pytest.mark.parametrize("labels, interval, named", [
    (["release"], None, "release"),  # no value
    (["release=kube prometheus"], None, "kube prometheus"),
    (["-release=kps"], None, "-release"),
    ([f"release={'x' * 64}"], None, "x" * 64),
    ([f"{'a' * 64}=kps"], None, "a" * 64),
    ([], "15", "15"),
    ([], "", "''"),
    ([], "fifteen seconds", "fifteen seconds"),
])
def test_bad_pod_monitor_flags_are_refused_naming_the_flag_and_the_value(labels, interval, named):
    with pytest.raises(ValueError, match="--pod-monitor") as error:
        pod_monitor_settings(labels, interval)
    assert named in str(error.value)


def test_the_command_exits_with_a_usage_error_on_a_bad_label(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["-A", "--pod-monitor-label", "release"])
    assert exit_.value.code == 2
    assert "--pod-monitor-label 'release'" in capsys.readouterr().err
