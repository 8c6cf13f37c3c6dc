"""torch.compile for the lora-bench recipe, undone before evaluation (whose shapes differ).

- `layers`: each transformer layer compiled once (regional compilation: every layer shares one
  compiled graph, so compiling costs seconds, not minutes), dynamic shapes allowed;
- `graphs`: the whole model under `mode="reduce-overhead"`, i.e. CUDA graphs, which removes the
  per-kernel launch cost that dominates small models. Graphs need fixed shapes, so batches are
  padded to a bucket of `BUCKET` tokens (`padded_length`), one graph per bucket.
"""

from __future__ import annotations

from typing import Callable

from torch import nn

BUCKET = 32


def layer_stack(model: nn.Module) -> nn.ModuleList:
    """The longest ModuleList of the model: its decoder or encoder layers."""
    lists = [m for m in model.modules() if isinstance(m, nn.ModuleList) and len(m) > 0]
    if not lists:
        raise ValueError("compile: layers: the model has no layer list to compile")
    return max(lists, key=len)


def compile_model(model: nn.Module, mode: str) -> Callable[[], None]:
    """Compiles in place and returns what undoes it."""
    if mode == "off":
        return lambda: None
    if mode == "layers":
        layers = list(layer_stack(model))
        for layer in layers:
            layer.compile(dynamic=True)
        return lambda: [setattr(layer, "_compiled_call_impl", None) for layer in layers] and None
    if mode == "graphs":
        model.compile(mode="reduce-overhead", dynamic=False)
        return lambda: setattr(model, "_compiled_call_impl", None)
    raise ValueError(f"compile: {mode!r} is not one of off, layers, graphs")


def padded_length(ids: list[list[int]], max_length: int) -> int:
    """The batch's longest text rounded up to a bucket, so CUDA graphs are reused across batches."""
    longest = max(len(x) for x in ids)
    return min(max_length, -(-longest // BUCKET) * BUCKET)
