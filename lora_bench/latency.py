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
    model.eval()
    ids = encode(tokenizer, examples[: max(rounds, 1)], max_length)
    batches = [collate(tokenizer, [ids[i % len(ids)]], device, pad_to) for i in range(WARMUP + rounds)]

    def forward(i: int) -> None:
        with autocast_for(device):
            model(**batches[i])
    return time_calls(forward, rounds, device)


def time_calls(call: Callable[[int], None], rounds: int, device: torch.device, warmup: int = WARMUP) -> dict[str, Any]:
    """`call(i)` for `warmup` untimed then `rounds` timed repetitions, each waited for on a GPU."""
    stats = Stats()
    for i in range(warmup + rounds):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        call(i)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if i >= warmup:
            stats.update(time.perf_counter() - start)
    summary = {k: v for k, v in stats.as_dict().items() if isinstance(v, (int, float))}
    data = sorted(stats.data)
    p95 = statistics.quantiles(data, n=20, method="inclusive")[-1] if len(data) > 1 else data[0]
    return {"unit": "s", "warmup": warmup, "stats": summary, "median_ms": stats.median * 1e3, "p95_ms": p95 * 1e3}
