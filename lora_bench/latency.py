"""Inference latency per example at batch 1: warmed-up repetitions of the model's forward pass
(tokenization excluded), summarised with pytest-benchmark's own statistics."""

from __future__ import annotations

import statistics
import time
from typing import Any, Callable

import torch
from pytest_benchmark.stats import Stats
from torch import nn

from .data import Example
from .train import autocast_for, collate, encode

WARMUP = 5


@torch.no_grad()
def measure_latency(model: nn.Module, tokenizer: Any, examples: list[Example], rounds: int,
                    max_length: int, device: torch.device, pad_to: int | None = None) -> dict[str, Any]:
    return measure_latencies({"model": model}, tokenizer, examples, rounds, max_length, device, pad_to)["model"]


@torch.no_grad()
def measure_latencies(models: dict[str, nn.Module], tokenizer: Any, examples: list[Example], rounds: int,
                      max_length: int, device: torch.device, pad_to: int | None = None) -> dict[str, dict[str, Any]]:
    """Several models timed in alternation, one forward each per round on the same example, so that
    drift of the host or the GPU's clocks between phases cannot pass for a difference between them."""
    for model in models.values():
        model.eval()
    ids = encode(tokenizer, examples[: max(rounds, 1)], max_length)
    batches = [collate(tokenizer, [ids[i % len(ids)]], device, pad_to) for i in range(WARMUP + rounds)]

    def forward(model: nn.Module) -> Callable[[int], None]:
        def call(i: int) -> None:
            with autocast_for(device):
                model(**batches[i])
        return call
    return time_interleaved({name: forward(model) for name, model in models.items()}, rounds, device)


def time_calls(call: Callable[[int], None], rounds: int, device: torch.device, warmup: int = WARMUP) -> dict[str, Any]:
    """`call(i)` for `warmup` untimed then `rounds` timed repetitions, each waited for on a GPU."""
    return time_interleaved({"call": call}, rounds, device, warmup)["call"]


def time_interleaved(calls: dict[str, Callable[[int], None]], rounds: int, device: torch.device,
                     warmup: int = WARMUP) -> dict[str, dict[str, Any]]:
    """Per round `i`, each of `calls` once in turn (`warmup` untimed rounds first), each waited for on
    a GPU; pytest-benchmark's statistics per call."""
    stats = {name: Stats() for name in calls}
    for i in range(warmup + rounds):
        for name, call in calls.items():
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            start = time.perf_counter()
            call(i)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            if i >= warmup:
                stats[name].update(time.perf_counter() - start)
    return {name: _summary(s, warmup) for name, s in stats.items()}


def _summary(stats: Stats, warmup: int) -> dict[str, Any]:
    summary = {k: v for k, v in stats.as_dict().items() if isinstance(v, (int, float))}
    data = sorted(stats.data)
    p95 = statistics.quantiles(data, n=20, method="inclusive")[-1] if len(data) > 1 else data[0]
    return {"unit": "s", "warmup": warmup, "stats": summary, "median_ms": stats.median * 1e3, "p95_ms": p95 * 1e3}
