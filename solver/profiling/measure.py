"""Measuring a profile on a live OpenAI-compatible server (vLLM; SGLang takes the same requests).

Per bucket, requests of exactly the bucket's upper-edge sizes (prompt as token ids, or text;
`min_tokens` + `ignore_eos` pin the output length) arrive as a Poisson process at a trial rate.
Each request streams, so time to first token and the whole latency are timed. The rate search
starts at what one request stream sustains, doubles until a trial misses the SLO, then bisects
until the passing and failing rates are within `precision`. A trial passes when every request
succeeded and the SLO statistic (mean, or a percentile) of TPOT (request latency / output tokens,
as the Mélange paper) and TTFT holds over the trial after its warm-up share, and its last third
stays within `TAIL_TOLERANCE` of the SLO too, so a queue that is still growing fails.

Progress goes to stderr; finished buckets are kept in a state file, so an interrupted run resumes.
"""
from __future__ import annotations

import asyncio
import datetime
import json
import math
import random
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np

from melange.solver.buckets import BucketGrid
from melange.solver.profiling.catalog import GpuSpec, ModelSpec
from melange.solver.errors import InputError, UnavailableError
from melange.solver.profiling.estimate import estimate_profile, tool_version
from melange.solver.profiling.perf_fit import Observation, fit_constants
from melange.solver.profiles import Profile, Slo

PROMPT_TOKEN_ID = 1000  # any id inside every supported vocabulary; repeated to the prompt length
TEXT_PROMPT_PIECE = " hi"  # about one token per repeat with Llama/Mistral/Qwen BPE tokenizers
# The last third of a trial is a third of the requests, so it is noisier than the whole: it may
# exceed the SLO by this share before the trial counts as a growing queue.
TAIL_TOLERANCE = 0.10


class MeasureError(UnavailableError):
    """The server could not be measured (unreachable, or answered nonsense)."""


@dataclass(frozen=True)
class MeasureConfig:
    """How to measure: where, under which SLO, on which grid, and how long each trial runs."""

    endpoint: str
    slo: Slo
    grid: BucketGrid
    served_model: str | None = None
    trial_seconds: float = 30.0
    min_requests: int = 20
    max_requests: int = 400
    precision: float = 0.05
    prompt: str = "tokens"
    seed: int = 0
    warmup_share: float = 0.2
    request_timeout_s: float = 900.0


@dataclass(frozen=True)
class RequestResult:
    """One request's outcome; times in seconds."""

    ok: bool
    ttft_s: float = math.inf
    latency_s: float = math.inf
    output_tokens: int = 0
    error: str = ""


@dataclass(frozen=True)
class TrialResult:
    """One trial at one rate, judged against the SLO."""

    rate: float
    requests: int
    failed: int
    tpot_s: float
    ttft_s: float
    meets: bool
    reason: str


def statistic(values: Sequence[float], percentile: float | None) -> float:
    """The mean, or the given percentile, of `values` (inf when empty)."""
    if not values:
        return math.inf
    return float(np.mean(values) if percentile is None else np.percentile(values, percentile))


