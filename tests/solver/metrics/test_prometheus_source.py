from __future__ import annotations

import pytest

from melange.solver.errors import InputError
from melange.solver.metrics.prometheus_source import (PrometheusConfig, PrometheusSource, _independent, escape_label_value,
                                              label_matchers, parse_duration, read_bearer_token)


def test_label_values_cannot_end_the_string():
    assert escape_label_value('a"b\\c\nd') == 'a\\"b\\\\c\\nd'
    assert label_matchers({"model_name": 'x"} or vector(1) #'}) == 'model_name="x\\"} or vector(1) #"'


@pytest.mark.parametrize("name", ["bad-name", "1x", "__name__", 'a"'])
def test_bad_label_names_are_refused(name):
    with pytest.raises(InputError, match="label name"):
        label_matchers({name: "v"})


@pytest.mark.parametrize("text,seconds", [("30s", 30), ("10m", 600), ("1h", 3600), ("1.5m", 90), ("500ms", 0.5)])
def test_durations(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["10", "-5m", "0s", "5 minutes", "1y"])
def test_bad_durations(text):
    with pytest.raises(InputError, match="window"):
        parse_duration(text)


def test_bad_urls_and_windows():
    with pytest.raises(InputError, match="prometheus.url"):
        PrometheusSource(PrometheusConfig(url="localhost:9090"))
    with pytest.raises(InputError, match="prometheus.window"):
        PrometheusSource(PrometheusConfig(url="http://x:9090", window_s=0))


def test_bearer_token_from_file_and_env(tmp_path, monkeypatch):
    token = tmp_path / "token"
    token.write_text("secret\n")
    assert read_bearer_token(str(token)) == "secret"
    monkeypatch.setenv("PROM_TOKEN", "other")
    assert read_bearer_token(token_env="PROM_TOKEN") == "other"
    with pytest.raises(InputError, match="cannot read bearer token"):
        read_bearer_token(str(tmp_path / "missing"))


def test_independence_is_the_product_of_marginals():
    matrix, beyond = _independent(([30.0, 10.0], 0.0), ([20.0, 20.0], 0.0))
    assert matrix == [[15.0, 15.0], [5.0, 5.0]] and beyond == 0.0
