"""The memory estimator applied to one experiment before its weights load: the prediction kept
for the record, and on request (`--lb-fit`) a skip, or a smaller micro-batch, when the prediction
is over the memory budget, instead of running into an out-of-memory error.

The parent passes its options through the environment, which every experiment process inherits:
LORA_BENCH_FIT (`off`, `skip` or `batch`) and LORA_BENCH_MEMORY_GIB (the budget; else the
experiment's `max_peak_gib` budget, else the GPU's memory)."""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from typing import Any, Callable

import torch

from .estimate import MemoryEstimate, estimate_classification
from .schema import ExperimentSpec

FIT_MODES = ("off", "skip", "batch")


class OverMemoryBudget(RuntimeError):
    """Predicted over the memory budget: the experiment is skipped with this reason."""


@dataclass
class Fitted:
    spec: ExperimentSpec
    prediction: MemoryEstimate | None
    error: str | None
    budget_gib: float | None
    adjusted: dict[str, Any] | None = None

    def report(self, measured_gib: float | None) -> dict[str, Any]:
        """What the record keeps: the prediction beside the measurement (GPU allocator peaks only)."""
        out: dict[str, Any] = {"prediction": self.prediction.to_dict() if self.prediction else None,
                               "error": self.error, "budget_gib": self.budget_gib, "adjusted": self.adjusted,
                               "measured_gib": measured_gib, "relative_error": None}
        if self.prediction and measured_gib:
            out["relative_error"] = self.prediction.peak_gib / measured_gib - 1
        return out


def budget_gib(spec: ExperimentSpec, device: torch.device) -> float | None:
    if os.environ.get("LORA_BENCH_MEMORY_GIB"):
        return float(os.environ["LORA_BENCH_MEMORY_GIB"])
    if "max_peak_gib" in spec.budgets:
        return spec.budgets["max_peak_gib"]
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).total_memory / 2**30
    return None


def fit(spec: ExperimentSpec, num_labels: int, seq_len: int, device: torch.device,
        progress: Callable[[str], None], predict: Callable[..., MemoryEstimate] | None = None) -> Fitted:
    predict = predict or (lambda s: estimate_classification(s, num_labels, seq_len))
    mode = os.environ.get("LORA_BENCH_FIT", "off")
    budget = budget_gib(spec, device)
    try:
        prediction = predict(spec)
    except Exception as exc:  # a config the estimator cannot build never costs the experiment
        return Fitted(spec, None, f"{type(exc).__name__}: {exc}", budget)
    fitted = Fitted(spec, prediction, None, budget)
    if mode == "off" or budget is None or prediction.peak_gib <= budget:
        return fitted
    if mode == "batch":
        trial = spec
        while prediction.peak_gib > budget and trial.batch_size > 1 and trial.grad_accum is not None:
            trial = replace(trial, batch_size=trial.batch_size // 2, grad_accum=trial.grad_accum * 2)
            prediction = predict(trial)
        if prediction.peak_gib <= budget:
            progress(f"micro-batch {spec.batch_size} -> {trial.batch_size} (x{trial.grad_accum} accumulation) "
                     f"to fit {budget:.1f} GiB: predicted {prediction.peak_gib:.2f} GiB")
            return Fitted(trial, prediction, None, budget,
                          {"batch_size": [spec.batch_size, trial.batch_size],
                           "grad_accum": [spec.grad_accum, trial.grad_accum]})
    raise OverMemoryBudget(f"predicted peak {prediction.peak_gib:.2f} GiB (weights {prediction.weights_gib:.2f}, "
                           f"activations {prediction.activations_gib:.2f}) is over the memory budget of {budget:.2f} GiB")
