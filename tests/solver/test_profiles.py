from __future__ import annotations

import pytest

from melange.solver.buckets import BucketGrid
from melange.solver.errors import InputError
from melange.solver.profiles import Profile, Slo, profile_from_dict, slo_from_dict

GRID = BucketGrid((100,), (50, 500))


def profile_dict(**overrides):
    data = {"model": "llama-2-7b", "gpu": "L4", "grid": GRID.to_dict(), "slo": {"tpot_ms": 120},
            "provenance": {"source": "measured", "date": "2024-02-22"}, "max_rps": [[2.5, None]]}
    data.update(overrides)
    return data


def test_round_trip_keeps_cannot_serve():
    profile = profile_from_dict(profile_dict(), "p")
    assert profile.max_rps == ((2.5, None),)
    assert profile.slo == Slo(tpot_ms=120)
    assert profile_from_dict(profile.to_dict(), "p") == profile


@pytest.mark.parametrize("overrides,where", [
    ({"max_rps": [[0, 1.0]]}, "p.max_rps[0][0]"),
    ({"max_rps": [[-1, 1.0]]}, "p.max_rps[0][0]"),
    ({"max_rps": [[float("nan"), 1.0]]}, "p.max_rps[0][0]"),
    ({"max_rps": [[1.0]]}, "p.max_rps[0]"),
    ({"max_rps": [[1.0, 1.0], [1.0, 1.0]]}, "p.max_rps"),
    ({"slo": {}}, "p.slo"),
    ({"slo": {"tpot_ms": -5}}, "p.slo.tpot_ms"),
    ({"provenance": {"source": "guessed"}}, "p.provenance.source"),
    ({"gpus_per_replica": 0}, "p.gpus_per_replica"),
    ({"model": ""}, "p.model"),
])
def test_bad_profiles_name_the_field(overrides, where):
    with pytest.raises(InputError) as error:
        profile_from_dict(profile_dict(**overrides), "p")
    assert str(error.value).startswith(where)


def test_zero_is_refused_with_a_hint_to_use_null():
    with pytest.raises(InputError, match="null for a bucket"):
        profile_from_dict(profile_dict(max_rps=[[0, 1.0]]), "p")


def test_slo_describes_itself():
    assert slo_from_dict({"tpot_ms": 40, "ttft_ms": 500, "percentile": 90}, "s").describe() == \
        "p90 TPOT <= 40 ms, p90 TTFT <= 500 ms"


def test_profile_source_defaults_to_unknown():
    assert Profile("m", "g", GRID, ((1.0, 1.0),)).source == "unknown"
