"""The workload: a total request rate and its distribution over the bucket grid.

Loaded from YAML, or binned from a request trace (CSV, JSONL or JSON of input/output token counts,
optionally with arrival timestamps in seconds).
"""
from __future__ import annotations

import csv
import json
import math
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from melange.solver.buckets import BucketGrid, grid_from_dict
from melange.solver.checks import number, read_text, require_keys, require_mapping, sequence
from melange.solver.errors import InputError

# Shares are accepted when they sum to 1 within this tolerance, then renormalised exactly.
SHARE_SUM_TOLERANCE = 1e-3


@dataclass(frozen=True)
class Workload:
    """Total rate (req/s) and the share of requests in each bucket, `distribution[input][output]`.

    `notes` carries facts a reader of the result must know (dropped requests, assumptions);
    `rate_source` says where the rate came from (a file's field, a flag, a trace's timestamps,
    Prometheus), as the answer depends on it.
    """

    rate: float
    grid: BucketGrid
    distribution: tuple[tuple[float, ...], ...]
    notes: tuple[str, ...] = field(default=())
    rate_source: str = field(default="given", compare=False)

    def bucket_rates(self) -> Iterator[tuple[int, int, float]]:
        """(input bucket, output bucket, req/s) for every bucket with traffic."""
        for i, row in enumerate(self.distribution):
            for j, share in enumerate(row):
                if share > 0:
                    yield i, j, self.rate * share

    def input_shares(self) -> tuple[float, ...]:
        """Share of requests per input bucket (the output dimension summed out)."""
        return tuple(sum(row) for row in self.distribution)

    def with_rate(self, rate: float, source: str = "given") -> Workload:
        """The same mix at another total rate; `source` names where that rate came from."""
        return Workload(number(rate, source, minimum=0), self.grid, self.distribution, self.notes, source)

    def to_dict(self) -> dict[str, Any]:
        """The YAML form read back by `workload_from_dict`."""
        return {"rate": self.rate, "grid": self.grid.to_dict(),
                "distribution": [list(row) for row in self.distribution]}


def make_workload(rate: float, grid: BucketGrid, matrix: Any, where: str, notes: Iterable[str] = (),
                  rate_source: str | None = None) -> Workload:
    """Validate a share matrix against the grid and build a workload.

    The matrix must be non-negative, finite, shaped like the grid and sum to 1 (within 0.1%). The
    rate's source defaults to `where`'s rate field.
    """
    rate = number(rate, f"{where}.rate", minimum=0)
    rows, columns = grid.shape
    checked = []
    for i, row in enumerate(sequence(matrix, f"{where}.distribution", length=rows)):
        cells = sequence(row, f"{where}.distribution[{i}]", length=columns)
        checked.append([number(v, f"{where}.distribution[{i}][{j}]", minimum=0) for j, v in enumerate(cells)])
    total = sum(map(sum, checked))
    if abs(total - 1.0) > SHARE_SUM_TOLERANCE:
        raise InputError(f"{where}.distribution", f"shares sum to {total:.6g}", "a sum of 1 within 0.001")
    return Workload(rate, grid, tuple(tuple(v / total for v in row) for row in checked), tuple(notes),
                    rate_source or f"given in {where}.rate")


def workload_from_dict(data: Any, where: str) -> Workload:
    """Read `{rate, grid: {input_edges, output_edges}, distribution: [[...]]}`."""
    mapping: Mapping[str, Any] = require_mapping(data, where)
    require_keys(mapping, where, ["rate", "grid", "distribution"], ["notes"])
    grid = grid_from_dict(mapping["grid"], f"{where}.grid")
    return make_workload(mapping["rate"], grid, mapping["distribution"], where)


@dataclass(frozen=True)
class TraceRequest:
    """One request of a trace: token counts and, when the trace has them, its arrival time (s)."""

    input_tokens: int
    output_tokens: int
    timestamp: float | None = None


_INPUT_NAMES = ("input_tokens", "prompt_tokens", "input_len", "input")
_OUTPUT_NAMES = ("output_tokens", "completion_tokens", "generation_tokens", "output_len", "output")
_TIME_NAMES = ("timestamp", "time", "arrival_time")


