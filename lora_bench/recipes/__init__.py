"""Training recipes, the `recipe` axis: how the same experiment is trained.

- `lora-bench`: lora-bench's own loop (lora_bench.train): length-grouped batches padded to their
  longest text, bf16 weights under bf16 autocast, optional torch.compile;
- `plain`: a straightforward peft + transformers loop (lora_bench.recipes.plain): bf16 weights,
  fp32 adapters, no autocast, batches in data order;
- `naive`: the origin study's pipeline (lora_bench.recipes.naive): transformers' Trainer, every
  text padded to max_length, fp16 weights with fp16 mixed precision.

Importing this package imports torch but no recipe module.
"""

from __future__ import annotations

import torch

from ..schema import ExperimentSpec


def compute_dtypes(spec: ExperimentSpec, device_type: str) -> tuple[torch.dtype, torch.dtype | None]:
    """(dtype the base weights are loaded in, autocast dtype or None) for a recipe on a device.

    On CPU everything is fp32. On a GPU the base is 16-bit, except full fine-tuning, whose fp32
    master weights train under autocast; a quantized base computes in that 16-bit dtype."""
    if device_type != "cuda":
        return torch.float32, None
    half = torch.float16 if spec.recipe == "naive" else torch.bfloat16
    if spec.method == "full":
        return torch.float32, half
    if spec.recipe == "plain":
        return half, None
    return half, half
