"""A performance model of one vLLM replica: the highest request rate it sustains within a latency
SLO, for requests of a given input and output length, from GPU and model specs alone.

Costs are rooflines: a step takes the longer of reading its bytes (weights, KV cache) at the
achieved memory bandwidth and doing its FLOPs at the achieved compute rate, plus a fixed
scheduler overhead. Decode is memory-bound at small batches and prefill compute-bound (Splitwise,
Patel et al., ISCA 2024; DistServe, Zhong et al., OSDI 2024), which the roofline captures.

Serving is continuous batching as vLLM schedules it: a cycle is one decode step over the running
batch plus, when requests arrived during the previous cycle, one prefill step over all of them.
With Poisson arrivals at rate `lam` and cycle length T, a prefill step happens with probability
1 - exp(-lam T) and carries lam T / (1 - exp(-lam T)) requests; by Little's law the decode batch
is lam * O * T. CPU work per request (HTTP, tokenizing) holds up the engine loop for lam T times
its cost per cycle. The steady cycle length is the smallest T with
T = decode(lam O T) + P(prefill) * prefill(batch) + lam T * request cost. TPOT follows the Mélange paper: request latency
divided by output tokens, TTFT being half a cycle of waiting plus the prefill step. The batch is
bounded by vLLM's `max_num_seqs` and by the KV cache left after the weights.

Arrays in, arrays out: every function works on numpy arrays of request sizes at once.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np

from melange.solver.profiling.catalog import GpuSpec, ModelSpec

LOWEST_RATE = 1e-3  # req/s; below this a bucket counts as "cannot serve"
HIGHEST_RATE = 1e4
_CYCLE_GRID = np.geomspace(1e-4, 30.0, 64)  # candidate cycle lengths (s) bracketing the steady one
_REFINEMENTS = 3  # fixed-point steps from the bracketing grid point down towards the steady cycle


@dataclass(frozen=True)
class PerfConstants:
    """The model's free constants. Defaults are fitted by `bench/calibrate_profiles.py` to the
    Mélange authors' measured Llama-2-7B profiles (L4, A10G, A100, H100; vLLM 0.2.7); the bench
    prints them with the leave-one-GPU-out error. `melange profile measure --fit` refits them."""

    bandwidth_efficiency: float = 0.83  # share of peak memory bandwidth that weight/KV reads reach
    compute_efficiency: float = 0.67  # share of peak dense FP16 FLOPs that prefill reaches (MFU)
    step_overhead_ms: float = 6.3  # scheduler and kernel-launch time per engine step
    sequence_overhead_ms: float = 0.34  # CPU time per running sequence per step (sampling, detokenizing)
    request_overhead_ms: float = 5.5  # CPU time per request (HTTP, tokenizing) that holds up the engine loop
    gpu_memory_utilization: float = 0.9  # vLLM's default --gpu-memory-utilization
    # Assumed, not fitted: memory vLLM keeps outside the KV cache (activations, CUDA context and
    # graphs), and the latency of the two small all-reduces per layer under tensor parallelism (of
    # the order of 10 us each over NVLink). Neither moves the single-GPU calibration.
    reserved_memory_gb: float = 1.5
    max_num_seqs: int = 256  # vLLM's default --max-num-seqs
    allreduce_ms_per_layer: float = 0.02

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def with_values(self, **values: float) -> PerfConstants:
        return replace(self, **values)


FITTED_CONSTANTS = ("bandwidth_efficiency", "compute_efficiency", "step_overhead_ms", "sequence_overhead_ms",
                    "request_overhead_ms")


@dataclass(frozen=True)
class Replica:
    """What one replica can do: the model on `tensor_parallel` GPUs of one type."""

    gpu: GpuSpec
    model: ModelSpec
    tensor_parallel: int = 1
    constants: PerfConstants = PerfConstants()

    @property
    def kv_cache_tokens(self) -> float:
        """Tokens the KV cache holds once the weights and reserve are in memory (<= 0: does not fit)."""
        c = self.constants
        free = self.tensor_parallel * (self.gpu.memory_gb * c.gpu_memory_utilization - c.reserved_memory_gb) * 1e9
        return (free - self.model.weight_bytes) / self.model.kv_bytes_per_token

    @property
    def fits(self) -> bool:
        return self.kv_cache_tokens > 0

    def _rates(self) -> tuple[float, float, float]:
        c = self.constants
        bandwidth = self.tensor_parallel * self.gpu.bandwidth_gb_s * 1e9 * c.bandwidth_efficiency
        flops = self.tensor_parallel * self.gpu.fp16_tflops * 1e12 * c.compute_efficiency
        overhead = c.step_overhead_ms / 1e3
        if self.tensor_parallel > 1:
            overhead += self.model.layers * c.allreduce_ms_per_layer / 1e3
        return bandwidth, flops, overhead

    def decode_step_s(self, batch: np.ndarray, context: np.ndarray) -> np.ndarray:
        """One decode step over `batch` sequences of mean length `context`."""
        bandwidth, flops, overhead = self._rates()
        m = self.model
        attention_flops = 4 * m.layers * m.attention_heads * m.head_dim * context  # QK^T and AV, per token
        memory = (m.weight_bytes + batch * context * m.kv_bytes_per_token) / bandwidth
        compute = batch * (2 * m.active_parameters + attention_flops) / flops
        return np.maximum(memory, compute) + overhead + batch * self.constants.sequence_overhead_ms / 1e3

    def prefill_step_s(self, requests: np.ndarray, input_tokens: np.ndarray) -> np.ndarray:
        """One prefill step over `requests` prompts of `input_tokens` each."""
        bandwidth, flops, overhead = self._rates()
        m = self.model
        attention_flops = 2 * m.layers * m.attention_heads * m.head_dim * input_tokens ** 2  # causal
        compute = requests * (2 * m.active_parameters * input_tokens + attention_flops) / flops
        return (np.maximum(m.weight_bytes / bandwidth, compute) + overhead
                + requests * self.constants.sequence_overhead_ms / 1e3)

    def latencies(self, rate: np.ndarray, input_tokens: np.ndarray, output_tokens: np.ndarray
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Steady-state (mean TPOT s, mean TTFT s, decode batch) at Poisson `rate` req/s; inf where
        the replica cannot keep up."""
        inputs, outputs = input_tokens[..., None], output_tokens[..., None]
        lam = rate[..., None]

        def cycle_parts(cycle: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
            arrivals = lam * cycle
            p_prefill = -np.expm1(-arrivals)
            batch_prefill = np.where(p_prefill > 0, arrivals / np.maximum(p_prefill, 1e-300), 1.0)
            prefill = self.prefill_step_s(batch_prefill, inputs)
            batch = arrivals * outputs
            per_request = arrivals * self.constants.request_overhead_ms / 1e3
            return (self.decode_step_s(batch, inputs + outputs / 2) + p_prefill * prefill + per_request,
                    prefill, batch)

        busy, _, _ = cycle_parts(_CYCLE_GRID)
        steady = busy <= _CYCLE_GRID
        has_root = steady.any(axis=-1)
        first = np.argmax(steady, axis=-1)
        cycle = np.take_along_axis(busy, first[..., None], -1)  # busy(T) <= T: the steady cycle is below
        for _ in range(_REFINEMENTS):
            cycle, prefill, batch = cycle_parts(cycle)
        t, prefill, batch = cycle[..., 0], prefill[..., 0], batch[..., 0]
        ttft = t / 2 + prefill
        tpot = t + ttft / output_tokens
        infinite = np.full_like(t, np.inf)
        return (np.where(has_root, tpot, infinite), np.where(has_root, ttft, infinite),
                np.where(has_root, batch, infinite))

    def max_rate(self, input_tokens: np.ndarray, output_tokens: np.ndarray, tpot_s: float | None,
                 ttft_s: float | None) -> np.ndarray:
        """Highest Poisson rate (req/s) meeting the mean TPOT and TTFT bounds; 0 where none does
        (the request does not fit the context or the KV cache, or the SLO is below what one request
        alone gets)."""
        inputs = np.asarray(input_tokens, dtype=float)
        outputs = np.asarray(output_tokens, dtype=float)
        kv_tokens = self.kv_cache_tokens
        max_batch = np.minimum(self.constants.max_num_seqs, kv_tokens / (inputs + outputs / 2))
        servable = (inputs + outputs <= min(self.model.context_length, kv_tokens)) & (max_batch >= 1)

        def meets(rate: np.ndarray) -> np.ndarray:
            tpot, ttft, batch = self.latencies(rate, inputs, outputs)
            ok = np.isfinite(tpot) & (batch <= max_batch)
            if tpot_s is not None:
                ok &= tpot <= tpot_s
            if ttft_s is not None:
                ok &= ttft <= ttft_s
            return ok

        low = np.full(inputs.shape, LOWEST_RATE)
        high = np.full(inputs.shape, HIGHEST_RATE)
        possible = servable & meets(low)
        for _ in range(26):  # bisection on a log scale, to better than 0.01%
            middle = np.sqrt(low * high)
            ok = meets(middle)
            low = np.where(ok, middle, low)
            high = np.where(ok, high, middle)
        return np.where(possible, low, 0.0)
