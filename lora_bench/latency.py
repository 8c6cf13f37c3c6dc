"""Inference latency per example at batch 1: warmed-up repetitions of the model's forward pass
(tokenization excluded), summarised with pytest-benchmark's own statistics."""

from __future__ import annotations

import statistics
import time
from typing import Any

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
    stats = Stats()
    for i in range(WARMUP + rounds):
        inputs = collate(tokenizer, [ids[i % len(ids)]], device, pad_to)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        with autocast_for(device):
            model(**inputs)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if i >= WARMUP:
            stats.update(time.perf_counter() - start)
    summary = {k: v for k, v in stats.as_dict().items() if isinstance(v, (int, float))}
    data = sorted(stats.data)
    p95 = statistics.quantiles(data, n=20, method="inclusive")[-1] if len(data) > 1 else data[0]
    return {"unit": "s", "warmup": WARMUP, "stats": summary, "median_ms": stats.median * 1e3, "p95_ms": p95 * 1e3}
