"""Fitting the performance model's free constants to measured max rates, so an estimate can be
calibrated from a few measured points (`melange profile measure --fit`) or from published tables
(`bench/calibrate_profiles.py`)."""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from melange.solver.profiling.catalog import GpuSpec, ModelSpec
from melange.solver.profiling.perf_model import FITTED_CONSTANTS, PerfConstants, Replica

_UPPER_BOUNDS = {"bandwidth_efficiency": 1.0, "compute_efficiency": 1.0}


@dataclass(frozen=True)
class Observation:
    """Measured max rates of one replica shape under one SLO, at several request sizes."""

    gpu: GpuSpec
    model: ModelSpec
    input_tokens: tuple[int, ...]
    output_tokens: tuple[int, ...]
    max_rps: tuple[float, ...]
    tpot_s: float | None
    ttft_s: float | None = None
    tensor_parallel: int = 1

    def estimate(self, constants: PerfConstants) -> np.ndarray:
        """The model's max rates at this observation's sizes."""
        replica = Replica(self.gpu, self.model, self.tensor_parallel, constants)
        return replica.max_rate(np.array(self.input_tokens, float), np.array(self.output_tokens, float),
                                self.tpot_s, self.ttft_s)


def relative_errors(constants: PerfConstants, observation: Observation) -> np.ndarray:
    """|estimate - measured| / measured at each measured size."""
    measured = np.array(observation.max_rps)
    return np.abs(observation.estimate(constants) - measured) / measured


def fit_error(constants: PerfConstants, observations: Sequence[Observation]) -> float:
    """Mean over observations of the mean |log(estimate / measured)|: relative errors, every
    observation (GPU) weighing the same however many sizes it has."""
    scores = []
    for observation in observations:
        ratio = np.maximum(observation.estimate(constants), 1e-6) / np.array(observation.max_rps)
        error = np.abs(np.log(ratio))
        scores.append(np.mean(error))
    return float(np.mean(scores))


def fit_constants(observations: Sequence[Observation], start: PerfConstants = PerfConstants(),
                  names: Sequence[str] = FITTED_CONSTANTS, rounds: int = 8) -> PerfConstants:
    """The constants that minimise `fit_error`, by coordinate search on a log scale from `start`
    (deterministic: same data, same answer)."""
    best, best_error = start, fit_error(start, observations)
    step = 2.0
    for _ in range(rounds):
        improved = True
        while improved:
            improved = False
            for name in names:
                for factor in (step, 1 / step):
                    value = (getattr(best, name) or 0.01) * factor  # a zero constant can still grow
                    value = min(value, _UPPER_BOUNDS.get(name, value))
                    candidate = best.with_values(**{name: value})
                    error = fit_error(candidate, observations)
                    if error < best_error - 1e-9:
                        best, best_error, improved = candidate, error, True
        step = step ** 0.5
    return best