def _token_count(value: Any, where: str) -> int:
    try:
        count = float(value)
    except (TypeError, ValueError):
        raise InputError(where, f"expected a token count, got {value!r}") from None
    if not math.isfinite(count) or count < 0 or not count.is_integer():
        raise InputError(where, f"expected a non-negative integer token count, got {value!r}")
    return int(count)


def _timestamp(value: Any, where: str) -> float | None:
    if value in (None, ""):
        return None
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        raise InputError(where, f"expected a timestamp in seconds, got {value!r}") from None
    if not math.isfinite(seconds):
        raise InputError(where, f"expected a finite timestamp, got {value!r}")
    return seconds


def _pick(names: tuple[str, ...], keys: Iterable[str]) -> str | None:
    lowered = {k.strip().lower(): k for k in keys}
    return next((lowered[n] for n in names if n in lowered), None)


TRACE_COLUMNS = (f"input ({', '.join(_INPUT_NAMES)}), output ({', '.join(_OUTPUT_NAMES)}), "
                 f"optional arrival time in seconds ({', '.join(_TIME_NAMES)})")


def read_trace(path: Path) -> list[TraceRequest]:
    """Read a trace: CSV (header with input/output[/timestamp] columns, or none: input,output[,timestamp]),
    JSONL (one object per line) or JSON (a list of objects); objects use the same names as CSV
    headers (input_tokens/output_tokens, prompt_tokens/completion_tokens, ...)."""
    return parse_trace(read_text(path, "trace"), str(path), path.suffix.lower())


def parse_trace(content: str, where: str, suffix: str) -> list[TraceRequest]:
    """Read a trace's text in the format its file suffix names (.jsonl/.ndjson, .json, else CSV);
    `where` names it in errors."""
    suffix = suffix.lower()
    if suffix in (".jsonl", ".ndjson"):
        requests = list(_jsonl_requests(content, where))
    elif suffix == ".json":
        requests = list(_json_requests(content, where))
    else:
        requests = list(_csv_requests(content, where))
    if not requests:
        raise InputError(where, "trace holds no requests")
    return requests


def _jsonl_requests(content: str, where: str) -> Iterator[TraceRequest]:
    for line_number, line in enumerate(content.splitlines(), start=1):
        if not line.strip():
            continue
        here = f"{where}:{line_number}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise InputError(here, f"not valid JSON ({error.msg})") from None
        yield _record_request(record, here)


def _json_requests(content: str, where: str) -> Iterator[TraceRequest]:
    try:
        records = json.loads(content)
    except json.JSONDecodeError as error:
        raise InputError(f"{where}:{error.lineno}", f"not valid JSON ({error.msg})",
                         "a JSON list of request objects (or a .jsonl file, one object per line)") from None
    if not isinstance(records, list):
        raise InputError(where, f"expected a JSON list of request objects, got {type(records).__name__}",
                         "[{\"input_tokens\": 120, \"output_tokens\": 80}, ...]")
    for k, record in enumerate(records):
        yield _record_request(record, f"{where}[{k}]")


def _record_request(record: Any, here: str) -> TraceRequest:
    record = require_mapping(record, here)
    input_key, output_key = _pick(_INPUT_NAMES, record), _pick(_OUTPUT_NAMES, record)
    if input_key is None or output_key is None:
        raise InputError(here, "missing token counts", f"keys {_INPUT_NAMES[0]} and {_OUTPUT_NAMES[0]}")
    time_key = _pick(_TIME_NAMES, record)
    return TraceRequest(_token_count(record[input_key], f"{here}.{input_key}"),
                        _token_count(record[output_key], f"{here}.{output_key}"),
                        _timestamp(record.get(time_key) if time_key else None, f"{here}.{time_key}"))


