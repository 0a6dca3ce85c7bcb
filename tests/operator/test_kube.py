"""The Kubernetes client shell's pure parts: retries and timeouts of a call, errors in words, why a
pod is not ready. (Its calls against a real API server are in tests/cluster.)"""
from __future__ import annotations

import json

import pytest
from kubernetes.client.rest import ApiException
from urllib3.exceptions import ReadTimeoutError

from melange.operator import kube
from melange.operator.kube import call, describe_error, pod_problem


class Flaky:
    """Fails with the given errors, then answers."""

    def __init__(self, *errors: BaseException) -> None:
        self.errors = list(errors)
        self.calls: list[dict] = []

    def __call__(self, *args, **kwargs):
        self.calls.append(kwargs)
        if self.errors:
            raise self.errors.pop(0)
        return "answer"


@pytest.fixture(autouse=True)
def no_sleep(monkeypatch):
    monkeypatch.setattr(kube.time, "sleep", lambda s: None)


def test_conflicts_throttling_server_errors_and_timeouts_are_retried_with_a_timeout_on_every_try():
    method = Flaky(ApiException(status=409), ApiException(status=429), ReadTimeoutError(None, "/", "read timed out"))
    assert call(method, "name", field_manager="m") == "answer"
    assert len(method.calls) == 4
    assert all(c["_request_timeout"] == kube.REQUEST_TIMEOUT_S and c["field_manager"] == "m" for c in method.calls)


@pytest.mark.parametrize("status", [400, 403, 404, 422])
def test_a_refusal_is_not_retried(status):
    method = Flaky(ApiException(status=status))
    with pytest.raises(ApiException):
        call(method)
    assert len(method.calls) == 1


def test_retries_end():
    method = Flaky(*[ApiException(status=503)] * kube.ATTEMPTS)
    with pytest.raises(ApiException):
        call(method)
    assert len(method.calls) == kube.ATTEMPTS


def test_an_api_error_in_words_is_the_servers_message():
    error = ApiException(status=403, reason="Forbidden")
    error.body = json.dumps({"kind": "Status", "message": 'deployments.apps "x" is forbidden: exceeded quota: two'})
    assert describe_error(error) == ("Forbidden", '403 deployments.apps "x" is forbidden: exceeded quota: two')
    assert describe_error(ApiException(status=500, reason="Internal"))[0] == "APIError"


def test_why_a_pod_is_not_ready():
    unscheduled = {"status": {"conditions": [{"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                                              "message": "0/6 nodes are available: 6 Insufficient nvidia.com/gpu."}]}}
    assert pod_problem(unscheduled) == "0/6 nodes are available: 6 Insufficient nvidia.com/gpu."
    pulling = {"status": {"conditions": [{"type": "PodScheduled", "status": "True"},
                                         {"type": "Ready", "status": "False"}],
                          "containerStatuses": [{"name": "vllm", "state": {"waiting": {
                              "reason": "ImagePullBackOff", "message": "Back-off pulling image"}}}]}}
    assert pod_problem(pulling) == "container vllm: ImagePullBackOff: Back-off pulling image"
    starting = {"status": {"conditions": [{"type": "PodScheduled", "status": "True"}],
                           "containerStatuses": [{"name": "vllm", "state": {"waiting": {"reason": "ContainerCreating"}}}]}}
    assert pod_problem(starting) is None
    ready = {"status": {"conditions": [{"type": "Ready", "status": "True"}]}}
    assert pod_problem(ready) is None


def test_a_secret_the_operator_may_not_read_is_refused_naming_the_chart_value():
    """The chart grants `get secrets` only with secrets.read (for a spec's Prometheus token reference):
    the 403 says which Secret, which field wants it and what to set."""
    from types import SimpleNamespace

    from melange.operator.core.spec import KeyRef

    body = json.dumps({"kind": "Status", "message": 'secrets "prom" is forbidden: User "system:serviceaccount:'
                                                    'melange-system:melange-operator" cannot get resource "secrets"'})
    refusal = ApiException(status=403, reason="Forbidden")
    refusal.body = body
    cluster = kube.Cluster.__new__(kube.Cluster)
    cluster.core = SimpleNamespace(read_namespaced_secret=Flaky(refusal))
    with pytest.raises(Exception) as error:
        cluster.read_secret("team-a", KeyRef("prom", "token"))
    reason, message = describe_error(error.value)
    assert reason == "Forbidden"
    assert "secrets.read=true" in message and "prom" in message and "team-a" in message
    assert "bearerTokenSecretRef" in message and "cannot get resource" in message
