"""A traffic player for tests and demos: serves vLLM-named metrics (and optionally the router's joint
counter) for a synthetic stream of requests at a given rate and size mix, which can change over time.

    python -m melange.solver.metrics.traffic_player --port 8000 --rate 10 --mix chat --model-name demo
"""
from __future__ import annotations

import argparse
import random
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from melange.solver.buckets import BucketGrid
from melange.solver.checks import number
from melange.solver.command_line import OneLineParser, run_reporting_errors
from melange.solver.errors import InputError
from melange.solver.metrics.histograms import overlap_fraction
from melange.solver.metrics.metric_names import (MODEL_LABEL, POOL_LABEL, ROUTER_INPUT_LABEL, ROUTER_JOINT_REQUESTS,
                                         ROUTER_OUTPUT_LABEL, ROUTER_SIZE_EDGES, VLLM_GENERATION_TOKENS,
                                         VLLM_INTER_TOKEN, VLLM_PROMPT_TOKENS, VLLM_REQUEST_SUCCESS,
                                         VLLM_REQUEST_TPOT, VLLM_TTFT, VLLM_WAITING)


@dataclass(frozen=True)
class Shape:
    """A share of requests whose token counts are uniform over inclusive integer ranges."""

    weight: float
    input_tokens: tuple[int, int]
    output_tokens: tuple[int, int]


@dataclass(frozen=True)
class SizeMix:
    shapes: tuple[Shape, ...]

    def sample(self, rng: random.Random) -> tuple[int, int]:
        """One request's (input, output) token counts."""
        shape = rng.choices(self.shapes, weights=[s.weight for s in self.shapes])[0]
        return rng.randint(*shape.input_tokens), rng.randint(*shape.output_tokens)

    def distribution(self, grid: BucketGrid) -> list[list[float]]:
        """The exact share of requests per bucket of `grid` (the truth tests compare against)."""
        total = sum(s.weight for s in self.shapes)
        lows_in, lows_out = [0, *grid.input_edges[:-1]], [0, *grid.output_edges[:-1]]
        matrix = [[0.0] * len(grid.output_edges) for _ in grid.input_edges]
        for shape in self.shapes:
            (a, b), (c, d) = shape.input_tokens, shape.output_tokens
            for i, (lo, hi) in enumerate(zip(lows_in, grid.input_edges)):
                row = overlap_fraction(a - 1, b, lo, hi)
                for j, (lo2, hi2) in enumerate(zip(lows_out, grid.output_edges)):
                    matrix[i][j] += shape.weight / total * row * overlap_fraction(c - 1, d, lo2, hi2)
        return matrix


# Demo mixes: short chat turns, and long documents with short summaries.
CHAT = SizeMix((Shape(0.5, (10, 90), (10, 90)), Shape(0.3, (100, 400), (50, 240)), Shape(0.2, (500, 1800), (100, 480))))
DOCUMENTS = SizeMix((Shape(0.6, (2100, 3900), (120, 240)), Shape(0.4, (4100, 7900), (200, 480))))
MIXES = {"chat": CHAT, "documents": DOCUMENTS}


def vllm_token_buckets(max_model_len: int) -> list[int]:
    """vLLM's `build_1_2_5_buckets(max_model_len)`: 1, 2, 5, 10, 20, 50, ... <= max_model_len."""
    edges, base = [], 1
    while base <= max_model_len:
        edges += [base * m for m in (1, 2, 5) if base * m <= max_model_len]
        base *= 10
    return edges


# vLLM v1's latency histogram buckets (vllm/v1/metrics/loggers.py), seconds.
TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0,
                40.0, 80.0, 160.0, 640.0, 2560.0)
TPOT_BUCKETS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0,
                80.0)


class VllmMetrics:
    """The metric families a vLLM server (and the size-aware router) export, on one registry. `pool`:
    every vLLM series also carries `melange_ai_option=pool`, as a pool pod's series do once the
    service's PodMonitor has relabelled them."""

    def __init__(self, registry: CollectorRegistry, max_model_len: int = 32768, router: bool = False,
                 pool: str | None = None) -> None:
        buckets = vllm_token_buckets(max_model_len)
        self.pool = () if pool is None else (pool,)
        extra = [] if pool is None else [POOL_LABEL]
        self.success = Counter(f"vllm:{VLLM_REQUEST_SUCCESS.removesuffix('_total')}", "Finished requests.",
                               [MODEL_LABEL, "finished_reason", *extra], registry=registry)
        self.prompt = Histogram(f"vllm:{VLLM_PROMPT_TOKENS}", "Prompt tokens per request.", [MODEL_LABEL, *extra],
                                buckets=buckets, registry=registry)
        self.generation = Histogram(f"vllm:{VLLM_GENERATION_TOKENS}", "Generated tokens per request.",
                                    [MODEL_LABEL, *extra], buckets=buckets, registry=registry)
        self.ttft = Histogram(f"vllm:{VLLM_TTFT}", "Time to first token.", [MODEL_LABEL, *extra],
                              buckets=TTFT_BUCKETS, registry=registry)
        self.request_tpot = Histogram(f"vllm:{VLLM_REQUEST_TPOT}", "Mean time per output token of each request.",
                                      [MODEL_LABEL, *extra], buckets=TPOT_BUCKETS, registry=registry)
        self.inter_token = Histogram(f"vllm:{VLLM_INTER_TOKEN}", "Time between output tokens.", [MODEL_LABEL, *extra],
                                     buckets=TPOT_BUCKETS, registry=registry)
        self.waiting = Gauge(f"vllm:{VLLM_WAITING}", "Requests waiting to be scheduled.", [MODEL_LABEL, *extra],
                             registry=registry)
        self.router = Counter(ROUTER_JOINT_REQUESTS.removesuffix("_total"), "Requests by size.",
                              [MODEL_LABEL, ROUTER_INPUT_LABEL, ROUTER_OUTPUT_LABEL], registry=registry) \
            if router else None

    def record(self, model_name: str, input_tokens: int, output_tokens: int, tpot_s: float | None = None,
               ttft_s: float | None = None) -> None:
        """Count one finished request, as vLLM (and the router) would; with its latency when given. Its
        output tokens' intervals are all `tpot_s`, so the inter-token histogram (one observation per
        token in vLLM) gets one observation per request here: the same mean, far fewer calls."""
        self.success.labels(model_name, "length", *self.pool).inc()
        self.prompt.labels(model_name, *self.pool).observe(input_tokens)
        self.generation.labels(model_name, *self.pool).observe(output_tokens)
        if ttft_s is not None:
            self.ttft.labels(model_name, *self.pool).observe(ttft_s)
        if tpot_s is not None:
            self.request_tpot.labels(model_name, *self.pool).observe(tpot_s)
            self.inter_token.labels(model_name, *self.pool).observe(tpot_s)
        if self.router is not None:
            self.router.labels(model_name, _cell(input_tokens), _cell(output_tokens)).inc()

    def set_waiting(self, model_name: str, waiting: float) -> None:
        self.waiting.labels(model_name, *self.pool).set(waiting)