def judge_trial(rate: float, results: Sequence[RequestResult], slo: Slo, warmup_share: float) -> TrialResult:
    """Whether a trial's requests, in arrival order, meet the SLO in steady state."""
    failed = [r for r in results if not r.ok]
    steady = list(results[int(len(results) * warmup_share):]) or list(results)
    tail = list(results[-max(1, len(results) // 3):])

    def stats(part: Sequence[RequestResult]) -> tuple[float, float]:
        good = [r for r in part if r.ok and r.output_tokens > 0]
        return (statistic([r.latency_s / r.output_tokens for r in good], slo.percentile),
                statistic([r.ttft_s for r in good], slo.percentile))

    tpot, ttft = stats(steady)
    tail_tpot, tail_ttft = stats(tail)
    reason = ""
    if failed:
        reason = f"{len(failed)} of {len(results)} requests failed: {failed[0].error}"
    elif slo.tpot_s is not None and (tpot > slo.tpot_s or tail_tpot > (1 + TAIL_TOLERANCE) * slo.tpot_s):
        reason = f"TPOT {1e3 * tpot:.1f} ms (last third {1e3 * tail_tpot:.1f} ms) > {slo.tpot_ms:g} ms"
    elif slo.ttft_s is not None and (ttft > slo.ttft_s or tail_ttft > (1 + TAIL_TOLERANCE) * slo.ttft_s):
        reason = f"TTFT {1e3 * ttft:.1f} ms (last third {1e3 * tail_ttft:.1f} ms) > {slo.ttft_ms:g} ms"
    return TrialResult(rate, len(results), len(failed), tpot, ttft, not reason, reason)


def trial_size(rate: float, config: MeasureConfig) -> int:
    """Requests in a trial at `rate`: about `trial_seconds` of arrivals, within the configured bounds."""
    return int(min(config.max_requests, max(config.min_requests, round(rate * config.trial_seconds))))


@dataclass
class RateSearch:
    """Doubling, then bisection on a log scale, for the highest passing rate."""

    start: float
    precision: float
    passed: float | None = None
    failed: float | None = None

    def next_rate(self) -> float | None:
        """The next rate to try, or None when the search is done."""
        if self.passed is None:
            if self.failed is None:
                return self.start
            if self.failed <= self.start / 64:
                return None  # even a trickle fails
            return self.failed / 2
        if self.failed is None:
            return self.passed * 2
        if self.failed / self.passed <= 1 + self.precision:
            return None
        return math.sqrt(self.passed * self.failed)

    def record(self, rate: float, meets: bool) -> None:
        if meets:
            self.passed = rate if self.passed is None else max(self.passed, rate)
        else:
            self.failed = rate if self.failed is None else min(self.failed, rate)


def completion_body(model: str, input_tokens: int, output_tokens: int, prompt: str) -> dict[str, Any]:
    """A streaming completion request of exactly these sizes."""
    return {"model": model,
            "prompt": [PROMPT_TOKEN_ID] * input_tokens if prompt == "tokens" else TEXT_PROMPT_PIECE * input_tokens,
            "max_tokens": output_tokens, "min_tokens": output_tokens, "ignore_eos": True, "temperature": 0.0,
            "stream": True, "stream_options": {"include_usage": True}}


async def send_request(session: aiohttp.ClientSession, url: str, body: dict[str, Any]) -> RequestResult:
    """Send one streaming completion; time its first token and its end."""
    started = time.perf_counter()
    first: float | None = None
    tokens = chunks = 0
    try:
        async with session.post(url, json=body) as response:
            if response.status != 200:
                return RequestResult(False, error=f"HTTP {response.status}: {(await response.text())[:200]}")
            async for line in response.content:
                if not line.startswith(b"data:") or line.strip() == b"data: [DONE]":
                    continue
                event = json.loads(line[5:])
                if event.get("choices") and any(c.get("text") is not None for c in event["choices"]):
                    chunks += 1
                    if first is None:
                        first = time.perf_counter()
                usage = event.get("usage")
                if isinstance(usage, dict) and isinstance(usage.get("completion_tokens"), int):
                    tokens = usage["completion_tokens"]
    except (aiohttp.ClientError, asyncio.TimeoutError, ValueError) as error:
        return RequestResult(False, error=f"{type(error).__name__}: {error}")
    end = time.perf_counter()
    if first is None:
        return RequestResult(False, error="the stream carried no tokens")
    return RequestResult(True, first - started, end - started, tokens or chunks)


def arrival_offsets(rate: float, count: int, rng: random.Random) -> list[float]:
    """Poisson arrival times, seconds from the trial's start (the first at 0)."""
    offsets, t = [], 0.0
    for _ in range(count):
        offsets.append(t)
        t += rng.expovariate(rate)
    return offsets


async def dispatch(offsets: Sequence[float], start: Callable[[], Awaitable[RequestResult]],
                   clock: Callable[[], float] | None = None,
                   sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep) -> list[RequestResult]:
    """Start one request at each offset from now, and wait for them all.

    Each start is due at an absolute time: a busy event loop wakes late from every sleep, and
    sleeping the gaps one after another would add those delays up, offering a lower rate than the
    trial is judged at (the measured capacity then overshoots). Late starts are caught up instead.
    """
    clock = clock or asyncio.get_running_loop().time
    began = clock()
    tasks = []
    for offset in offsets:
        delay = began + offset - clock()
        if delay > 0:
            await sleep(delay)
        tasks.append(asyncio.create_task(start()))
    return list(await asyncio.gather(*tasks))


async def run_trial(session: aiohttp.ClientSession, config: MeasureConfig, model: str, input_tokens: int,
                    output_tokens: int, rate: float, rng: random.Random) -> TrialResult:
    """Poisson arrivals at `rate` of fixed-size requests; judged once all have finished."""
    url = f"{config.endpoint}/v1/completions"
    body = completion_body(model, input_tokens, output_tokens, config.prompt)
    results = await dispatch(arrival_offsets(rate, trial_size(rate, config), rng),
                             lambda: send_request(session, url, body))
    return judge_trial(rate, results, config.slo, config.warmup_share)


Progress = Callable[[str], None]


async def measure_bucket(session: aiohttp.ClientSession, config: MeasureConfig, model: str, input_tokens: int,
                         output_tokens: int, rng: random.Random, progress: Progress) -> tuple[float | None, list[dict]]:
    """The highest passing rate for one request size (None: not even one request alone passes)."""
    url = f"{config.endpoint}/v1/completions"
    alone = await send_request(session, url, completion_body(model, input_tokens, output_tokens, config.prompt))
    single = judge_trial(0.0, [alone], config.slo, 0.0)
    trials = [asdict(single)]
    if not single.meets:
        progress(f"one request alone: {single.reason}: cannot serve")
        return None, trials
    search = RateSearch(start=1.0 / alone.latency_s, precision=config.precision)
    while (rate := search.next_rate()) is not None:
        trial = await run_trial(session, config, model, input_tokens, output_tokens, rate, rng)
        search.record(rate, trial.meets)
        trials.append(asdict(trial))
        progress(f"{rate:8.3f} req/s: " + ("ok" if trial.meets else "missed") +
                 f" (TPOT {1e3 * trial.tpot_s:.1f} ms, TTFT {1e3 * trial.ttft_s:.1f} ms)"
                 + (f" {trial.reason}" if trial.reason else ""))
    return search.passed, trials


@dataclass
class MeasureState:
    """What a run has finished, keyed by bucket, kept in a JSON file to resume from."""

    fingerprint: dict[str, Any]
    buckets: dict[str, dict[str, Any]] = field(default_factory=dict)

    @staticmethod
    def load(path: Path | None, fingerprint: dict[str, Any]) -> MeasureState:
        if path is None or not path.exists():
            return MeasureState(fingerprint)
        try:
            data = json.loads(path.read_text())
        except ValueError as error:
            raise InputError(str(path), f"state file is not JSON: {error}", "delete it to start over") from None
        if data.get("fingerprint") != fingerprint:
            raise InputError(str(path), "state file belongs to another measurement (endpoint, model, GPU, SLO or "
                             "grid differ)", "the same flags as the interrupted run, or another --state")
        return MeasureState(fingerprint, data.get("buckets", {}))

    def save(self, path: Path | None) -> None:
        if path is None:
            return
        partial = path.with_suffix(path.suffix + ".tmp")
        partial.write_text(json.dumps({"fingerprint": self.fingerprint, "buckets": self.buckets}, indent=1))
        partial.replace(path)


async def server_model(session: aiohttp.ClientSession, config: MeasureConfig) -> tuple[str, int | None]:
    """The model name to send and the server's max context (vLLM reports `max_model_len`)."""
    try:
        async with session.get(f"{config.endpoint}/v1/models") as response:
            data = await response.json(content_type=None)
    except (aiohttp.ClientError, asyncio.TimeoutError, ValueError) as error:
        raise MeasureError(f"{config.endpoint}/v1/models: {type(error).__name__}: {error}") from None
    models = data.get("data") if isinstance(data, dict) else None
    if not models:
        raise MeasureError(f"{config.endpoint}/v1/models lists no model")
    chosen = next((m for m in models if m.get("id") == config.served_model), None) if config.served_model else models[0]
    if chosen is None:
        raise InputError("--served-model", f"{config.served_model!r} is not served by {config.endpoint}",
                         ", ".join(str(m.get("id")) for m in models))
    length = chosen.get("max_model_len")
    return str(chosen["id"]), length if isinstance(length, int) else None


def fit_buckets(grid: BucketGrid) -> list[tuple[int, int]]:
    """The few buckets `--fit` measures: the corners and the middle of the grid."""
    rows, columns = grid.shape
    picks = [(0, 0), (0, columns - 1), (rows // 2, columns // 2), (rows - 1, 0), (rows // 2, 0), (0, columns // 2)]
    return sorted(set(picks))


def _bar(done: int, total: int, width: int = 24) -> str:
    filled = round(width * done / total) if total else width
    return "[" + "#" * filled + "-" * (width - filled) + f"] {done}/{total} buckets"


async def _measure(config: MeasureConfig, buckets: list[tuple[int, int]], state: MeasureState,
                   state_path: Path | None, progress: Progress) -> str:
    timeout = aiohttp.ClientTimeout(total=config.request_timeout_s, sock_connect=10)
    async with aiohttp.ClientSession(timeout=timeout, connector=aiohttp.TCPConnector(limit=0)) as session:
        model, max_len = await server_model(session, config)
        rng = random.Random(config.seed)
        for done, (i, j) in enumerate(buckets):
            key = f"{i},{j}"
            label = config.grid.label(i, j)
            if key in state.buckets:
                continue
            inputs, outputs = config.grid.input_edges[i], config.grid.output_edges[j]
            progress(f"{_bar(done, len(buckets))}  {label}: {inputs} in, {outputs} out")
            if max_len is not None and inputs + outputs > max_len:
                progress(f"{label}: {inputs + outputs} tokens exceed the server's max_model_len {max_len}")
                state.buckets[key] = {"max_rps": None, "trials": [], "reason": "exceeds max_model_len"}
            else:
                rate, trials = await measure_bucket(session, config, model, inputs, outputs, rng,
                                                    lambda text: progress(f"  {label} {text}"))
                state.buckets[key] = {"max_rps": rate, "trials": trials}
            state.save(state_path)
        progress(_bar(len(buckets), len(buckets)))
        return model


def measure_profile(config: MeasureConfig, model: ModelSpec, gpu: GpuSpec, tensor_parallel: int = 1,
                    state_path: Path | None = None, fit: bool = False,
                    progress: Progress = lambda text: print(text, file=sys.stderr, flush=True)) -> Profile:
    """A measured profile (or, with `fit`, an estimate fitted to a few measured buckets)."""
    grid = config.grid
    fingerprint = {"endpoint": config.endpoint, "model": model.name, "gpu": gpu.name, "tp": tensor_parallel,
                   "slo": config.slo.to_dict(), "grid": grid.to_dict(), "fit": fit, "prompt": config.prompt}
    state = MeasureState.load(state_path, fingerprint)
    rows, columns = grid.shape
    buckets = fit_buckets(grid) if fit else [(i, j) for i in range(rows) for j in range(columns)]
    served = asyncio.run(_measure(config, buckets, state, state_path, progress))
    measured = {tuple(map(int, key.split(","))): entry["max_rps"] for key, entry in state.buckets.items()}
    provenance: dict[str, Any] = {
        "endpoint": config.endpoint, "served_model": served, "date": datetime.date.today().isoformat(),
        "tool_version": tool_version(), "tpot_definition": "request latency / output tokens (Mélange paper)",
        "statistic": "mean" if config.slo.percentile is None else f"p{config.slo.percentile:g}",
        "trial_seconds": config.trial_seconds, "requests_per_trial": [config.min_requests, config.max_requests],
        "prompt": config.prompt}
    if fit:
        points = [(grid.input_edges[i], grid.output_edges[j], rate) for (i, j), rate in sorted(measured.items())
                  if rate]
        if not points:
            raise MeasureError("no measured bucket passed the SLO, nothing to fit to")
        inputs, outputs, rates = zip(*points)
        slo = config.slo
        constants = fit_constants([Observation(gpu, model, inputs, outputs, rates,
                                               slo.tpot_s, slo.ttft_s, tensor_parallel)])
        estimate = estimate_profile(model, gpu, Slo(slo.tpot_ms, slo.ttft_ms), grid, tensor_parallel, constants)
        provenance.update(estimate.provenance)
        provenance["method"] = "performance model fitted to measured buckets (melange profile measure --fit)"
        provenance["fitted_to"] = [{"input_tokens": i, "output_tokens": o, "max_rps": r} for i, o, r in points]
        return Profile(model.name, gpu.name, grid, estimate.max_rps, config.slo, tensor_parallel, provenance)
    max_rps = tuple(tuple(None if measured.get((i, j)) is None else round(measured[(i, j)], 4)
                          for j in range(columns)) for i in range(rows))
    return Profile(model.name, gpu.name, grid, max_rps, config.slo, tensor_parallel,
                   {"source": "measured", **provenance})
