"""Peak memory of one experiment: CUDA allocator peaks on a GPU, the process's peak RSS on CPU.

Each experiment runs in its own process, so the RSS peak is that experiment's alone."""

from __future__ import annotations

import resource
import sys
from typing import Any

import torch

GIB = 2**30


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory(device: torch.device) -> dict[str, Any]:
    rss_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    rss_gib = rss_kib * (1 if sys.platform == "darwin" else 1024) / GIB
    if device.type == "cuda":
        free, total = torch.cuda.mem_get_info(device)
        return {"peak_memory_gib": torch.cuda.max_memory_allocated(device) / GIB,
                "peak_memory_kind": "cuda_max_memory_allocated",
                "peak_reserved_gib": torch.cuda.max_memory_reserved(device) / GIB,
                "device_used_gib": (total - free) / GIB,
                "process_peak_rss_gib": rss_gib}
    return {"peak_memory_gib": rss_gib, "peak_memory_kind": "process_peak_rss", "process_peak_rss_gib": rss_gib}


def parameter_counts(model: torch.nn.Module) -> dict[str, int]:
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {"total": total, "trainable": trainable, "frozen": total - trainable,
            "weight_bytes": sum(p.numel() * p.element_size() for p in model.parameters())}