def _csv_requests(content: str, where: str) -> Iterator[TraceRequest]:
    rows = [row for row in csv.reader(content.splitlines()) if row and any(cell.strip() for cell in row)]
    if not rows:
        return
    header = rows[0]
    input_key, output_key = _pick(_INPUT_NAMES, header), _pick(_OUTPUT_NAMES, header)
    if input_key is not None and output_key is not None:
        positions = [header.index(input_key), header.index(output_key)]
        time_key = _pick(_TIME_NAMES, header)
        positions.append(header.index(time_key) if time_key else -1)
        body, first_line = rows[1:], 2
    else:
        if len(header) < 2:
            raise InputError(f"{where}:1", "expected at least two columns", TRACE_COLUMNS)
        positions, body, first_line = [0, 1, 2 if len(header) > 2 else -1], rows, 1
    for offset, row in enumerate(body):
        here = f"{where}:{first_line + offset}"
        if len(row) <= max(positions[0], positions[1]):
            raise InputError(here, f"has {len(row)} columns, expected at least {max(positions[:2]) + 1}")
        time_value = row[positions[2]] if 0 <= positions[2] < len(row) else None
        yield TraceRequest(_token_count(row[positions[0]].strip(), f"{here} input"),
                           _token_count(row[positions[1]].strip(), f"{here} output"),
                           _timestamp(time_value.strip() if time_value else None, f"{here} timestamp"))


# Timestamps are seconds. An epoch in seconds past 1e11 would be after the year 5000, so larger
# values are epochs in a finer unit: milliseconds (JavaScript, Java), microseconds or nanoseconds
# (Go, Prometheus exports). Relative times in a finer unit cannot be told apart and must be seconds.
_EPOCH_UNITS = ((1e17, 1e-9, "nanoseconds"), (1e14, 1e-6, "microseconds"), (1e11, 1e-3, "milliseconds"))


@dataclass(frozen=True)
class TraceSpan:
    """The arrivals a trace's timestamps describe: requests over seconds, and the unit they were read in."""

    requests: int
    seconds: float
    unit: str

    @property
    def rate(self) -> float:
        return (self.requests - 1) / self.seconds


def timestamp_span(requests: list[TraceRequest]) -> TraceSpan | None:
    """The trace's time span, or None when it has no usable timestamps (missing on some request,
    fewer than two, or all equal). Epoch timestamps in ms, us or ns are recognised by magnitude."""
    times = [r.timestamp for r in requests if r.timestamp is not None]
    if len(times) < 2 or len(times) != len(requests):
        return None
    scale, unit = next(((s, u) for bound, s, u in _EPOCH_UNITS if min(times) > bound), (1.0, "seconds"))
    span = (max(times) - min(times)) * scale
    return TraceSpan(len(times), span, unit) if span > 0 else None


def rate_from_timestamps(requests: list[TraceRequest]) -> float | None:
    """Mean arrival rate over the trace's time span, or None when it has no (usable) timestamps."""
    span = timestamp_span(requests)
    return None if span is None else span.rate


def workload_from_trace(requests: list[TraceRequest], grid: BucketGrid, rate: float | None, where: str,
                        rate_source: str | None = None) -> Workload:
    """Bin a trace onto the grid. Requests beyond the grid's last edges cannot be profiled: they are
    dropped and the share dropped is stated in the workload's notes. Without `rate`, the trace's
    timestamps give it (and `rate_source` says so)."""
    if rate is None:
        span = timestamp_span(requests)
        if span is None:
            raise InputError(where, "no request rate: the trace has no usable timestamps (a timestamp column in "
                                    "seconds on every row, not all equal)", "give a rate (--rate)")
        rate = span.rate
        unit = "" if span.unit == "seconds" else f", read as {span.unit} since the epoch"
        rate_source = (f"from the timestamps of {where} ({span.requests} requests over {span.seconds:.6g} s"
                       f"{unit})")
    counts = [[0] * grid.shape[1] for _ in range(grid.shape[0])]
    dropped = 0
    for request in requests:
        i, j = grid.input_bucket(request.input_tokens), grid.output_bucket(request.output_tokens)
        if i is None or j is None:
            dropped += 1
        else:
            counts[i][j] += 1
    kept = len(requests) - dropped
    if kept == 0:
        raise InputError(where, f"all {len(requests)} requests lie beyond the grid "
                                f"(input > {grid.input_edges[-1]} or output > {grid.output_edges[-1]} tokens)")
    notes = [f"binned {kept} request{'' if kept == 1 else 's'} from {where}"]
    if dropped:
        notes.append(f"dropped {dropped} of {len(requests)} requests ({100 * dropped / len(requests):.2f}%) "
                     f"beyond the grid (input > {grid.input_edges[-1]} or output > {grid.output_edges[-1]} tokens)")
    matrix = [[c / kept for c in row] for row in counts]
    return make_workload(rate, grid, matrix, where, notes, rate_source or f"given for {where}")
