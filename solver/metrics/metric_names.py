"""Every Prometheus metric name and label the project reads or writes, in one place.

vLLM names were checked against vLLM's source: the v0 engine (`vllm/engine/metrics.py`) and the v1
engine (`vllm/v1/metrics/loggers.py`) both export, per `model_name`:
  - `vllm:request_success_total` (counter, with `finished_reason`; v1 adds `engine`),
  - `vllm:request_prompt_tokens` and `vllm:request_generation_tokens` (histograms whose buckets are
    `build_1_2_5_buckets(max_model_len)`: 1, 2, 5, 10, 20, 50, ... up to max_model_len).
Under OpenMetrics negotiation newer prometheus_client versions expose `vllm_` instead of `vllm:`,
so queries match both spellings.
"""
from __future__ import annotations

VLLM_PREFIXES = ("vllm:", "vllm_")
# Fewer requests than this in the window: the observed size mix is flagged as untrustworthy.
DEFAULT_MIN_REQUESTS = 200
VLLM_REQUEST_SUCCESS = "request_success_total"
VLLM_PROMPT_TOKENS = "request_prompt_tokens"
VLLM_GENERATION_TOKENS = "request_generation_tokens"
MODEL_LABEL = "model_name"

# Latency and load, per `model_name` (vLLM v1 `vllm/v1/metrics/loggers.py`): histograms of each
# request's time to first token and of its mean time per output token (the paper's TPOT: one
# observation per request), the per-token inter-token latency (v1; it replaced v0's
# `time_per_output_token_seconds`, kept here for older servers), and the gauge of requests waiting.
# TPOT is read from the first of VLLM_TPOT_HISTOGRAMS with data.
VLLM_TTFT = "time_to_first_token_seconds"
VLLM_REQUEST_TPOT = "request_time_per_output_token_seconds"
VLLM_INTER_TOKEN = "inter_token_latency_seconds"
VLLM_TPOT_V0 = "time_per_output_token_seconds"
VLLM_TPOT_HISTOGRAMS = (VLLM_REQUEST_TPOT, VLLM_INTER_TOKEN, VLLM_TPOT_V0)
VLLM_WAITING = "num_requests_waiting"
# The label each scraped pool pod carries with its GPU option (the PodMonitor's relabeling of the
# pod label melange.ai/option; operator/core/planner.py), which selects one pool's series.
POOL_LABEL = "melange_ai_option"

# The size-aware router's joint counter: requests by (input tokens, output tokens), one series per
# cell (input_le, output_le), where a cell holds requests with tokens in (previous edge, le] on
# each axis ("+Inf" beyond the last edge). It carries `model_name` like vLLM's metrics.
ROUTER_JOINT_REQUESTS = "melange_router_requests_by_size_total"
ROUTER_INPUT_LABEL = "input_le"
ROUTER_OUTPUT_LABEL = "output_le"


def _router_edges() -> tuple[int, ...]:
    """Fine edges for the router's joint counter: vLLM's 1-2-5 ladder, powers of two, and the Mélange
    paper's bucket edges, so the usual solver grids rebin exactly."""
    ladder = {m * 10 ** e for e in range(6) for m in (1, 2, 5)}
    powers = {2 ** k for k in range(4, 18)}
    paper = {25, 100, 250, 500, 1000, 2000, 4000, 8000, 12000, 16000}
    return tuple(sorted(e for e in ladder | powers | paper if e <= 200_000))


ROUTER_SIZE_EDGES = _router_edges()


def vllm_name_regex(metric: str, suffix: str = "") -> str:
    """A `__name__` regex matching both spellings of a vLLM metric (e.g. with suffix `_bucket`)."""
    return "|".join(f"{prefix}{metric}{suffix}" for prefix in VLLM_PREFIXES)
