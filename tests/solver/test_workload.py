from __future__ import annotations

import json
import math

import pytest

from melange.solver.buckets import BucketGrid
from melange.solver.errors import InputError
from melange.solver.workload import (make_workload, rate_from_timestamps, read_trace, workload_from_dict,
                                     workload_from_trace)

GRID = BucketGrid((100, 1000), (50, 500))


def test_round_trip_through_dict():
    workload = make_workload(3.0, GRID, [[0.5, 0.25], [0.0, 0.25]], "w")
    assert workload_from_dict(workload.to_dict(), "w") == workload
    assert list(workload.bucket_rates()) == [(0, 0, 1.5), (0, 1, 0.75), (1, 1, 0.75)]
    assert workload.input_shares() == (0.75, 0.25)


@pytest.mark.parametrize("matrix,rate,where", [
    ([[0.5, 0.5], [0.5, 0.5]], 1.0, "w.distribution"),          # sums to 2
    ([[1.0, 0.0]], 1.0, "w.distribution"),                       # wrong shape
    ([[1.0, 0.0], [0.0]], 1.0, "w.distribution[1]"),              # ragged
    ([[1.5, -0.5], [0.0, 0.0]], 1.0, "w.distribution[0][1]"),     # negative
    ([[math.nan, 1.0], [0.0, 0.0]], 1.0, "w.distribution[0][0]"),  # NaN
    ([[1.0, 0.0], [0.0, 0.0]], -1.0, "w.rate"),
    ([[1.0, 0.0], [0.0, 0.0]], math.inf, "w.rate"),
    ([[1.0, 0.0], [0.0, 0.0]], "fast", "w.rate"),
])
def test_bad_workloads_name_the_field(matrix, rate, where):
    with pytest.raises(InputError) as error:
        make_workload(rate, GRID, matrix, "w")
    assert str(error.value).startswith(where)


def test_csv_trace_without_header(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("10,10\n10,20\n200,100\n5000,10\n")
    workload = workload_from_trace(read_trace(path), GRID, 2.0, str(path))
    assert workload.distribution == ((2 / 3, 0.0), (0.0, 1 / 3))
    assert any("dropped 1 of 4" in note for note in workload.notes)


def test_one_binned_request_is_one_request(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("10,10\n")
    notes = workload_from_trace(read_trace(path), GRID, 1.0, str(path)).notes
    assert f"binned 1 request from {path}" in notes
    path.write_text("10,10\n10,20\n")
    assert f"binned 2 requests from {path}" in workload_from_trace(read_trace(path), GRID, 1.0, str(path)).notes


def test_csv_trace_with_header_and_timestamps(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("timestamp,prompt_tokens,completion_tokens\n0,10,10\n1,20,20\n2,300,30\n4,30,30\n")
    requests = read_trace(path)
    assert requests[2].input_tokens == 300 and requests[2].timestamp == 2.0
    workload = workload_from_trace(requests, GRID, None, str(path))
    assert workload.rate == pytest.approx(3 / 4)
    assert workload.distribution[0][0] == pytest.approx(0.75)


def test_jsonl_trace(tmp_path):
    path = tmp_path / "t.jsonl"
    path.write_text("\n".join(json.dumps({"input_tokens": i, "output_tokens": o}) for i, o in [(1, 1), (500, 400)]))
    workload = workload_from_trace(read_trace(path), GRID, 1.0, str(path))
    assert workload.distribution == ((0.5, 0.0), (0.0, 0.5))


@pytest.mark.parametrize("content,suffix,where", [
    ("10,abc\n", ".csv", "t.csv:1 output"),
    ("10,-3\n", ".csv", "t.csv:1 output"),
    ("10\n", ".csv", "t.csv:1"),
    ("input_tokens,output_tokens\n1,2\n3\n", ".csv", "t.csv:3"),
    ('{"input_tokens": 1}\n', ".jsonl", "t.jsonl:1"),
    ("not json\n", ".jsonl", "t.jsonl:1"),
    ("", ".csv", "t.csv"),
])
def test_bad_traces_name_the_line(tmp_path, content, suffix, where):
    path = tmp_path / f"t{suffix}"
    path.write_text(content)
    with pytest.raises(InputError) as error:
        read_trace(path)
    assert str(error.value).startswith(str(tmp_path / where))


def test_trace_without_rate_or_timestamps_asks_for_rate(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("1,1\n2,2\n")
    with pytest.raises(InputError, match="--rate"):
        workload_from_trace(read_trace(path), GRID, None, str(path))


def test_trace_entirely_beyond_grid_is_an_error(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("5000,1\n")
    with pytest.raises(InputError, match="beyond the grid"):
        workload_from_trace(read_trace(path), GRID, 1.0, str(path))


def test_rate_from_timestamps_needs_all_timestamps():
    from melange.solver.workload import TraceRequest
    assert rate_from_timestamps([TraceRequest(1, 1, 0.0), TraceRequest(1, 1, None), TraceRequest(1, 1, 2.0)]) is None
    assert rate_from_timestamps([TraceRequest(1, 1, 0.0), TraceRequest(1, 1, 2.0)]) == pytest.approx(0.5)


@pytest.mark.parametrize("scale,unit", [(1, None), (1e3, "milliseconds"), (1e6, "microseconds"), (1e9, "nanoseconds")])
def test_epoch_timestamps_in_finer_units_are_recognised(tmp_path, scale, unit):
    """Five requests over 8 s since 2024-01-01 (epoch 1704067200 s): 0.5 req/s in every unit."""
    path = tmp_path / "t.csv"
    start = 1704067200
    path.write_text("timestamp,input_tokens,output_tokens\n"
                    + "".join(f"{(start + t) * scale:.0f},10,10\n" for t in (0, 2, 4, 6, 8)))
    workload = workload_from_trace(read_trace(path), GRID, None, str(path))
    assert workload.rate == pytest.approx(0.5)
    assert "5 requests over 8 s" in workload.rate_source
    assert (unit is None) == ("since the epoch" not in workload.rate_source)
    if unit:
        assert unit in workload.rate_source


def test_json_trace_is_read_as_json(tmp_path):
    path = tmp_path / "t.json"
    path.write_text(json.dumps([{"prompt_tokens": 10, "completion_tokens": 10, "timestamp": 0},
                                {"prompt_tokens": 500, "completion_tokens": 400, "timestamp": 4}], indent=2))
    workload = workload_from_trace(read_trace(path), GRID, None, str(path))
    assert workload.distribution == ((0.5, 0.0), (0.0, 0.5)) and workload.rate == pytest.approx(0.25)
    path.write_text(json.dumps({"input_tokens": 1, "output_tokens": 1}))
    with pytest.raises(InputError, match="expected a JSON list of request objects"):
        read_trace(path)


def test_rate_source_follows_the_rate():
    workload = make_workload(3.0, GRID, [[0.5, 0.25], [0.0, 0.25]], "w.yaml")
    assert workload.rate_source == "given in w.yaml.rate"
    assert workload.with_rate(1.0, "given by --rate").rate_source == "given by --rate"
