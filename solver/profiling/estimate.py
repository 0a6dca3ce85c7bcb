"""Estimated profiles: a profile for (model, GPU, tensor parallelism, SLO, grid) from the performance
model, in seconds and without a GPU. Each bucket is evaluated at its upper edges, as the Mélange
profiler sent fixed-size requests at the bucket labels, so the estimate is conservative within the
bucket. Where the upper edges exceed the model's context, the bucket is evaluated at its largest
request that fits (input first shortened, then output); a bucket whose smallest request does not
fit cannot be served.

A bucket of longer requests never gets a higher rate than a bucket of shorter ones: each rate is
capped by its neighbours with shorter inputs or outputs, and a bucket whose shorter neighbour
cannot be served cannot be served either. Two things could otherwise raise a rate: shortening to
the context, and the paper's TPOT (request latency / output tokens), under which a long prompt
with few output tokens misses the SLO at a rate the same prompt with more output meets. The cap
errs towards more GPUs, and keeps "a tighter SLO never raises a rate" true bucket by bucket."""
from __future__ import annotations

import datetime
from importlib import metadata

import numpy as np

from melange.solver.buckets import BucketGrid
from melange.solver.profiling.catalog import GpuSpec, ModelSpec
from melange.solver.errors import InputError
from melange.solver.profiling.perf_model import PerfConstants, Replica
from melange.solver.profiles import Profile, Slo

RATE_DECIMALS = 4  # req/s are kept to 0.1 milli-request per second


def tool_version() -> str:
    """The installed melange version, for provenance."""
    try:
        return metadata.version("melange-operator")
    except metadata.PackageNotFoundError:
        return "unknown"


def bucket_size(grid: BucketGrid, i: int, j: int, context_length: int) -> tuple[int, int] | None:
    """The request size that stands for bucket (i, j): its upper edges, shortened to fit the
    context; None when even its smallest request does not fit."""
    low_in = (grid.input_edges[i - 1] if i else 0) + 1
    low_out = (grid.output_edges[j - 1] if j else 0) + 1
    if low_in + low_out > context_length:
        return None
    inputs = min(grid.input_edges[i], max(low_in, context_length - grid.output_edges[j]))
    return inputs, min(grid.output_edges[j], context_length - inputs)


def does_not_fit(model: ModelSpec, gpu: GpuSpec, tensor_parallel: int, constants: PerfConstants) -> str:
    """Why a replica cannot hold the model, and the smallest tensor-parallel shape that would."""
    usable = tensor_parallel * (gpu.memory_gb * constants.gpu_memory_utilization - constants.reserved_memory_gb)
    shape = f"{tensor_parallel} x {gpu.name}" if tensor_parallel > 1 else gpu.name
    reason = (f"{model.name} needs {model.weight_bytes / 1e9:.0f} GB of weights; {shape} has "
              f"{tensor_parallel * gpu.memory_gb:g} GB ({usable:.0f} GB usable by vLLM), leaving no room for a KV cache")
    wider = [tp for tp in (2, 4, 8) if tp > tensor_parallel and model.attention_heads % tp == 0
             and Replica(gpu, model, tp, constants).fits]
    if not wider:
        return f"{reason}; no tensor-parallel shape up to 8 GPUs holds it"
    name = gpu.name.lower()
    return f"{reason}; try a tensor-parallel option such as {name}:{wider[0]} (--gpus {name}:{wider[0]} or --tp {wider[0]})"


def estimate_profile(model: ModelSpec, gpu: GpuSpec, slo: Slo, grid: BucketGrid, tensor_parallel: int = 1,
                     constants: PerfConstants = PerfConstants(), date: str | None = None) -> Profile:
    """The estimated profile; buckets the replica cannot serve within the SLO are None."""
    if slo.tpot_ms is None and slo.ttft_ms is None:
        raise InputError("slo", "no latency bound", "tpot_ms and/or ttft_ms")
    if slo.percentile is not None:
        raise InputError("slo.percentile", f"p{slo.percentile:g} cannot be estimated",
                         "the mean (leave percentile out); measure the server for percentiles")
    if tensor_parallel < 1:
        raise InputError("tensor_parallel", f"{tensor_parallel} GPUs per replica", "1 or more")
    if model.attention_heads % tensor_parallel:
        raise InputError("tensor_parallel", f"{tensor_parallel} does not divide the model's "
                         f"{model.attention_heads} attention heads", "a divisor of the attention heads")
    replica = Replica(gpu, model, tensor_parallel, constants)
    if not replica.fits:
        raise InputError(f"{gpu.name.lower()}" + (f":{tensor_parallel}" if tensor_parallel > 1 else ""),
                         does_not_fit(model, gpu, tensor_parallel, constants))
    sizes = [bucket_size(grid, i, j, model.context_length) for i in range(grid.shape[0]) for j in range(grid.shape[1])]
    inputs = np.array([size[0] if size else 1 for size in sizes], float)
    outputs = np.array([size[1] if size else 1 for size in sizes], float)
    rates = replica.max_rate(inputs, outputs, slo.tpot_s, slo.ttft_s)
    rates = np.where([size is not None for size in sizes], rates, 0.0).reshape(grid.shape)
    rates = np.minimum.accumulate(np.minimum.accumulate(rates, axis=0), axis=1)
    max_rps = tuple(tuple(round(float(r), RATE_DECIMALS) if round(float(r), RATE_DECIMALS) > 0 else None
                          for r in row) for row in rates)
    provenance = {"source": "estimated", "method": "roofline + continuous-batching model (melange.solver.profiling.perf_model)",
                  "tool_version": tool_version(), "date": date or datetime.date.today().isoformat(),
                  "gpu_spec": {"memory_gb": gpu.memory_gb, "bandwidth_gb_s": gpu.bandwidth_gb_s,
                               "fp16_tflops": gpu.fp16_tflops},
                  "constants": constants.to_dict(), "kv_cache_tokens": max(0, int(replica.kv_cache_tokens))}
    return Profile(model=model.name, gpu=gpu.name, grid=grid, max_rps=max_rps, slo=slo,
                   gpus_per_replica=tensor_parallel, provenance=provenance)
