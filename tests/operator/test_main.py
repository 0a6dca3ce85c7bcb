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


def _no_kopf_run(*_args, **_kwargs):
    raise AssertionError("kopf.run was reached without a Kubernetes connection")


@pytest.mark.parametrize("kubeconfig", ["missing", "unset"])
def test_without_a_cluster_the_operator_says_what_it_looked_for_and_exits_2(kubeconfig, tmp_path, monkeypatch,
                                                                            capsys):
    """No service account (not in a pod) and no kubeconfig file: one line naming both places, exit 2,
    before kopf starts (which would print two chained tracebacks and retry every minute)."""
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.delenv("KUBERNETES_SERVICE_PORT", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.kube/config there
    missing = tmp_path / "nowhere" / "kubeconfig"
    if kubeconfig == "missing":
        monkeypatch.setenv("KUBECONFIG", str(missing))
        looked_for = str(missing)
    else:
        monkeypatch.delenv("KUBECONFIG", raising=False)
        looked_for = str(tmp_path / ".kube" / "config")
    monkeypatch.setattr("kopf.run", _no_kopf_run)
    with pytest.raises(SystemExit) as exit_:
        main(["-A", "--metrics-port", "0"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert looked_for in err and "KUBECONFIG" in err and "service account" in err, err


def test_a_kubeconfig_that_is_not_one_is_named_in_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    broken = tmp_path / "kubeconfig"
    broken.write_text("apiVersion: v1\nkind: Config\nclusters: []\ncontexts: []\nusers: []\n")  # no context
    monkeypatch.setenv("KUBECONFIG", str(broken))
    monkeypatch.setattr("kopf.run", _no_kopf_run)
    with pytest.raises(SystemExit) as exit_:
        main(["-A", "--metrics-port", "0"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(broken) in err, err