def _cell(tokens: int) -> str:
    for edge in ROUTER_SIZE_EDGES:
        if tokens <= edge:
            return str(edge)
    return "+Inf"


class Stream(threading.Thread):
    """Plays requests of one model at `rate` req/s with `mix` until stopped; `set_mix`/`set_rate`
    change the traffic on the fly. Arrivals are Poisson, or evenly spaced with `poisson=False`."""

    def __init__(self, metrics: VllmMetrics, model_name: str, rate: float, mix: SizeMix, seed: int = 0,
                 poisson: bool = True, latency: Callable[[random.Random], tuple[float, float]] | None = None) -> None:
        super().__init__(daemon=True)
        self.metrics, self.model_name, self.rate, self.mix = metrics, model_name, rate, mix
        self.latency = latency  # (TPOT s, TTFT s) of each request, drawn with the stream's generator
        self.poisson = poisson
        self.played = 0
        self._rng = random.Random(seed)
        self._stop = threading.Event()

    def set_mix(self, mix: SizeMix) -> None:
        self.mix = mix

    def set_rate(self, rate: float) -> None:
        self.rate = rate

    def stop(self) -> None:
        self._stop.set()

    def run(self) -> None:
        due = time.monotonic()
        while not self._stop.is_set():
            if self.rate <= 0:
                self._stop.wait(0.1)
                due = time.monotonic()
                continue
            due += self._rng.expovariate(self.rate) if self.poisson else 1.0 / self.rate
            delay = due - time.monotonic()
            if delay > 0 and self._stop.wait(delay):
                break
            if self.latency is None:
                self.metrics.record(self.model_name, *self.mix.sample(self._rng))
            else:
                tpot, ttft = self.latency(self._rng)
                self.metrics.record(self.model_name, *self.mix.sample(self._rng), tpot_s=tpot, ttft_s=ttft)
            self.played += 1


def main(argv: Sequence[str] | None = None) -> int:
    """Serve metrics for a synthetic stream until interrupted; bad flags are one line and exit 2."""
    parser = OneLineParser(prog="python -m melange.solver.metrics.traffic_player",
                           description="Serve vLLM-named Prometheus metrics for synthetic traffic (Poisson arrivals "
                                       "with a size mix that can change over time), for demos and tests.")
    parser.add_argument("--port", type=int, default=8000, help="port to serve /metrics on")
    parser.add_argument("--address", default="127.0.0.1", help="address to listen on")
    parser.add_argument("--rate", type=float, default=5.0, help="request rate, req/s")
    parser.add_argument("--mix", choices=sorted(MIXES), default="chat", help="size mix of the requests")
    parser.add_argument("--then", choices=sorted(MIXES), help="switch to this mix after --switch-after seconds "
                                                              "(default: keep --mix)")
    parser.add_argument("--switch-after", type=float, default=300.0, help="seconds before switching to --then")
    parser.add_argument("--model-name", default="demo", help="model_name label of the metrics")
    parser.add_argument("--router-metrics", action="store_true", help="also export the router's joint counter")
    args = parser.parse_args(argv)
    return run_reporting_errors(parser.prog, lambda: _play(args))


def _play(args: argparse.Namespace) -> None:
    number(args.rate, "--rate", minimum=0)
    number(args.switch_after, "--switch-after", minimum=0)
    if not 0 < args.port < 65536:
        raise InputError("--port", f"{args.port} is not a port", "1-65535")
    registry = CollectorRegistry()
    metrics = VllmMetrics(registry, router=args.router_metrics)
    try:
        start_http_server(args.port, addr=args.address, registry=registry)
    except OSError as error:
        raise InputError("--port", f"cannot listen on {args.address}:{args.port}: {error.strerror}",
                         "a free port and a local address") from None
    stream = Stream(metrics, args.model_name, args.rate, MIXES[args.mix])
    stream.start()
    print(f"serving http://{args.address}:{args.port}/metrics: {args.rate:g} req/s of {args.mix}", flush=True)
    try:
        if args.then:
            time.sleep(args.switch_after)
            stream.set_mix(MIXES[args.then])
            print(f"switched to {args.then}", flush=True)
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        stream.stop()


if __name__ == "__main__":
    sys.exit(main())
